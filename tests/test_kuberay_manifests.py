"""The KubeRay manifests (cluster/kuberay/), the image (cluster/Dockerfile) and the commands in
cluster/README.md, checked offline: every manifest parses; core Kubernetes objects and the pod
templates inside RayJob/RayCronJob validate strictly against the Kubernetes 1.33 schema; RayJob and
RayCronJob carry what the KubeRay CRDs require; Ray's own KubeRay autoscaler reads the cluster spec as
intended; the nightly CronJob really renders tonight's RayJob from rayjob.yaml; and every job command
names a script and arguments its real argparse accepts. The mutation tests make sure the checks can
fail."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
import zoneinfo
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray.util import accelerators

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "cluster" / "kuberay"
DOCKERFILE = REPO / "cluster" / "Dockerfile"
README = REPO / "cluster" / "README.md"
TOP_README = REPO / "README.md"
K8S = "1.33"
CORE_KINDS = {"CronJob", "Job", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"}
RAY_ACCELERATORS = {v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)}
# GKE's cloud.google.com/gke-accelerator values for Ray's accelerator names.
GKE_GPU_LABELS = {"L4": {"nvidia-l4"}, "A100": {"nvidia-tesla-a100", "nvidia-a100-80gb"},
                  "H100": {"nvidia-h100-80gb", "nvidia-h100-mega-80gb"}}

# --- What the KubeRay CRDs require, for the fields these manifests use --------------------------------
# Restated from ray-project/kuberay: ray-operator/apis/ray/v1/rayjob_types.go, raycluster_types.go,
# raycronjob_types.go and the generated ray-operator/config/crd/bases/ray.io_rayjobs.yaml and
# ray.io_raycronjobs.yaml (RayCluster spec requires headGroupSpec; headGroupSpec requires template;
# each workerGroupSpec requires groupName, minReplicas, maxReplicas, template; RayCronJob spec requires
# schedule and jobTemplate, a RayJob spec inlined; timeZone from kuberay PR #4762). Unknown fields are
# refused (kubectl validates strictly by default), so the objects list the known fields.
# Stricter than the CRDs on purpose: rayStartParams (optional since KubeRay 1.4, required before) and
# entrypoint (optional only for InteractiveMode) are required here.


def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """An object whose unknown fields are errors, as the API server treats them."""
    return {"type": "object", "required": list(required), "properties": properties, "additionalProperties": False}


BOOL, STRING, NUMBER, OBJECT, ARRAY = ({"type": t} for t in ("boolean", "string", "number", "object", "array"))
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
STRINGS = {"type": "object", "additionalProperties": STRING}
POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {
    "metadata": OBJECT,
    "spec": {"type": "object", "required": ["containers"], "properties": {"containers": {**ARRAY, "minItems": 1}}},
}}
HEAD_GROUP = closed({
    "rayStartParams": STRINGS, "template": POD_TEMPLATE, "headService": OBJECT, "enableIngress": BOOL,
    "serviceType": STRING, "labels": STRINGS, "resources": STRINGS,
}, required=("rayStartParams", "template"))
WORKER_GROUP = closed({
    "groupName": {**STRING, "minLength": 1}, "minReplicas": INT32, "maxReplicas": INT32, "replicas": INT32,
    "idleTimeoutSeconds": INT32, "numOfHosts": INT32, "suspend": BOOL, "rayStartParams": STRINGS,
    "template": POD_TEMPLATE, "scaleStrategy": OBJECT, "labels": STRINGS, "resources": STRINGS,
}, required=("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"))
AUTOSCALER_OPTIONS = closed({
    "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]}, "idleTimeoutSeconds": INT32,
    "version": {"enum": ["v1", "v2"]}, "image": STRING, "imagePullPolicy": STRING, "resources": OBJECT,
    "securityContext": OBJECT, "env": ARRAY, "envFrom": ARRAY, "volumeMounts": ARRAY,
})
RAY_CLUSTER_SPEC = closed({
    "rayVersion": STRING, "enableInTreeAutoscaling": BOOL, "autoscalerOptions": AUTOSCALER_OPTIONS,
    "headGroupSpec": HEAD_GROUP, "workerGroupSpecs": {**ARRAY, "items": WORKER_GROUP},
    "headServiceAnnotations": STRINGS, "gcsFaultToleranceOptions": OBJECT, "suspend": BOOL, "managedBy": STRING,
    "upgradeStrategy": OBJECT, "authOptions": OBJECT,
}, required=("headGroupSpec",))
RAYJOB_SPEC = closed({
    "entrypoint": {**STRING, "minLength": 1}, "rayClusterSpec": RAY_CLUSTER_SPEC,
    "activeDeadlineSeconds": {**INT32, "minimum": 1}, "preRunningDeadlineSeconds": {**INT32, "minimum": 1},
    "backoffLimit": INT32, "ttlSecondsAfterFinished": INT32, "shutdownAfterJobFinishes": BOOL, "suspend": BOOL,
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "runtimeEnvYAML": STRING, "jobId": STRING, "metadata": STRINGS, "clusterSelector": STRINGS,
    "entrypointNumCpus": NUMBER, "entrypointNumGpus": NUMBER, "entrypointResources": STRING,
    "submitterPodTemplate": POD_TEMPLATE, "submitterConfig": OBJECT, "managedBy": STRING, "deletionStrategy": OBJECT,
}, required=("entrypoint", "rayClusterSpec"))
DNS_NAME = {**STRING, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
RAYJOB = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
    "metadata": {"type": "object", "required": ["name"], "properties": {"name": DNS_NAME}}, "spec": RAYJOB_SPEC}}
RAYCRONJOB = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCronJob"},
    "metadata": {"type": "object", "required": ["name"], "properties": {"name": DNS_NAME}},
    "spec": closed({"schedule": {**STRING, "pattern": r"^\S+( \S+){4}$"}, "timeZone": STRING, "suspend": BOOL,
                    "jobTemplate": RAYJOB_SPEC}, required=("schedule", "jobTemplate"))}}
RAY_SCHEMAS = {"RayJob": RAYJOB, "RayCronJob": RAYCRONJOB}


# --- Reading the files ----------------------------------------------------------------------------------
def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> dict[str, list[dict]]:
    return {p.name: documents(p) for p in sorted(KUBERAY.glob("*.yaml")) if p.name != "kustomization.yaml"}


def the(kind: str) -> dict:
    found = [d for docs in manifests().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"want one {kind}, found {len(found)}"
    return found[0]


def kustomization() -> dict:
    return yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())


def generated_configmaps() -> list[dict]:
    """The ConfigMaps kustomization.yaml's configMapGenerator makes (without kustomize's name hash)."""
    return [{"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": g["name"], **({"namespace": g["namespace"]} if "namespace" in g else {})},
             "data": {Path(f).name: (KUBERAY / f).read_text() for f in g.get("files", [])}}
            for g in kustomization().get("configMapGenerator", [])]


def ray_pod_templates(obj: dict) -> dict[str, dict]:
    """head / worker (and submitter) pod templates of a RayJob or RayCronJob."""
    spec = obj["spec"]["jobTemplate"] if obj["kind"] == "RayCronJob" else obj["spec"]
    cluster = spec["rayClusterSpec"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    out |= {f"worker {g['groupName']}": g["template"] for g in cluster.get("workerGroupSpecs", [])}
    if "submitterPodTemplate" in spec:
        out["submitter"] = spec["submitterPodTemplate"]
    return out


def pod_specs() -> dict[str, dict]:
    """Every pod spec in the manifests."""
    out = {}
    for docs in manifests().values():
        for d in docs:
            if d["kind"] in RAY_SCHEMAS:
                out |= {f"{d['kind']} {k}": t["spec"] for k, t in ray_pod_templates(d).items()}
            elif d["kind"] == "Job":
                out[f"Job {d['metadata']['name']}"] = d["spec"]["template"]["spec"]
            elif d["kind"] == "CronJob":
                out[f"CronJob {d['metadata']['name']}"] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return out


def k8s_errors(obj: dict) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        return str(e).splitlines()[0]
    return None


def as_pod_template(name: str, template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def ray_errors(obj: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(RAY_SCHEMAS[obj["kind"]])
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]


# --- Job commands ---------------------------------------------------------------------------------------
def project_dir_in_image() -> str:
    """Where cluster/Dockerfile puts the checkout (the destination of its COPY of the build context)."""
    copy_line = re.search(r"^COPY\s+(?:--\S+\s+)*\.\s+(\S+)\s*$", DOCKERFILE.read_text(), re.M)
    assert copy_line, "cluster/Dockerfile must COPY the build context (.) to the project directory"
    return copy_line.group(1).rstrip("/")


def shell_words(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    return list(lexer)


def job_calls(words: list[str]) -> list[tuple[str, list[str]]]:
    """(script, argv) of each `python .../jobs/X.py ARGS` in a command, ARGS ending at a shell operator."""
    calls = []
    for i, word in enumerate(words[:-1]):
        script = words[i + 1]
        if re.fullmatch(r"python3?", word) and re.search(r"(^|/)jobs/\w+\.py$", script):
            argv = []
            for w in words[i + 2:]:
                if re.fullmatch(r"[;&|<>]+", w):
                    break
                argv.append(w)
            calls.append((script, argv))
    return calls


def logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def job_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, argv) of every job command in the manifests, the Dockerfile and the README."""
    found = []
    for name, docs in manifests().items():
        for d in docs:
            if d["kind"] in RAY_SCHEMAS:
                spec = d["spec"]["jobTemplate"] if d["kind"] == "RayCronJob" else d["spec"]
                found += [(f"{name} entrypoint", *c) for c in job_calls(shell_words(spec["entrypoint"]))]
    for where, spec in pod_specs().items():
        for c in spec.get("initContainers", []) + spec["containers"]:
            words = c.get("command", []) + c.get("args", [])
            if words[:2] in (["sh", "-c"], ["bash", "-c"]):
                words = shell_words(" ".join(words[2:]))
            found += [(f"{where} container {c['name']}", *call) for call in job_calls(words)]
    dockerfile = [line for line in logical_lines(DOCKERFILE.read_text()) if not line.lstrip().startswith("#")]
    sources = [("Dockerfile", dockerfile)]
    for readme in (README, TOP_README):  # fenced blocks only
        readme_code = re.findall(r"^```\w*\n(.*?)^```", readme.read_text(), re.S | re.M)
        sources.append((str(readme.relative_to(REPO)), logical_lines("\n".join(readme_code))))
    for where, lines in sources:
        for line in lines:
            found += [(where, *c) for c in job_calls(shell_words(line.split(" #")[0]))]
    return found


