"""deploy/: every manifest is one the API server (or Helm) accepts, says what the server understands,
and fits the others (names, ports, grace period); yamllint is clean. A broken copy is refused."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlaas4hep.cli import build_parser

from .validate import ManifestError, load_documents, validate_document, validate_supersonic_values

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: Kubernetes and KServe manifests (deploy/supersonic/ holds Helm values, deploy/nginx/ nginx's)
MANIFESTS = sorted([*(DEPLOY / "k8s").rglob("*.yaml"), *(DEPLOY / "kserve").rglob("*.yaml")])
SUPERSONIC = DEPLOY / "supersonic" / "values-mlaas4hep.yaml"
#: Options of the replica and configuration issues (20, 21), used by the manifests before they
#: are on this branch: checked as soon as `mlaas4hep serve` has them, skipped until then.
PENDING = {"--config", "--metrics-port", "--drain-seconds", "--read-only"}


def docs(name: str) -> list[dict[str, Any]]:
    return load_documents(DEPLOY / name)


def one(name: str, kind: str) -> dict[str, Any]:
    (d,) = [d for d in docs(name) if d["kind"] == kind]
    return d


def serve_options() -> dict[str, Any]:
    """``mlaas4hep serve``'s options: option string -> argparse action."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {o: a for a in sub.choices["serve"]._actions for o in a.option_strings}


def check_serve_args(args: list[str]) -> None:
    """``args`` parse as ``mlaas4hep serve`` options (pending ones are left out until they exist)."""
    known = serve_options()
    kept = []
    for a in args:
        opt = a.split("=", 1)[0]
        if opt in PENDING and opt not in known:
            continue
        kept.append(a)
    if kept and not kept[0].startswith("-"):
        raise AssertionError(f"not an option: {kept[0]}")
    parser = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    parser.parse_args(kept if "--repo" in " ".join(kept) else [*kept, "--repo", "/models"])


def check_serve_keys(keys: list[str]) -> None:
    """Configuration keys (file keys, or MLAAS4HEP_* names in lower case) are serve's long options."""
    known = {o[2:].replace("-", "_") for o in serve_options() if o.startswith("--")}
    known |= {o[2:].replace("-", "_") for o in PENDING} | {"token"}  # MLAAS4HEP_TOKEN: the token itself
    unknown = [k for k in keys if k not in known]
    assert not unknown, f"mlaas4hep serve has no option for {unknown}"


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid(path):
    found = docs(str(path.relative_to(DEPLOY)))
    assert found, f"{path} is empty"
    for d in found:
        validate_document(d, f"{path.name}: ")


