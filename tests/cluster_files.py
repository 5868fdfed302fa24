"""Reading the cluster's files for the tests of the KubeRay manifests, the nightly CronJob and the job
commands: the manifests under cluster/kuberay/, the objects kustomize generates, every pod spec inside
them, and strict validation against the Kubernetes schema."""

from __future__ import annotations

import shlex
from pathlib import Path

import kubernetes_validate
import yaml
from ray.util import accelerators

from helpers import REPO

KUBERAY = REPO / "cluster" / "kuberay"
DOCKERFILE = REPO / "cluster" / "Dockerfile"
README = REPO / "cluster" / "README.md"
TOP_README = REPO / "README.md"
K8S = "1.33"  # the Kubernetes schema the objects are validated against
RAY_KINDS = ("RayJob", "RayCronJob")
RAY_ACCELERATORS = {v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)}


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
            if d["kind"] in RAY_KINDS:
                out |= {f"{d['kind']} {k}": t["spec"] for k, t in ray_pod_templates(d).items()}
            elif d["kind"] == "Job":
                out[f"Job {d['metadata']['name']}"] = d["spec"]["template"]["spec"]
            elif d["kind"] == "CronJob":
                out[f"CronJob {d['metadata']['name']}"] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return out


def shell_words(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    return list(lexer)


def k8s_errors(obj: dict) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        return str(e).splitlines()[0]
    return None
