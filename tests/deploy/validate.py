"""Offline validation of the deployment manifests, as a cluster's API server would do it.

Kubernetes' own kinds go through ``kubernetes-validate`` in strict mode (Kubernetes' OpenAPI
schemas; an unknown field is an error, as ``kubectl apply --validate=strict``). Custom resources
(KServe's ServingRuntime and InferenceService, KEDA's ScaledObject) go through the
``openAPIV3Schema`` of their upstream CRDs, kept in ``schemas/`` (see its README), made strict the
same way: an object schema that lists its properties rejects others, unless it says
``x-kubernetes-preserve-unknown-fields``. SuperSONIC's values go through the chart's
``values.schema.json`` after Helm's merge with the chart's own ``values.yaml``.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = Path(__file__).with_name("schemas")
#: The oldest Kubernetes the manifests are meant for (the schemas of this minor version are used)
KUBERNETES = "1.30"
CRDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_servingruntimes.json.gz",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.json.gz",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
}


class ManifestError(ValueError):
    """A document that the API server (or Helm) would refuse; the message says where and why."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The strict openAPIV3Schema of a custom resource's version, from its upstream CRD."""
    path = SCHEMAS / CRDS[(api_version, kind)]
    if path.suffix == ".gz":  # KServe's CRDs (2 MB of YAML) as JSON: yaml takes seconds, json milliseconds
        crd = json.loads(gzip.decompress(path.read_bytes()))
    else:
        crd = yaml.safe_load(path.read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind, path
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return _strict(v["schema"]["openAPIV3Schema"])
    raise ManifestError(f"{path.name} has no version {version} of {kind}")


def validate_document(doc: dict[str, Any], where: str = "") -> None:
    """Raise :class:`ManifestError` if the API server would refuse ``doc``."""
    api, kind = doc.get("apiVersion"), doc.get("kind")
    name = f"{where}{kind}/{doc.get('metadata', {}).get('name')}"
    if (api, kind) in CRDS:
        errors = sorted(
            jsonschema.Draft7Validator(crd_schema(api, kind)).iter_errors(doc), key=lambda e: list(e.path)
        )
        if errors:
            e = errors[0]
            raise ManifestError(f"{name}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        # the CRD leaves metadata open (type: object); the API server checks it as any ObjectMeta
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.SchemaNotFoundError as err:
        raise ManifestError(f"{name}: no schema for {api} {kind} in Kubernetes {KUBERNETES}") from err
    except kubernetes_validate.ValidationError as err:
        raise ManifestError(f"{name}: {'.'.join(map(str, err.path)) or '(top)'}: {err.message}") from err


def merge_values(defaults: Any, ours: Any) -> Any:
    """Helm's merge of a values file over the chart's values.yaml: maps deeply, anything else replaced."""
    if isinstance(defaults, dict) and isinstance(ours, dict):
        return {
            k: merge_values(defaults.get(k), ours[k]) if k in ours else defaults[k]
            for k in {**defaults, **ours}
        }
    return ours


#: Values that SuperSONIC's templates read but its values.yaml only shows in comments
#: (templates/triton/deployment.yaml: the model repository's volume)
SUPERSONIC_COMMENTED_KEYS = {
    "triton.modelRepository.storageType",
    "triton.modelRepository.pvc",
    "triton.modelRepository.pvc.claimName",
    "triton.modelRepository.nfs",
    "triton.modelRepository.nfs.server",
    "triton.modelRepository.nfs.path",
}


def _paths(d: Any, prefix: str = "") -> list[str]:
    if not isinstance(d, dict):
        return []
    out = []
    for k, v in d.items():
        p = f"{prefix}{k}"
        out += [p, *_paths(v, p + ".")]
    return out


def validate_supersonic_values(ours: dict[str, Any]) -> dict[str, Any]:
    """The merged values, or :class:`ManifestError`: a key the chart does not know, or the schema's refusal."""
    defaults = yaml.safe_load((SCHEMAS / "supersonic-values.yaml").read_text())
    known = set(_paths(defaults)) | SUPERSONIC_COMMENTED_KEYS
    unknown = [
        p
        for p in _paths(ours)
        if p not in known and not any(p.startswith(k + ".") for k in _open_maps(defaults))
    ]
    if unknown:
        raise ManifestError(f"SuperSONIC values: the chart has no value {unknown[0]!r}")
    merged = merge_values(defaults, ours)
    schema = json.loads((SCHEMAS / "supersonic-values.schema.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(merged), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise ManifestError(f"SuperSONIC values: {'.'.join(map(str, e.path))}: {e.message}")
    return merged


def _open_maps(defaults: dict[str, Any]) -> list[str]:
    """Values that are free-form maps in the chart (labels, annotations, nodeSelector, resources)."""
    free = ("annotations", "labels", "nodeSelector", "affinity", "resources")
    return [p for p in _paths(defaults) if p.rsplit(".", 1)[-1] in free]