def script_in_repo(script: str) -> Path:
    """The checkout's file for a script path as a command names it (relative, or absolute in the image)."""
    image_dir = project_dir_in_image() + "/"
    relative = script[len(image_dir):] if script.startswith(image_dir) else script
    assert not relative.startswith("/"), f"{script}: absolute paths must be under {image_dir}"
    return REPO / relative


# Runs each script's own argparse on each argv, in one interpreter: the script's parser is built as
# the script builds it, then parse_args is redirected to the argv under test and stopped right after
# parsing, before the script does any work.
ARGPARSE_PROBE = r"""
import argparse, contextlib, io, json, runpy, sys
real = argparse.ArgumentParser.parse_args
class Parsed(BaseException):
    pass
results = []
for script, argv in json.load(sys.stdin):
    def parse_args(self, args=None, namespace=None, _argv=argv):
        options.extend(self._option_string_actions)
        for action in self._actions:  # the options of each command too (convert --dtype, ...)
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    options.extend(command._option_string_actions)
        raise Parsed(vars(real(self, _argv)))
    argparse.ArgumentParser.parse_args = parse_args
    err, options = io.StringIO(), []
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            sys.argv = [script, *argv]
            runpy.run_path(script, run_name="__main__")
        results.append({"ok": False, "error": "the script never parsed its arguments"})
    except Parsed as parsed:
        results.append({"ok": True, "args": parsed.args[0], "options": options})
    except SystemExit as e:  # argparse: 0 after --help, 2 with the reason on stderr
        results.append({"ok": e.code in (0, None), "error": err.getvalue().strip()[-400:]})
print(json.dumps(results, default=str))
"""


