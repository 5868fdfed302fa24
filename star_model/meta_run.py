"""The restore path on a stand-in GPU: a whole model run at full size on PyTorch's `meta` device, where
every tensor has a shape, a dtype and a device but no data, so nothing is computed and a 2 B-parameter
denoiser at 4K costs seconds on a CPU.

`MetaDevice` is a dispatch mode that watches every op of the run and
- counts the bytes of live device storages (`meta`), with the peak of each phase (text, VAE encode,
  sampler, VAE decode);
- fails where CUDA would refuse what a CPU or the meta kernels accept: a matrix product or convolution
  whose floating inputs differ in dtype, an attention call whose batch or head count is beyond the
  fused kernels' grid (`KERNEL_MAX_BATCH`). Ops mixing devices already fail on meta as on CUDA;
- runs `scaled_dot_product_attention` as CUDA's fused memory-efficient kernel (output and log-sum-exp
  only): on meta SDPA would otherwise take the math path and count the quadratic score matrix that a GPU
  never holds;
- stands in for device-to-host copies (zeros on the CPU) and counts the host syncs (`.item()`) and the
  copies between the host and the device that block the host (`non_blocking=False`).

The host side (decode buffers, pre-upscale, colour fix, uint8) runs for real on the CPU, on zeros.
FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over the same run.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from star_model.attention import KERNEL_MAX_BATCH
from star_model.memory import MemoryPlan, estimate_phases, plan_memory
from star_model.restore import RestoreConfig, StarRestorer

aten = torch.ops.aten

META = torch.device("meta")
# Ops whose CUDA kernels take one dtype for all floating inputs (cuBLAS / cuDNN); elementwise ops
# promote on CUDA as on the CPU and are not checked.
SAME_DTYPE_OPS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default,
                  aten.addmv.default, aten.convolution.default, aten._scaled_dot_product_efficient_attention.default}


class DeviceFault(RuntimeError):
    """What a CUDA device would refuse, found on the meta device."""


@dataclass(frozen=True)
class AttentionCall:
    batch: int
    heads: int
    queries: int
    keys: int
    head_dim: int


@dataclass
class DeviceReport:
    """What a run on the meta device allocated, called and computed."""

    weights_bytes: int = 0  # parameters and buffers on the device before the run
    peaks: dict[str, int] = field(default_factory=dict)  # phase -> peak live device bytes (weights included)
    flops: int = 0
    syncs: int = 0  # device -> host scalar reads (each a CUDA synchronisation)
    blocking_copies: int = 0  # host <-> device copies without non_blocking (each holds the host thread)
    attention: dict[AttentionCall, int] = field(default_factory=dict)  # distinct calls -> how many

    def above_weights(self, phase: str) -> int:
        return self.peaks.get(phase, 0) - self.weights_bytes

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=self.weights_bytes)

    @property
    def largest_attention_batch(self) -> int:
        return max((call.batch for call in self.attention), default=0)


class MetaDevice(TorchDispatchMode):
    """Counts live meta storages and checks ops; `phase(name)` attributes the peak to a phase.

    The storages of `resident` modules (the weights, counted in `report.weights_bytes`) are known from
    the start, so a view of a weight (a transpose in a linear layer) is not counted a second time.
    """

    def __init__(self, report: DeviceReport, resident: list[torch.nn.Module] = ()) -> None:
        super().__init__()
        self.report = report
        self.live = report.weights_bytes
        self._seen: set[int] = {id(tensor.untyped_storage()) for module in resident
                                for tensor in [*module.parameters(), *module.buffers()]}
        self._phase: str | None = None

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()  # one Python object per storage for its whole life
        key = id(storage)
        if key in self._seen:
            return
        self._seen.add(key)
        size = storage.nbytes()
        self.live += size
        weakref.finalize(storage, self._release, key, size)
        if self._phase is not None:
            peaks = self.report.peaks
            peaks[self._phase] = max(peaks.get(self._phase, 0), self.live)

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        outer, self._phase = self._phase, name
        self.report.peaks[name] = max(self.report.peaks.get(name, 0), self.live)
        try:
            yield
        finally:
            self._phase = outer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_meta = any(t.device == META for t in tensors)
        if on_meta and func in SAME_DTYPE_OPS:
            dtypes = {t.dtype for t in tensors if t.is_floating_point() and t.device == META}
            if len(dtypes) > 1:
                raise DeviceFault(f"{func} with inputs of dtypes {sorted(map(str, dtypes))}: CUDA refuses "
                                  f"mixed dtypes here")
        if func is aten._local_scalar_dense.default and on_meta:
            self.report.syncs += 1
            return 0 if not args[0].is_floating_point() else 0.0
        if _blocking_copy(func, args, kwargs):
            self.report.blocking_copies += 1
        target = _target_device(func, args, kwargs)
        if on_meta and target is not None and target != META:
            source = args[0]  # device -> host: the bytes a GPU would send, as zeros
            dtype = kwargs.get("dtype") or next((a for a in args[1:] if isinstance(a, torch.dtype)), source.dtype)
            return torch.zeros(source.shape, dtype=dtype, device=target)
        if func is aten.copy_.default and args[1].device == META and args[0].device != META:
            return args[0].zero_()
        out = func(*args, **kwargs)
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device == META:
                self.track(tensor)
        return out


def _blocking_copy(func, args, kwargs) -> bool:
    """Whether the op copies between the host and meta without `non_blocking`."""
    if func is aten.copy_.default:
        crossing = (args[0].device == META) != (args[1].device == META)
        return crossing and not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
    target = _target_device(func, args, kwargs)
    crossing = target is not None and (target == META) != (args[0].device == META)
    return crossing and not kwargs.get("non_blocking", False)


def _target_device(func, args, kwargs) -> torch.device | None:
    """Where a copy op (`to`, `_to_copy`) sends its tensor; None for any other op or no device change."""
    if func.overloadpacket not in (aten.to, aten._to_copy):
        return None
    device = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (torch.device, str))), None))
    return None if device is None else torch.device(device)


class FusedAttention(TorchFunctionMode):
    """SDPA on meta as CUDA's memory-efficient kernel, with the kernels' launch limits checked."""

    def __init__(self, report: DeviceReport) -> None:
        super().__init__()
        self.report = report

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or args[0].device != META:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        *batch_dims, queries, head_dim = q.shape
        batch, heads = (int(np.prod(batch_dims[:-1])), batch_dims[-1]) if len(batch_dims) > 1 else (batch_dims[0], 1)
        # Flash (grid: blocks, batch, heads) and memory-efficient (blocks, heads, batch) kernels both
        # launch the batch and the heads on grid dimensions of at most 65,535.
        if batch > KERNEL_MAX_BATCH or heads > KERNEL_MAX_BATCH:
            raise DeviceFault(f"attention with batch {batch} and {heads} heads: CUDA's fused kernels launch at "
                              f"most {KERNEL_MAX_BATCH} of each")
        call = AttentionCall(batch, heads, queries, k.shape[-2], head_dim)
        self.report.attention[call] = self.report.attention.get(call, 0) + 1
        if len(batch_dims) == 1:  # (B, N, d): no head dimension
            q, k, v = (t.unsqueeze(1) for t in (q, k, v))
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        out = aten._scaled_dot_product_efficient_attention(q, k, v, mask, False, 0.0, kwargs.get("is_causal", False),
                                                           scale=kwargs.get("scale"))[0]
        return out.squeeze(1) if len(batch_dims) == 1 else out


def _repeating(mode: MetaDevice, counter: FlopCounterMode, fn: Callable) -> Callable:
    """`fn` (the denoiser's forward) run once per distinct input shapes, then replayed: on meta the same
    shapes take the same ops, so a repeat allocates the output and adds the first call's FLOPs and
    attention calls without dispatching the 2 B-parameter network again (each tile of each solver step
    of the sampler is such a repeat)."""
    seen: dict[tuple, tuple[torch.Size, torch.dtype, int, dict[AttentionCall, int]]] = {}

    @functools.wraps(fn)
    def run(*args, **kwargs):
        key = tuple((t.shape, t.dtype) if isinstance(t, torch.Tensor) else t for t in tree_leaves((args, kwargs)))
        if key in seen:
            shape, dtype, flops, calls = seen[key]
            mode.report.flops += flops
            for call, count in calls.items():
                mode.report.attention[call] += count
            return torch.empty(shape, dtype=dtype, device=META)
        flops_before, calls_before = counter.get_total_flops(), dict(mode.report.attention)
        out = fn(*args, **kwargs)
        calls = {call: count - calls_before.get(call, 0) for call, count in mode.report.attention.items()}
        seen[key] = (out.shape, out.dtype, counter.get_total_flops() - flops_before,
                     {call: count for call, count in calls.items() if count})
        return out

    return run


def _in_phase(mode: MetaDevice, name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with mode.phase(name):
            return fn(*args, **kwargs)
    return run


def device_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct storages of the modules' parameters and buffers."""
    storages = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            storages[id(storage)] = storage.nbytes()
    return sum(storages.values())


def planned_config(restorer: StarRestorer, frames: int, height: int, width: int,
                   budget_bytes: int) -> tuple[RestoreConfig, MemoryPlan, dict[str, int]]:
    """The restorer's config with the window and tile the memory planner picks for `budget_bytes` of free
    device memory (a meta device has no free memory to ask for), that plan, and the planner's estimate
    of each phase's device bytes above the weights."""
    config = restorer.config
    left, right, top, bottom = restorer._padding(height * config.scale, width * config.scale)
    padded = (height * config.scale + top + bottom, width * config.scale + left + right)
    f = restorer.vae.downsample
    latent = (padded[0] // f, padded[1] // f)
    plan = plan_memory(restorer.denoiser.cfg, latent, frames, budget_bytes, restorer.dtype,
                       latent_window=config.window, tile=config.tile)
    estimates = estimate_phases(restorer.denoiser.cfg, restorer.vae.config, restorer.vae.dtype, frames, padded, plan)
    return config.replace(window=plan.latent_window, tile=plan.tile or latent), plan, estimates


def run_on_meta(restorer: StarRestorer, frames: int, height: int, width: int,
                prompt: str = "a good video") -> tuple[np.ndarray, DeviceReport]:
    """Restore `frames` zero frames of `height` x `width` with a restorer whose models are on the meta
    device; the output (zeros) and what the device would have held and done."""
    if restorer.device != META:
        raise ValueError(f"the restorer's models are on {restorer.device}; build them on the meta device")
    modules = [restorer.denoiser, restorer.text.model, restorer.vae.model]
    report = DeviceReport(weights_bytes=device_bytes(modules))
    mode = MetaDevice(report, resident=modules)
    # Instance attributes over the bound methods: only this restorer is watched.
    restorer.text.context_for = _in_phase(mode, "text", restorer.text.context_for)
    restorer.vae.encode = _in_phase(mode, "vae encode", restorer.vae.encode)
    restorer.vae.decode = _in_phase(mode, "vae decode", restorer.vae.decode)
    counter = FlopCounterMode(display=False)
    restorer.denoiser.forward = _in_phase(mode, "sampler", _repeating(mode, counter, restorer.denoiser.forward))
    video = np.zeros((frames, height, width, 3), np.uint8)
    with counter, FusedAttention(report), mode:
        out = restorer(video, prompt)
    report.flops += counter.get_total_flops()
    return out, report

