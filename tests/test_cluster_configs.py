"""The Ray cluster launcher configs (cluster/gcp.yaml, cluster/aws.yaml), checked offline: the schema
the installed Ray ships, Ray's own config validation, and the properties the restore job relies on
(a head that does no work, CPU and GPU worker types scaling from zero, resources that match the
machines, the project installed on every node, start commands that agree with the resources). The
mutation tests make sure each check can fail."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.util import accelerators

from cluster_files import ray_pod_templates, the
from pipelines.cpu_nodes import CPU, CPU_NODE_LABEL

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"gcp": REPO / "cluster" / "gcp.yaml", "aws": REPO / "cluster" / "aws.yaml"}

# Machine shapes the configs may use: (vCPUs, RAM in GiB, GPUs, Ray's accelerator name), from the
# providers' machine type tables (GCP N1, N2, G2, A2, A3; EC2 M6i, G6, P4d, P5). G2, A2 and A3 machine
# types include their GPUs; N1 gets them from guestAccelerators. A config naming a machine that is not
# here fails, so a new machine type gets its numbers checked once.
MACHINES = {
    "n1-standard-16": (16, 60, 0, None),
    "n2-standard-8": (8, 32, 0, None),
    "n2-standard-16": (16, 64, 0, None),
    "g2-standard-16": (16, 64, 1, "L4"),
    "a2-highgpu-1g": (12, 85, 1, "A100"),
    "a3-highgpu-8g": (208, 1872, 8, "H100"),
    "m6i.2xlarge": (8, 32, 0, None),
    "m6i.4xlarge": (16, 64, 0, None),
    "g6.4xlarge": (16, 64, 1, "L4"),
    "p4d.24xlarge": (96, 1152, 8, "A100"),
    "p5.48xlarge": (192, 2048, 8, "H100"),
}
# GCP guestAccelerators types and Ray's names for them.
GCP_GUEST_GPUS = {"nvidia-l4": "L4", "nvidia-tesla-a100": "A100", "nvidia-tesla-t4": "T4", "nvidia-tesla-v100": "V100"}
# What the job's --accelerator-type accepts: Ray's names (ray.util.accelerators).
RAY_ACCELERATORS = {v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)}
WANTED_GPUS = {accelerators.NVIDIA_L4, accelerators.NVIDIA_A100, accelerators.NVIDIA_H100}
# Resource flags that would make `ray start` disagree with `resources` (the launcher passes those).
RESOURCE_FLAG = re.compile(r"(?<![\w-])--(num-cpus|num-gpus|resources|memory)(?=[=\s]|$)")


def load(name: str) -> dict:
    return yaml.safe_load(CONFIGS[name].read_text())


def schema_errors(config: dict) -> list[str]:
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    return [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(config)]


def ray_validation_error(config: dict) -> str | None:
    """What `ray up` checks before touching the cloud: defaults filled in from the provider's
    defaults.yaml, setup commands merged, Docker settings, then Ray's validate_config (schema, head
    type, min_workers against max_workers). None when it passes."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # jsonschema.ValidationError, ValueError, AssertionError, ...
        return f"{type(e).__name__}: {e}"
    return None


def machine(config: dict, node_config: dict) -> str:
    return node_config["machineType" if config["provider"]["type"] == "gcp" else "InstanceType"]


def shape(config: dict, node_config: dict) -> tuple[int, int, int, str | None] | None:
    """(vCPUs, RAM GiB, GPUs, accelerator) of a node, GPUs attached through guestAccelerators included."""
    known = MACHINES.get(machine(config, node_config))
    if known is None:
        return None
    vcpus, ram_gib, gpus, accel = known
    for attached in node_config.get("guestAccelerators", []):
        gpus += attached["acceleratorCount"]
        accel = GCP_GUEST_GPUS.get(attached["acceleratorType"], attached["acceleratorType"])
    return vcpus, ram_gib, gpus, accel


def project_image() -> str:
    """The image the KubeRay manifests run (test_kuberay_manifests.py checks it is one, from cluster/Dockerfile)."""
    return ray_pod_templates(the("RayJob"))["head"]["spec"]["containers"][0]["image"]


def setup_for(config: dict, name: str) -> list[str]:
    """The setup commands a node of this type runs, merged as the launcher merges them."""
    if name == config["head_node_type"]:
        return config.get("setup_commands", []) + config.get("head_setup_commands", [])
    own = config["available_node_types"][name].get("worker_setup_commands")
    if own is not None:  # a node type's own list replaces the global ones
        return own
    return config.get("setup_commands", []) + config.get("worker_setup_commands", [])