def full_name_problems(argv: list[str], options: list[str]) -> list[str]:
    """Flags written other than as the parser spells them (argparse would accept a prefix)."""
    return [a for a in argv if a.startswith("--") and a.split("=")[0] not in options]


def parse_with_the_scripts(cases: list[tuple[Path, list[str]]]) -> list[dict]:
    run = subprocess.run([sys.executable, "-c", ARGPARSE_PROBE], input=json.dumps([(str(s), a) for s, a in cases]),
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


# Deliberately wrong commands: the probe must refuse each (an unknown flag, a bad choice, a missing
# required flag, a non-integer).
BAD_ARGV = [
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw", "--output", "gs://a/out", "--accelerator-kind", "L4"]),
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw", "--output", "gs://a/out", "--device", "tpu"]),
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw"]),
    ("jobs/upscale_archive.py", ["--input", "gs://a/raw", "--output", "gs://a/out", "--actors", "eight"]),
    ("jobs/fetch_weights.py", ["--dest", "gs://a/w", "--checkpoint", "medium_deg"]),
    ("jobs/fetch_weights.py", ["--checkpoint", "light_deg"]),
]


@pytest.fixture(scope="module")
def parsed_commands():
    """{(where, script, argv): result} for every job command, plus the deliberately bad ones."""
    calls = job_commands()
    cases = [(script_in_repo(s), a) for _, s, a in calls] + [(REPO / s, a) for s, a in BAD_ARGV]
    results = parse_with_the_scripts(cases)
    return dict(zip([(w, s, tuple(a)) for w, s, a in calls], results)), results[len(calls):]


# --- Tests ----------------------------------------------------------------------------------------------
def test_every_manifest_parses():
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs = documents(path)
        assert docs, path.name
        for d in docs:
            assert {"apiVersion", "kind"} <= d.keys(), path.name
            if d["kind"] != "Kustomization":
                assert d["metadata"]["name"], path.name
    kinds = {d["kind"] for docs in manifests().values() for d in docs}
    assert {"RayJob", "RayCronJob", "CronJob", "Job", "ServiceAccount", "Role", "RoleBinding"} <= kinds


def test_core_objects_validate_strictly():
    objects = [d for docs in manifests().values() for d in docs if d["kind"] in CORE_KINDS] + generated_configmaps()
    assert {o["kind"] for o in objects} == CORE_KINDS
    for obj in objects:
        assert k8s_errors(obj) is None, f"{obj['kind']} {obj['metadata']['name']}: {k8s_errors(obj)}"


@pytest.mark.parametrize("kind", sorted(RAY_SCHEMAS))
def test_ray_pod_templates_validate_strictly_as_pod_templates(kind):
    templates = ray_pod_templates(the(kind))
    assert {"head", "worker cpu", "worker gpu"} <= templates.keys()
    for name, template in templates.items():
        assert k8s_errors(as_pod_template(name.replace(" ", "-"), template)) is None, f"{kind} {name}"


@pytest.mark.parametrize("kind", sorted(RAY_SCHEMAS))
def test_ray_objects_carry_what_the_crds_require(kind):
    obj = the(kind)
    assert ray_errors(obj) == []
    spec = obj["spec"]["jobTemplate"] if kind == "RayCronJob" else obj["spec"]
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["maxReplicas"], group["groupName"]


def test_raycronjob_runs_exactly_the_rayjob():
    """raycronjob.yaml inlines rayjob.yaml's spec (the CRD cannot reference it): the copies must agree."""
    assert the("RayCronJob")["spec"]["jobTemplate"] == the("RayJob")["spec"]


def test_both_schedulers_agree():
    cron, ray_cron = the("CronJob")["spec"], the("RayCronJob")["spec"]
    assert cron["schedule"] == ray_cron["schedule"]
    assert cron.get("timeZone") == ray_cron.get("timeZone")
    for tz in (cron.get("timeZone"), ray_cron.get("timeZone")):
        if tz is not None:
            zoneinfo.ZoneInfo(tz)  # an IANA name
    assert cron["concurrencyPolicy"] == "Forbid"
    # The CronJob names RayJobs by UTC date: one night must be one UTC date.
    assert cron.get("timeZone") in ("Etc/UTC", "UTC")


def test_rays_autoscaler_reads_the_cluster_as_intended():
    """Ray's own KubeRay autoscaler config, derived from the RayJob's cluster spec (as the autoscaler
    sidecar derives it from the RayCluster): a head that takes no work, a CPU group and a GPU group
    scaling from 0, and the accelerator the entrypoint pins the restore actors to."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    job = the("RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    config = _derive_autoscaling_config_from_ray_cr({"metadata": job["metadata"], "spec": cluster})
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert head["resources"]["CPU"] == 0 and not head["resources"].get("GPU")
    cpu = [t for t in types.values() if t["resources"]["CPU"] > 0 and not t["resources"].get("GPU")]
    gpu = {n: t for n, t in types.items() if t["resources"].get("GPU")}
    assert cpu and gpu
    args = shell_words(job["spec"]["entrypoint"])
    wanted = args[args.index("--accelerator-type") + 1]
    assert wanted in RAY_ACCELERATORS
    for name, t in gpu.items():
        assert t["min_workers"] == 0, name
        assert t["resources"].get(f"accelerator_type:{wanted}") == 1, f"{name} does not offer {wanted}"
        group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == name)
        selector = group["template"]["spec"].get("nodeSelector", {})
        if "cloud.google.com/gke-accelerator" in selector:
            assert selector["cloud.google.com/gke-accelerator"] in GKE_GPU_LABELS[wanted], name
    # The job cannot count GPUs that do not exist yet: --actors is the GPU groups' capacity.
    assert int(args[args.index("--actors") + 1]) == sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu.values())
    assert args[args.index("--device") + 1] == "gpu"


def test_one_image_at_the_installed_ray_version():
    dockerfile = DOCKERFILE.read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", dockerfile, re.M).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", dockerfile, re.M)
    assert re.search(r"pip install .*torch.*\n(.*\n)*.*pip install .*-e \.", dockerfile), "torch, then the project"
    images = set()
    for kind in RAY_SCHEMAS:
        obj = the(kind)
        spec = obj["spec"]["jobTemplate"] if kind == "RayCronJob" else obj["spec"]
        assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
        images |= {c["image"] for t in ray_pod_templates(obj).values() for c in t["spec"]["containers"]}
    images |= {c["image"] for c in the("Job")["spec"]["template"]["spec"]["containers"]}
    assert len(images) == 1, f"one project image everywhere, found {images}"


def test_storage_access_goes_through_the_service_account():
    """Workload Identity / IRSA through one ServiceAccount; no credentials in any file."""
    account = next(d for d in documents(KUBERAY / "serviceaccount.yaml") if d["kind"] == "ServiceAccount")
    assert {"iam.gke.io/gcp-service-account", "eks.amazonaws.com/role-arn"} & account["metadata"]["annotations"].keys()
    for where, spec in pod_specs().items():
        if not where.startswith("CronJob"):
            assert spec.get("serviceAccountName") == account["metadata"]["name"], where
        for c in spec.get("initContainers", []) + spec["containers"]:
            for env in c.get("env", []):
                if re.search(r"TOKEN|SECRET|KEY|PASSWORD|CREDENTIAL", env["name"]):
                    assert "value" not in env, f"{where}: {env['name']} must come from a Secret"
    kinds = {d["kind"] for docs in manifests().values() for d in docs}
    assert "Secret" not in kinds


def test_namespaces_and_permissions_line_up():
    docs = [d for docs in manifests().values() for d in docs] + generated_configmaps()
    assert {d["metadata"].get("namespace") for d in docs} == {"star-archive"}
    role, binding, cron = the("Role"), the("RoleBinding"), the("CronJob")
    runner = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert {"kind": "ServiceAccount", "name": runner, "namespace": "star-archive"} in binding["subjects"]
    accounts = {d["metadata"]["name"] for docs in manifests().values() for d in docs if d["kind"] == "ServiceAccount"}
    assert runner in accounts
    # `kubectl apply` of a RayJob: read, create, patch.
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"]
               and {"get", "create", "patch"} <= set(r["verbs"]) for r in role["rules"])


def test_kustomization_turns_rayjob_yaml_into_the_cronjobs_template():
    kust = kustomization()
    assert not {"rayjob.yaml", "raycronjob.yaml", "fetch-weights-job.yaml"} & set(kust["resources"]), \
        "applying the bundle must not start a run"
    assert all((KUBERAY / r).is_file() for r in kust["resources"])
    (template,) = generated_configmaps()
    assert template["data"]["rayjob.yaml"] == (KUBERAY / "rayjob.yaml").read_text()
    volumes = cron_pod()["volumes"]
    assert {"name": "template", "configMap": {"name": template["metadata"]["name"]}} in volumes


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
def test_kustomize_renders_valid_objects():
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERAY)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    for obj in objects:
        assert k8s_errors(obj) is None, f"{obj['kind']} {obj['metadata']['name']}: {k8s_errors(obj)}"
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (cron,) = [o for o in objects if o["kind"] == "CronJob"]
    volumes = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "template", "configMap": {"name": configmap["metadata"]["name"]}} in volumes  # hashed name
    assert configmap["data"]["rayjob.yaml"] == (KUBERAY / "rayjob.yaml").read_text()


def cron_pod() -> dict:
    return the("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def render_tonight(tmp_path: Path, template_text: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs the CronJob's render script with sh, its volumes replaced by folders under tmp_path."""
    pod = cron_pod()
    (render,) = pod["initContainers"]
    (apply,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in render["volumeMounts"]}
    template_dir, work_dir = tmp_path / "template", tmp_path / "work"
    template_dir.mkdir()
    work_dir.mkdir()
    (template_key,) = generated_configmaps()[0]["data"]
    (template_dir / template_key).write_text(template_text)
    assert render["command"] == ["sh", "-c"]
    script = render["args"][0].replace(mounts["template"], str(template_dir)).replace(mounts["work"], str(work_dir))
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    # The kubectl container applies the file the script wrote, from the same volume.
    apply_mount = next(m["mountPath"] for m in apply["volumeMounts"] if m["name"] == "work")
    (applied,) = [a for a in apply["args"] if a.startswith(apply_mount + "/")]
    assert apply["command"] + apply["args"][:2] == ["kubectl", "apply", "-f"]
    return result, work_dir / applied[len(apply_mount) + 1:]


def test_the_cronjob_renders_tonights_rayjob(tmp_path):
    before = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    result, rendered = render_tonight(tmp_path, (KUBERAY / "rayjob.yaml").read_text())
    after = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    assert result.returncode == 0, result.stderr
    job, template = yaml.safe_load(rendered.read_text()), the("RayJob")
    assert job["metadata"]["name"] in {f"star-archive-{before}", f"star-archive-{after}"}
    assert job["spec"] == template["spec"]
    assert {**job["metadata"], "name": None} == {**template["metadata"], "name": None}


def test_the_cronjob_refuses_a_template_it_cannot_rename(tmp_path):
    """If rayjob.yaml's name line changes shape, the night fails loudly instead of re-applying one name."""
    text = (KUBERAY / "rayjob.yaml").read_text()
    text = text.replace("  name: star-archive-restore", '  name: "star-archive-restore"')
    result, _ = render_tonight(tmp_path, text)
    assert result.returncode != 0


def test_commands_name_real_scripts_and_arguments(parsed_commands):
    by_call, _ = parsed_commands
    wheres = {w.split(" ")[0] for w, _, _ in by_call}
    assert {"rayjob.yaml", "raycronjob.yaml", "Dockerfile", "cluster/README.md", "README.md"} <= wheres
    assert {Path(s).name for _, s, _ in by_call} >= {"upscale_archive.py", "fetch_weights.py"}
    assert any(w.startswith("Job ") for w, _, _ in by_call), "the weights Job's command"
    for (where, script, argv), result in by_call.items():
        assert script_in_repo(script).is_file(), f"{where}: {script} is not in the checkout"
        assert result["ok"], f"{where}: {script} {' '.join(argv)}: {result.get('error')}"
        if "options" in result:  # not after --help
            abbreviated = full_name_problems(argv, result["options"])
            assert not abbreviated, f"{where}: {abbreviated} are not the parser's full option names"
        accel = result.get("args", {}).get("accelerator_type")
        assert accel is None or accel in RAY_ACCELERATORS, f"{where}: --accelerator-type {accel}"


def test_the_argparse_probe_refuses_bad_commands(parsed_commands):
    by_call, bad = parsed_commands
    for (script, argv), result in zip(BAD_ARGV, bad):
        assert not result["ok"], f"{script} {argv} was accepted"
    # argparse accepts unambiguous abbreviations; the commands must not rely on that.
    options = next(r["options"] for (_, script, _), r in by_call.items()
                   if script.endswith("upscale_archive.py") and "options" in r)
    assert full_name_problems(["--input", "x", "--accelerator", "L4"], options) == ["--accelerator"]


# (kind, what is broken, how, the check that must catch it)
def _drop(path):
    def mutate(obj):
        *parents, last = path
        node = obj
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


RAY_MUTATIONS = [
    ("RayJob", "no entrypoint", _drop(["spec", "entrypoint"])),
    ("RayJob", "worker group without minReplicas",
     _drop(["spec", "rayClusterSpec", "workerGroupSpecs", 0, "minReplicas"])),
    ("RayJob", "head without template", _drop(["spec", "rayClusterSpec", "headGroupSpec", "template"])),
    ("RayJob", "misspelled field", lambda o: o["spec"].__setitem__("shutdownAfterJobFinish", True)),
    ("RayJob", "rayStartParams value not a string",
     lambda o: o["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0)),
    ("RayJob", "negative deadline", lambda o: o["spec"].__setitem__("activeDeadlineSeconds", 0)),
    ("RayCronJob", "no schedule", _drop(["spec", "schedule"])),
    ("RayCronJob", "six-field schedule", lambda o: o["spec"].__setitem__("schedule", "0 0 2 * * *")),
    ("RayCronJob", "RayJob metadata wrapper in jobTemplate",
     lambda o: o["spec"].__setitem__("jobTemplate", {"spec": o["spec"]["jobTemplate"]})),
]


@pytest.mark.parametrize("kind, what, mutate", RAY_MUTATIONS, ids=[f"{k}-{w}" for k, w, _ in RAY_MUTATIONS])
def test_a_broken_ray_object_fails_the_crd_check(kind, what, mutate):
    obj = copy.deepcopy(the(kind))
    mutate(obj)
    assert ray_errors(obj), f"{kind}: '{what}' went unnoticed"


def test_a_broken_pod_template_or_core_object_fails_strict_validation():
    template = copy.deepcopy(ray_pod_templates(the("RayJob"))["worker gpu"])
    template["spec"]["containers"][0]["resource"] = template["spec"]["containers"][0].pop("resources")
    assert k8s_errors(as_pod_template("gpu", template))
    cron = copy.deepcopy(the("CronJob"))
    cron["spec"]["concurency"] = cron["spec"].pop("concurrencyPolicy")
    assert k8s_errors(cron)
    job = copy.deepcopy(the("Job"))
    job["spec"]["template"]["spec"]["containers"][0]["args"] = "--dest gs://x"  # a string, not a list
    assert k8s_errors(job)


def test_the_readme_names_files_that_exist():
    text = README.read_text()
    named = set(re.findall(r"(?<![\w/])(cluster/[\w./-]*\w|jobs/\w+\.py|tests/\w+\.py)", text))
    for row in re.findall(r"^\| (`.*?) \|", text, re.M):  # the file table: names relative to cluster/
        named |= {f"cluster/{m}" for m in re.findall(r"`([^`]+)`", row)}
    assert named, "no file names found"
    assert [n for n in sorted(named) if not (REPO / n).exists()] == []
    assert ".git" in (REPO / ".dockerignore").read_text().split(), "the image must not carry the history"
