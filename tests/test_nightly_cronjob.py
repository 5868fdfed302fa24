"""The nightly schedule without a cluster: kustomization.yaml turns rayjob.yaml into the CronJob's
template (and kustomize renders valid objects, where kubectl is installed), and the CronJob's render
script really writes tonight's RayJob from it, or fails loudly."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster_files import KUBERAY, generated_configmaps, k8s_errors, kustomization, the


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
    render, _ = pod["initContainers"]
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
    # The run is named after tonight's RayJob, so that only its retries take over its leases at once.
    entrypoint = template["spec"]["entrypoint"].replace("--run-name star-archive-restore",
                                                        f"--run-name {job['metadata']['name']}")
    assert entrypoint != template["spec"]["entrypoint"]
    assert job["spec"] == {**template["spec"], "entrypoint": entrypoint}
    assert {**job["metadata"], "name": None} == {**template["metadata"], "name": None}


def test_the_cronjob_refuses_a_template_it_cannot_rename(tmp_path):
    """If rayjob.yaml's name line changes shape, the night fails loudly instead of re-applying one name."""
    text = (KUBERAY / "rayjob.yaml").read_text()
    text = text.replace("  name: star-archive-restore", '  name: "star-archive-restore"')
    result, _ = render_tonight(tmp_path, text)
    assert result.returncode != 0


def test_each_night_deletes_the_rayjobs_of_a_week_before(tmp_path):
    """Finished RayJobs do not pile up: the night's script lists the RayJobs of 7 to 13 nights ago and the
    expire container deletes them (absent ones are no error), before tonight's is applied."""
    result, _ = render_tonight(tmp_path, (KUBERAY / "rayjob.yaml").read_text())
    assert result.returncode == 0, result.stderr
    render, expire = cron_pod()["initContainers"]
    assert expire["command"] + expire["args"] == ["kubectl", "delete", "--ignore-not-found", "--wait=false", "-f",
                                                  "/work/expired.yaml"]
    expired = [d for d in yaml.safe_load_all((tmp_path / "work" / "expired.yaml").read_text()) if d]
    today = dt.datetime.now(dt.timezone.utc).date()
    wanted = {f"star-archive-{today - dt.timedelta(days=n):%Y%m%d}" for n in range(7, 14)}
    assert {d["metadata"]["name"] for d in expired} == wanted  # (fails only across midnight UTC)
    template = the("RayJob")
    assert all(d["kind"] == "RayJob" and d["apiVersion"] == template["apiVersion"]
               and d["metadata"]["namespace"] == template["metadata"]["namespace"] for d in expired)
    (role,) = [d for d in yaml.safe_load_all((KUBERAY / "nightly-cronjob.yaml").read_text()) if d["kind"] == "Role"]
    assert "delete" in role["rules"][0]["verbs"] and role["rules"][0]["resources"] == ["rayjobs"]