def gpu_node_problems(config: dict, name: str, node: dict, gpus: int, accel: str) -> list[str]:
    out = []
    res = node["resources"]
    if node.get("min_workers", 0) != 0:
        out.append(f"{name}: GPU types must scale from 0 (min_workers {node.get('min_workers')})")
    accel_keys = sorted(k for k in res if k.startswith("accelerator_type:"))
    if accel_keys != [f"accelerator_type:{accel}"] or res[accel_keys[0]] != 1:
        out.append(f"{name}: needs exactly accelerator_type:{accel}: 1 (Ray's name), has {accel_keys}")
    if config["provider"]["type"] == "gcp":
        nc = node["node_config"]
        scheduling = nc.get("scheduling", {})
        if isinstance(scheduling, list):  # the one-element-list spelling of Ray's examples
            scheduling = {k: v for item in scheduling for k, v in item.items()}
        if scheduling.get("onHostMaintenance") != "TERMINATE":
            out.append(f"{name}: GPU VMs need scheduling.onHostMaintenance TERMINATE")
        items = {i["key"]: i["value"] for i in nc.get("metadata", {}).get("items", [])}
        if items.get("install-nvidia-driver") != "True":
            out.append(f"{name}: the image must install the NVIDIA driver (metadata install-nvidia-driver)")
    return out


def problems(config: dict) -> list[str]:
    """The properties the restore job relies on, as a list of what is wrong (empty when all hold)."""
    out = []
    types = config.get("available_node_types", {})
    head_name = config.get("head_node_type")
    if head_name not in types:
        return [f"head_node_type {head_name!r} is not in available_node_types"]
    head = types[head_name]
    if head["resources"].get("CPU") != 0 or head["resources"].get("GPU", 0) != 0:
        out.append(f"the head must declare CPU 0 and no GPU (tasks never land there), has {head['resources']}")
    if not config.get("idle_timeout_minutes", 0) > 0:
        out.append("idle_timeout_minutes must be set")

    workers = {n: t for n, t in types.items() if n != head_name}
    if config.get("max_workers") != sum(t.get("max_workers", 0) for t in workers.values()):
        out.append("max_workers must be the sum of the worker types' max_workers")
    gpu_types: set[str] = set()
    enabled: set[str] = set()  # GPU types the autoscaler may start
    cpu_types = []
    for name, node in workers.items():
        res = node["resources"]
        known = shape(config, node["node_config"])
        if known is None:
            out.append(f"{name}: unknown machine {machine(config, node['node_config'])}: add it to MACHINES")
            continue
        vcpus, ram_gib, gpus, accel = known
        if not node.get("max_workers", 0) >= (1 if not gpus else 0):
            out.append(f"{name}: max_workers must be at least 1")
        if not 0 < res.get("CPU", 0) <= vcpus:
            out.append(f"{name}: CPU {res.get('CPU')} for a machine with {vcpus} vCPUs")
        if res.get("GPU", 0) != gpus:
            out.append(f"{name}: declares GPU {res.get('GPU', 0)}, the node has {gpus} "
                       "(GCP N1 machines get theirs from guestAccelerators)")
        # Ray's `memory` excludes the object store (30% of RAM by default): declaring more
        # over-commits the node.
        if not 0 < res.get("memory", 0) <= 0.7 * ram_gib * 2**30:
            out.append(f"{name}: memory {res.get('memory')} must be declared, at most 70% of {ram_gib} GiB")
        if gpus:
            gpu_types.add(accel)
            if node.get("max_workers", 0) > 0:
                enabled.add(accel)
            out += gpu_node_problems(config, name, node, gpus, accel)
        else:
            cpu_types.append(name)
            if any(k.startswith("accelerator_type:") for k in res):
                out.append(f"{name}: a CPU type declares an accelerator")
    if not cpu_types:
        out.append("no CPU worker type (probing, scene detection, assembly)")
    for name in cpu_types:  # what keeps scenes and assembly off the GPU nodes
        if workers[name].get("labels", {}).get(CPU_NODE_LABEL) != CPU:
            out.append(f"{name}: a CPU type must carry the label {CPU_NODE_LABEL}: {CPU}")
    for name in set(workers) - set(cpu_types):
        if CPU_NODE_LABEL in workers[name].get("labels", {}):
            out.append(f"{name}: a GPU type carries the CPU nodes' label")
    if gpu_types != WANTED_GPUS:
        out.append(f"GPU types cover {sorted(gpu_types)}, want {sorted(WANTED_GPUS)}")
    # Ray Data's scale-up requests name no GPU type: with two enabled, --accelerator-type is refused.
    if len(enabled) != 1:
        out.append(f"the autoscaler may start GPUs of {sorted(enabled)}: enable exactly one GPU type")

    # The project image on every node (cluster/Dockerfile: Ray's GPU image at the installed Ray version,
    # CUDA torch, the project; the KubeRay pods run it too), so no node installs anything at boot.
    if config["docker"].get("image") != project_image():
        out.append(f"docker.image {config['docker'].get('image')} is not the project image {project_image()}")
    for name, node in types.items():
        if node.get("docker", {}).get("worker_image") or node.get("docker", {}).get("head_image"):
            out.append(f"{name}: sets its own image; every node runs the project image")
    if config["docker"].get("worker_image") or config["docker"].get("head_image"):
        out.append("docker: head_image / worker_image override the project image")
    for name in types:
        installs = [c for c in setup_for(config, name) if re.search(r"\bpip install\b", c)]
        if installs:
            out.append(f"{name}: setup installs {installs} at every boot: put it in the image (cluster/Dockerfile)")

    # The checkout is synced to every node, over the image's editable copy of the project.
    mounts = [remote for remote, local in config.get("file_mounts", {}).items() if (REPO / local).resolve() == REPO]
    if mounts != ["~/star-archive"]:
        out.append("file_mounts must sync the repository root (run `ray up` from there) to ~/star-archive, where "
                   "the image installed the project")

    # Start commands: resources come only from `resources`; head and workers agree on the port.
    head_cmd = " ".join(config.get("head_start_ray_commands", []))
    worker_cmd = " ".join(config.get("worker_start_ray_commands", []))
    port = re.search(r"--port=(\d+)", head_cmd)
    if "ray start --head" not in head_cmd or "--autoscaling-config=~/ray_bootstrap_config.yaml" not in head_cmd:
        out.append("the head must run `ray start --head --autoscaling-config=~/ray_bootstrap_config.yaml`")
    if not port or f"--address=$RAY_HEAD_IP:{port.group(1)}" not in worker_cmd:
        out.append("workers must join the head's --port through $RAY_HEAD_IP")
    for kind, cmd in (("head", head_cmd), ("worker", worker_cmd)):
        if RESOURCE_FLAG.search(cmd):
            out.append(f"{kind} start command sets {RESOURCE_FLAG.search(cmd).group(0)}: declare it in resources")
    # Token authentication: every node starts Ray in token mode with the token file `ray up` copies from
    # the launching machine (the default path ~/.ray/auth_token), never one from the checkout.
    for kind, cmd in (("head", head_cmd), ("worker", worker_cmd)):
        if "export RAY_AUTH_MODE=token;" not in cmd:
            out.append(f"{kind} start command must export RAY_AUTH_MODE=token")
    if config.get("file_mounts", {}).get("~/.ray/auth_token") != "~/.ray/auth_token":
        out.append("file_mounts must copy ~/.ray/auth_token from the launching machine to every node")
    metrics = {re.search(r"--metrics-export-port=(\d+)", c).group(1) if "--metrics-export-port" in c else None
               for c in (head_cmd, worker_cmd)}
    if len(metrics) != 1 or None in metrics:
        out.append("head and workers must export metrics on one --metrics-export-port")
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_validates_against_the_schema_ray_ships(name):
    assert schema_errors(load(name)) == []


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_passes_rays_own_validation(name):
    assert ray_validation_error(load(name)) is None


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_has_the_properties_the_job_relies_on(name):
    assert problems(load(name)) == []