def test_supersonic_values_are_valid():
    merged = validate_supersonic_values(yaml.safe_load(SUPERSONIC.read_text()))
    t = merged["triton"]
    assert t["image"].endswith("/mlaas4hep-serve:0.1.0") and t["command"] == ["mlaas4hep", "serve"]
    check_serve_args(t["args"])
    # the chart mounts the repository read-only at mountPath: the server must serve that, read-only
    assert t["modelRepository"]["enabled"] and "--repo=" + t["modelRepository"]["mountPath"] in t["args"]
    assert "--read-only" in t["args"]
    # drain within the chart's fixed terminationGracePeriodSeconds (60, templates/triton/deployment.yaml)
    (drain,) = [int(a.split("=")[1]) for a in t["args"] if a.startswith("--drain-seconds=")]
    assert drain < 60
    # Envoy reaches the server's gRPC port, Prometheus scrapes 8002 (the chart's scrape config)
    assert {p["name"]: p["port"] for p in t["service"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert merged["envoy"]["enabled"] and merged["keda"]["enabled"] and merged["prometheus"]["enabled"]
    assert "curl" not in " ".join(t["readinessProbe"]["command"])  # the image has no curl


# ---------------------------------------------------------------- what fits together


def test_deployment_probes_ports_and_drain():
    dep = one("k8s/deployment.yaml", "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    # the grace period covers the preStop sleep and the server's drain, with a margin of 1-10 s
    serve = yaml.safe_load(one("k8s/configmap.yaml", "ConfigMap")["data"]["serve.yaml"])
    check_serve_keys(list(serve))
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    margin = pod["terminationGracePeriodSeconds"] - pre_stop - serve["drain_seconds"]
    assert 1 <= margin <= 10, margin
    # the server's files are where the pod mounts them
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert serve["repo"] == mounts["models"]
    assert Path(serve["token_file"]).parent == Path(mounts["token"])
    assert Path(serve["tls_cert"]).parent == Path(mounts["tls"]) == Path(serve["tls_key"]).parent
    assert c["args"] == ["--config", str(Path(mounts["config"]) / "serve.yaml")]
    # TLS on the pod: the kubelet's probes speak HTTPS
    assert {c[p]["httpGet"]["scheme"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        "HTTPS"
    }
    # one worker per requested core
    assert serve["workers"] == int(c["resources"]["requests"]["cpu"])


def test_names_refer_to_objects_that_exist():
    """Every PVC, ConfigMap, Secret and scale target that the manifests name is defined in deploy/k8s/
    (but the TLS Secret, which cert-manager or `kubectl create secret tls` makes)."""
    defined = {
        (d["kind"], d["metadata"]["name"])
        for p in (DEPLOY / "k8s").rglob("*.yaml")
        for d in load_documents(p)
    }
    dep = one("k8s/deployment.yaml", "Deployment")
    for v in dep["spec"]["template"]["spec"]["volumes"]:
        if "persistentVolumeClaim" in v:
            assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in defined
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in defined
        if "secret" in v and v["name"] != "tls":
            assert ("Secret", v["secret"]["secretName"]) in defined
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = docs("k8s/service.yaml")
    assert [s["spec"].get("clusterIP") for s in services] == [None, "None"]  # a normal and a headless one
    for s in [*services, one("k8s/pdb.yaml", "PodDisruptionBudget")]:
        sel = s["spec"]["selector"].get("matchLabels", s["spec"]["selector"])
        assert sel.items() <= labels.items(), s["metadata"]["name"]
    for f, kind in (("keda-scaledobject.yaml", "ScaledObject"), ("hpa.yaml", "HorizontalPodAutoscaler")):
        target = one(f"k8s/autoscaling/{f}", kind)["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])


def test_keda_scales_on_supersonics_queue_metric():
    (trigger,) = one("k8s/autoscaling/keda-scaledobject.yaml", "ScaledObject")["spec"]["triggers"]
    q = " ".join(trigger["metadata"]["query"].split())
    assert re.fullmatch(
        r"sum\(rate\(nv_inference_queue_duration_us\{.*\}\[30s\]\)\) "
        r"/ sum\(rate\(nv_inference_exec_count\{.*\}\[30s\]\) \* 1000 \+ 0\.001\)",
        q,
    ), q
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0


def test_kserve_runtime_and_inference_services():
    rt = one("kserve/servingruntime.yaml", "ServingRuntime")
    assert rt["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    (c,) = rt["spec"]["containers"]
    assert c["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in c["env"]}
    # KServe's storage initializer writes /mnt/models; REST on 8080 and gRPC on 9000 are KServe's ports
    assert env["MLAAS4HEP_REPO"] == "/mnt/models" and env["MLAAS4HEP_READ_ONLY"] == "true"
    assert (env["MLAAS4HEP_PORT"], env["MLAAS4HEP_GRPC_PORT"]) == ("8080", "9000")
    check_serve_keys([k.removeprefix("MLAAS4HEP_").lower() for k in env if k.startswith("MLAAS4HEP_")])
    formats = {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    schemes = set()
    for f in ("kserve/inferenceservice-pvc.yaml", "kserve/inferenceservice-s3.yaml"):
        m = one(f, "InferenceService")["spec"]["predictor"]["model"]
        assert m["runtime"] == rt["metadata"]["name"] and m["modelFormat"]["name"] in formats
        assert m["protocolVersion"] in rt["spec"]["protocolVersions"]
        schemes.add(m["storageUri"].split("://")[0])
        if m["protocolVersion"] == "grpc-v2":
            assert [(p["name"], p["containerPort"]) for p in m["ports"]] == [("h2c", 9000)]
    assert schemes == {"pvc", "s3"}


# ---------------------------------------------------------------- broken copies are refused


def _set(path: str, value: Any):
    def mutate(doc):
        *head, last = path.split(".")
        node = doc
        for k in head:
            node = node[int(k)] if k.isdigit() else node[k]
        if value is KeyError:  # rename: a misspelt key
            node[last + "x"] = node.pop(last)
        else:
            node[int(last) if last.isdigit() else last] = value
        return doc

    return mutate


BROKEN = [
    (
        "k8s/deployment.yaml",
        "spec.template.spec.containers.0.ports.0.containerPort",
        "8000",
        "is not of type 'integer'",
    ),
    ("k8s/deployment.yaml", "spec.template.spec.containers.0.readinessProbe", KeyError, "readinessProbex"),
    ("k8s/service.yaml", "spec.ports.0.port", "eighty", "is not of type 'integer'"),
    ("k8s/autoscaling/hpa.yaml", "spec.minReplicas", "one", "spec.minReplicas"),
    (
        "k8s/autoscaling/keda-scaledobject.yaml",
        "spec.triggers.0.metadata.threshold",
        20,
        "is not of type 'string'",
    ),
    ("k8s/autoscaling/keda-scaledobject.yaml", "spec.scaleTargetRef", KeyError, "scaleTargetRef"),
    (
        "kserve/servingruntime.yaml",
        "spec.containers.0.resources.limits",
        "2 cores",
        "is not of type 'object'",
    ),
    ("kserve/servingruntime.yaml", "spec.protocolVersions", KeyError, "protocolVersionsx"),
    ("kserve/inferenceservice-pvc.yaml", "spec.predictor.model.storageUri", KeyError, "storageUrix"),
    (
        "kserve/inferenceservice-pvc.yaml",
        "metadata.labels",
        "tth",
        "metadata.labels: 'tth' is not of type 'object'",
    ),
]


@pytest.mark.parametrize(("name", "path", "value", "message"), BROKEN, ids=[f"{b[0]}:{b[1]}" for b in BROKEN])
def test_broken_manifest_is_refused(name, path, value, message):
    doc = copy.deepcopy(docs(name)[0] if name != "k8s/service.yaml" else docs(name)[1])
    validate_document(copy.deepcopy(doc))  # the original is fine
    with pytest.raises(ManifestError) as err:
        validate_document(_set(path, value)(doc))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("triton.resources.limits.cpu", "1", "triton.resources.limits.cpu: '1' is not of type 'integer'"),
        (
            "triton.modelRepository.mountPath",
            KeyError,
            "the chart has no value 'triton.modelRepository.mountPathx'",
        ),
        ("envoy.loadBalancerPolicy", KeyError, "the chart has no value 'envoy.loadBalancerPolicyx'"),
        ("serverLoadThreshold", "20", "serverLoadThreshold: '20' is not of type 'integer'"),
    ],
)
def test_broken_supersonic_values_are_refused(path, value, message):
    ours = yaml.safe_load(SUPERSONIC.read_text())
    with pytest.raises(ManifestError) as err:
        validate_supersonic_values(_set(path, value)(ours))
    assert message in str(err.value)


def test_unknown_server_option_is_refused():
    with pytest.raises(SystemExit):
        check_serve_args(["--repo=/models", "--wrokers=2"])
    with pytest.raises(AssertionError, match="no option for \\['grpcport'\\]"):
        check_serve_keys(["repo", "grpcport"])


# ---------------------------------------------------------------- yamllint


def yamllint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_yamllint_clean():
    r = yamllint(DEPLOY, ROOT / ".yamllint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_yamllint_catches_a_broken_copy(tmp_path):
    text = (DEPLOY / "k8s" / "pvc.yaml").read_text()
    broken = tmp_path / "pvc.yaml"
    broken.write_text(text.replace("  accessModes:", "   accessModes:") + "trailing: space \n")
    r = yamllint(broken)
    assert r.returncode != 0
    assert "(indentation)" in r.stdout or "syntax error" in r.stdout
    assert "(trailing-spaces)" in r.stdout or "syntax error" in r.stdout


def test_the_training_job_template_runs_the_job_process_on_the_shared_repository():
    """deploy/k8s/job-template.yaml: the jobs engine's command, on a job directory of the repository
    volume the servers share (where `serve --jobs` keeps REPO/.jobs), never retried, with a deadline."""
    from mlaas4hep.serve.config import DEFAULTS
    from mlaas4hep.serve.jobs.manager import DEFAULT_MEMORY_GB

    job = one("k8s/job-template.yaml", "Job")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "mlaas4hep.train.job"]
    (job_dir,) = c["args"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    serve = yaml.safe_load(one("k8s/configmap.yaml", "ConfigMap")["data"]["serve.yaml"])
    assert mounts["models"] == serve["repo"]
    assert Path(job_dir).parent == Path(serve["repo"]) / ".jobs"
    dep = one("k8s/deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in dep["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}[
        "models"
    ] == claims["models"]
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert job["spec"]["activeDeadlineSeconds"] == DEFAULTS.jobs_time_limit
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"]
    limits = c["resources"]["limits"]
    assert (
        limits["memory"] == f"{DEFAULT_MEMORY_GB:g}Gi" and limits["cpu"] == "1"
    )  # a job that asks for nothing
