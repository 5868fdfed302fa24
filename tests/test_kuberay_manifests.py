"""The KubeRay manifests (cluster/kuberay/), the image (cluster/Dockerfile) and cluster/README.md,
checked offline: every manifest parses; core Kubernetes objects and the pod templates inside
RayJob/RayCronJob validate strictly against the Kubernetes 1.33 schema; RayJob and RayCronJob carry
what the KubeRay CRDs require; Ray's own KubeRay autoscaler reads the cluster spec as intended. The
mutation tests make sure the checks can fail. (The nightly CronJob: test_nightly_cronjob.py; the job
commands in all of them: test_job_commands.py.)"""

from __future__ import annotations

import copy
import json
import re
import zoneinfo

import jsonschema
import pytest
import ray

from pipelines.restore.dataset import GPU_ACTOR_MEMORY
from pipelines.restore.restore_stage import WINDOWS_IN_FLIGHT
from pipelines.weights import DEFAULT_CACHE
from cluster_files import (DOCKERFILE, KUBERAY, RAY_ACCELERATORS, README, REPO, documents, generated_configmaps,
                           kustomization, RAY_KINDS,
                           k8s_errors, manifests, pod_specs, ray_pod_templates, shell_words, the)

CORE_KINDS = {"CronJob", "Job", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "NetworkPolicy"}
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
    "upgradeStrategy": OBJECT,
    "authOptions": closed({"mode": {"enum": ["disabled", "token"]}, "secretName": STRING, "enableK8sTokenAuth": BOOL}),
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


def as_pod_template(name: str, template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def ray_errors(obj: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(RAY_SCHEMAS[obj["kind"]])
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]


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
    assert cluster["autoscalerOptions"]["version"] == "v2"
    for name, t in gpu.items():
        # The README's host budget: the actor's declared memory and two windows of 1080p x4 frames
        # (~10.6 GiB each) in flight.
        assert t["resources"]["memory"] >= GPU_ACTOR_MEMORY + WINDOWS_IN_FLIGHT * 10.6 * 2**30, name
        pod = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == name)["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (mount,) = [m for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] == "weights-cache"]
        assert "ephemeral" in volumes["weights-cache"], name
        assert DEFAULT_CACHE.replace("~", "/home/ray").startswith(mount["mountPath"]), name


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
        if where.endswith("submitter"):  # talks to the head only: no bucket identity
            assert spec.get("serviceAccountName") is None, where
        elif not where.startswith("CronJob"):
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
    named = set(re.findall(r"(?<![\w/])(cluster/[\w./-]*\w|jobs/(?:\w+/)?\w+\.py|tests/\w+\.py)", text))
    for row in re.findall(r"^\| (`.*?) \|", text, re.M):  # the file table: names relative to cluster/
        named |= {f"cluster/{m}" for m in re.findall(r"`([^`]+)`", row)}
    assert named, "no file names found"
    assert [n for n in sorted(named) if not (REPO / n).exists()] == []
    assert ".git" in (REPO / ".dockerignore").read_text().split(), "the image must not carry the history"


# --- The cluster's doors -------------------------------------------------------------------------------
RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard and job API, client


@pytest.mark.parametrize("kind", sorted(RAY_SCHEMAS))
def test_ray_token_comes_from_a_secret_made_by_hand(kind):
    """Ray 2.60 heads refuse `ray job submit` without a token: the RayCluster enables token auth and takes
    the token from a Secret that the README says how to create; no token value is in any file."""
    spec = the(kind)["spec"]["jobTemplate"] if kind == "RayCronJob" else the(kind)["spec"]
    auth = spec["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    readme = README.read_text()
    assert f"create secret generic {auth['secretName']}" in readme
    for path in [*KUBERAY.glob("*.yaml"), README]:
        assert not re.search(r"RAY_AUTH_TOKEN[\"']?\s*[:=]\s*[\"']?[0-9a-f]{16}", path.read_text()), path.name


def test_pods_run_as_non_root_with_a_restrictive_security_context():
    specs = pod_specs()
    assert any(k.endswith("submitter") for k in specs)
    for where, spec in specs.items():
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) > 0, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where} {c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where} {c['name']}"
            assert not sc.get("privileged") and "runAsUser" not in sc or sc["runAsUser"] > 0, f"{where} {c['name']}"


def _reachable_ports_from_outside(policy: dict, labels: dict) -> set[int] | None:
    """Ports of the Ray pods that a pod without the RayCluster's label can reach (None: every port)."""
    open_ports: set[int] = set()
    for rule in policy["spec"].get("ingress", []):
        sources = rule.get("from", [])
        inside_only = sources and all(set(src.get("podSelector", {}).get("matchLabels", {}).items()) and
                                      set(src["podSelector"]["matchLabels"].items()) <= set(labels.items()) and
                                      "namespaceSelector" not in src and "ipBlock" not in src for src in sources)
        if inside_only:
            continue
        if "ports" not in rule:
            return None
        open_ports |= {p["port"] for p in rule["ports"]}
    return open_ports


def test_ray_ports_are_reachable_only_from_inside_the_raycluster():
    policies = [d for docs in manifests().values() for d in docs if d["kind"] == "NetworkPolicy"]
    assert len(policies) == 1 and "networkpolicy.yaml" in kustomization()["resources"]
    policy = policies[0]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert "Ingress" in policy["spec"]["policyTypes"]
    for kind in RAY_KINDS:
        for name, template in ray_pod_templates(the(kind)).items():
            labels = template.get("metadata", {}).get("labels", {})
            assert selector.items() <= labels.items(), f"{kind} {name} is not covered by the NetworkPolicy"
    reachable = _reachable_ports_from_outside(policy, selector)
    assert reachable is not None and not reachable & RAY_PORTS, reachable
    assert "kubectl -n star-archive port-forward" in README.read_text()


def test_a_policy_that_opens_the_dashboard_fails():
    policy = copy.deepcopy(next(d for d in documents(KUBERAY / "networkpolicy.yaml")))
    selector = policy["spec"]["podSelector"]["matchLabels"]
    policy["spec"]["ingress"].append({"ports": [{"port": 8265}]})
    assert 8265 in _reachable_ports_from_outside(policy, selector)
    policy["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})
    assert _reachable_ports_from_outside(policy, selector) is None


def test_bucket_permissions_are_least_privilege():
    """Read-only on the input bucket; write on the output and weights buckets only (README and
    serviceaccount.yaml give the commands)."""
    text = README.read_text() + (KUBERAY / "serviceaccount.yaml").read_text()
    assert re.search(r"gs://CHANGE-ME-input\s+--member=\S+\s+--role=roles/storage.objectViewer\n", text)
    for bucket in ("output", "weights"):
        assert re.search(rf"gs://CHANGE-ME-{bucket}\s+--member=\S+\s+--role=roles/storage.objectAdmin\n", text), bucket
    policy = json.loads(text.split("```json")[1].split("```")[0])
    writes = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    for statement in policy["Statement"]:
        actions, resources = set(statement["Action"]), " ".join(statement["Resource"])
        if actions & writes:
            assert "CHANGE-ME-input" not in resources and "*" not in resources.replace("/*", ""), statement
    written = " ".join(" ".join(st["Resource"]) for st in policy["Statement"] if set(st["Action"]) & writes)
    assert "CHANGE-ME-output" in written and "CHANGE-ME-weights" in written