def test_ray_knows_the_accelerator_names():
    """`accelerator_type:<name>` must use the names Ray's --accelerator-type resolution uses."""
    assert WANTED_GPUS <= RAY_ACCELERATORS


def test_gpus_attached_through_guest_accelerators_count():
    """An N1 machine with an attached L4 is a valid L4 type (the GPU check is not a name match)."""
    config = load("gcp")
    node_config = config["available_node_types"]["gpu_l4"]["node_config"]
    node_config.update(machineType="n1-standard-16", guestAccelerators=[{"acceleratorType": "nvidia-l4",
                                                                         "acceleratorCount": 1}])
    assert problems(config) == []


def test_the_clouds_offer_the_same_node_types():
    """Same type names and resources shape on both clouds, so docs and commands apply to either."""
    gcp, aws = load("gcp"), load("aws")
    assert gcp["available_node_types"].keys() == aws["available_node_types"].keys()
    assert gcp["head_node_type"] == aws["head_node_type"]
    for name, node in gcp["available_node_types"].items():
        accel = lambda n: sorted(k for k in n["resources"] if k.startswith("accelerator_type:"))  # noqa: E731
        assert accel(node) == accel(aws["available_node_types"][name]), name


def _set(path: str, value):
    def mutate(config):
        *parents, last = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return mutate


_DELETE = object()

