"""The restore pipeline as one Ray Data dataset, built top to bottom in one function: the sources in,
restored (or failed) window rows out; the driver (pipeline.py) consumes it and gathers the rows into
videos (gather.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import ray

from pipelines.listing import SourceFile
from pipelines.restore.context import RestoreRun
from pipelines.restore.faults import TASK_RETRIES, set_fault_options
from pipelines.restore.job import ArchiveJob
from pipelines.restore.plan_gate import admit
from pipelines.restore.plan_stage import claim_and_plan
from pipelines.restore.restore_stage import WINDOWS_IN_FLIGHT, RestoreWindows
from pipelines.restore.rows import CHECKSUM, FINGERPRINT, PREVIOUS_ERROR, PROMPT, REL, REPEATS, SOURCE

GPU_ACTOR_CPUS = 2  # decode of the window and FFV1 encode of the segment run beside the model
# Host memory declared to Ray, so that its scheduler, not the kernel's OOM killer, keeps a node within
# its RAM (an OOM kill costs a window's try, `window_attempts`): a GPU actor holds the models (~16 GB,
# README "Host") and its windows' frames; a scenes task one decode of a source.
GPU_ACTOR_MEMORY = 16 * 2**30
SCENES_MEMORY = 2**30
SOURCE_CHUNKS = 256  # the sources enter Ray Data in at most this many pieces, however many there are


def build_dataset(job: ArchiveJob, run: RestoreRun, sources: Iterable[pa.Table], gate: ray.actor.ActorHandle,
                  use_gpu: bool, actors: int, cpu_nodes: dict[str, str] | None) -> ray.data.Dataset:
    """The restore pipeline, top to bottom: `sources` (the videos to restore, `source_tables`) in,
    restored (or failed) window rows out, which the driver gathers into videos and assembles
    (`gather`, which gives each video's `gate` ticket back). `actors` restore actors at most, on
    GPUs if `use_gpu` (`actors.actor_pool`); the scenes tasks on the nodes `cpu_nodes` selects
    (`cpu_nodes.cpu_node_selector`; None: anywhere). Lazy: nothing runs until the rows are read."""
    set_fault_options()

    # 1. Sources: the rows go to the object store in bounded chunks (the driver holds a reference per
    #    chunk, never a block per video), then one row per block, so that the scenes tasks run in
    #    parallel. out: source, rel, fingerprint, checksum, prompt, previous_error, repeats
    ds = ray.data.from_arrow_refs([ray.put(table) for table in sources])
    ds = ds.repartition(target_num_rows_per_block=1)

    # 2. Admission (one task at a time, no CPU): a video waits for a ticket of the run's `gate`, so
    #    planning runs at most a few videos ahead of the restore actors (plan_gate.py; Ray Data's
    #    byte-based backpressure never acts on small rows). in, out: a source row.
    ds = ds.map(admit, fn_kwargs=dict(gate=gate), num_cpus=0, compute=ray.data.TaskPoolStrategy(size=1))

    # 3. Scenes (CPU tasks, 1 CPU: probe and PySceneDetect decode one stream each): fan out a video
    #    into its windows, or into one failed row. in: a source row; out: window rows (plan_stage).
    #    Each video is claimed as it is taken and its row completed (video_id, output_stem, staging:
    #    `claim_and_plan`); a plan an earlier run kept is read instead of decoding again (saved_plan.py).
    ds = ds.flat_map(claim_and_plan, fn_kwargs=dict(run=run, window=job.window, overlap=job.overlap,
                                                    detector=job.detector, deinterlace=job.deinterlace,
                                                    max_pixels=job.max_frame_pixels, scale=job.scale),
                     num_cpus=1, memory=SCENES_MEMORY, max_retries=TASK_RETRIES,
                     label_selector=cpu_nodes)  # off GPU nodes where CPU nodes exist (cpu_nodes.py)
    # One window per block: a video's windows spread over the actor pool instead of one actor
    # taking the whole block (and a block lost with its actor is one window).
    ds = ds.repartition(target_num_rows_per_block=1)

    # 4. Restore (actor pool, one GPU per actor; model loaded once per actor): decode the window,
    #    run STAR, write the staging segment. in: window rows; out: + status, error, segment,
    #    seconds, reused, device. batch_size must be an int when GPUs are requested. Two windows per
    #    actor at once on threads (true multi-threading: otherwise Ray Data runs one call at a time),
    #    so decoding and encoding overlap the model's work (restore_stage.py).
    ds = ds.map_batches(
        RestoreWindows,
        fn_constructor_kwargs=dict(preset=job.preset, weights=job.weights, scale=job.scale, steps=job.steps,
                                   checkpoint=job.checkpoint, run_id=run.run_id),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, max_concurrent_calls_per_actor=WINDOWS_IN_FLIGHT,
                                           enable_true_multi_threading=True),
        batch_size=1,
        batch_format="pandas",
        num_gpus=1 if use_gpu else 0,
        num_cpus=GPU_ACTOR_CPUS if use_gpu else 1,
        memory=GPU_ACTOR_MEMORY if use_gpu else None,  # a CPU actor (tests, nano) runs small models
        # Only nodes with that GPU (the cluster configs declare `accelerator_type:<name>` resources,
        # so the autoscaler can start such a node before any exists). Dead actors are replaced (faults.py).
        accelerator_type=job.accelerator_type,
    )

    # 5. Assemble (CPU task per video, started by the driver as a video's last window comes out of
    #    the stream: `gather`). in: all window rows of a video; out: its ledger row.
    return ds


def source_tables(sources: Sequence[SourceFile], failed_before: dict[str, tuple[str, int]]) -> Iterator[pa.Table]:
    """The sources as at most SOURCE_CHUNKS Arrow tables: what the driver knows of each (the scenes
    tasks derive the rest, `video_columns`, so a million enter Ray Data in seconds)."""
    size = max(1, -(-len(sources) // SOURCE_CHUNKS))
    for first in range(0, len(sources), size):
        chunk = sources[first:first + size]
        before = [failed_before.get(s.rel, ("", 0)) for s in chunk]
        yield pa.table({SOURCE: [s.url for s in chunk], REL: [s.rel for s in chunk],
                        FINGERPRINT: [s.fingerprint for s in chunk], CHECKSUM: [s.checksum for s in chunk],
                        PROMPT: [s.prompt for s in chunk],
                        PREVIOUS_ERROR: [error for error, _ in before],
                        REPEATS: pa.array([repeats for _, repeats in before], pa.int64())})