# (what is broken, how, which check must catch it)
MUTATIONS = [
    ("resource not an integer", _set("available_node_types.cpu.resources.CPU", "16"), "schema"),
    ("unknown top-level key", _set("idle_timeout_minute", 5), "schema"),
    ("misspelled node type field", _set("available_node_types.cpu.min_worker", 0), "schema"),
    ("head type not defined", _set("head_node_type", "nohead"), "ray"),
    ("min_workers above max_workers", _set("available_node_types.cpu.min_workers", 100), "ray"),
    ("head does work", _set("available_node_types.head.resources", {"CPU": 8}), "properties"),
    ("GPU type kept warm", _set("available_node_types.gpu_l4.min_workers", 1), "properties"),
    ("GPU type without accelerator_type",
     _set("available_node_types.gpu_l4.resources", {"CPU": 16, "GPU": 1, "memory": 2**30}), "properties"),
    ("accelerator name Ray does not use",
     _set("available_node_types.gpu_a100.resources.accelerator_type:A100-SXM4", 1), "properties"),
    ("8-GPU machine declared as 1 GPU", _set("available_node_types.gpu_h100.resources.GPU", 1), "properties"),
    ("two GPU types enabled",
     lambda c: (_set("available_node_types.gpu_a100.max_workers", 2)(c), _set("max_workers", c["max_workers"] + 2)(c)),
     "properties"),
    ("more memory than the machine", _set("available_node_types.cpu.resources.memory", 64 * 2**30), "properties"),
    ("no CPU worker type", _set("available_node_types.cpu", _DELETE), "properties"),
    ("CPU type without its label", _set("available_node_types.cpu.labels", _DELETE), "properties"),
    ("GPU type on its own image",
     _set("available_node_types.gpu_l4.docker", {"worker_image": f"rayproject/ray:{ray.__version__}-py311-gpu"}),
     "properties"),
    ("Ray's stock image", _set("docker.image", f"rayproject/ray:{ray.__version__}-py311-cpu"), "properties"),
    ("no idle timeout", _set("idle_timeout_minutes", _DELETE), "properties"),
    ("checkout not mounted", _set("file_mounts", {}), "properties"),
    ("torch installed at every boot", _set("setup_commands", ["pip install torch"]), "properties"),
    ("start command sets resources",
     lambda c: c["worker_start_ray_commands"].append("ray start --address=$RAY_HEAD_IP:6379 --num-gpus=1"),
     "properties"),
    ("workers without token auth",
     lambda c: c.__setitem__("worker_start_ray_commands",
                             [s.replace(" export RAY_AUTH_MODE=token;", "") for s in c["worker_start_ray_commands"]]),
     "properties"),
    ("token not copied to the nodes", _set("file_mounts", {"~/star-archive": "."}), "properties"),
    ("workers join another port",
     lambda c: c.__setitem__("worker_start_ray_commands",
                             [s.replace(":6379", ":6380") for s in c["worker_start_ray_commands"]]),
     "properties"),
]
GCP_MUTATIONS = [
    ("GPU VM may live-migrate", _set("available_node_types.gpu_a100.node_config.scheduling", _DELETE), "properties"),
    ("no driver install", _set("available_node_types.gpu_l4.node_config.metadata", {"items": []}), "properties"),
    ("N1 machine without guestAccelerators",
     _set("available_node_types.gpu_l4.node_config.machineType", "n1-standard-16"), "properties"),
]
CHECKS = {"schema": lambda c: schema_errors(c), "ray": lambda c: ray_validation_error(c), "properties": problems}


@pytest.mark.parametrize(
    "name, what, mutate, check",
    [(n, *m) for n in sorted(CONFIGS) for m in MUTATIONS] + [("gcp", *m) for m in GCP_MUTATIONS],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_broken_copy_fails(name, what, mutate, check):
    config = load(name)
    assert not CHECKS[check](config)  # the file itself passes this check
    mutate(config)
    assert CHECKS[check](config), f"{name}: '{what}' went unnoticed by the {check} check"


def test_every_ray_job_submit_in_the_readmes_passes_the_token():
    """A Ray 2.60 head refuses `ray job submit` without the token: each command written down runs with
    RAY_AUTH_MODE=token, set on its line or exported earlier in its code block."""
    commands = 0
    for readme in (REPO / "README.md", REPO / "cluster" / "README.md"):
        for block in re.findall(r"^```\w*\n(.*?)^```", readme.read_text(), re.S | re.M):
            lines = block.replace("\\\n", " ").splitlines()
            for k, line in enumerate(lines):
                if "ray job submit" in line:
                    commands += 1
                    exported = any("export RAY_AUTH_MODE=token" in earlier for earlier in lines[:k])
                    assert exported or "RAY_AUTH_MODE=token" in line, f"{readme.name}: {line.strip()[:80]}"
    assert commands >= 4
