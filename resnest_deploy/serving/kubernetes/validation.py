"""Every manifest checked offline before anything is written: Kubernetes objects against the
OpenAPI schemas of a pinned Kubernetes version (PyPI's ``kubernetes-validate``, strict: unknown
fields are errors), the CRDs (ServiceMonitor, InferenceService) field by field."""

from __future__ import annotations

from typing import Any

from resnest_deploy.errors import ArtifactError
from resnest_deploy.serving.kubernetes.policy import DNS, require

#: the Kubernetes version whose schemas every manifest is validated against
KUBERNETES_VERSION = "1.31.0"
_CRD_FIELDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {"selector", "endpoints", "namespaceSelector"},
    ("serving.kserve.io/v1beta1", "InferenceService"): {"predictor"},
}


def validate(docs: dict[str, dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Each manifest against the pinned Kubernetes schemas (kubernetes-validate, strict: unknown
    fields are errors); CRDs field by field. Raises on the first problem; returns what was checked."""
    checked = []
    for file, doc in docs.items():
        if "kind" not in doc:  # the Prometheus adapter's rule: Helm values, not an object
            rule = doc["rules"][0]
            if set(rule) != {"seriesQuery", "resources", "name", "metricsQuery"}:
                raise ArtifactError(
                    f"{file}: an adapter rule needs seriesQuery, resources, name, metricsQuery"
                )
            checked.append(f"{file}: prometheus-adapter rule (fields)")
            continue
        key = (doc["apiVersion"], doc["kind"])
        if key in _CRD_FIELDS:
            unknown = set(doc["spec"]) - _CRD_FIELDS[key]
            if unknown or not DNS.fullmatch(doc["metadata"]["name"]):
                raise ArtifactError(
                    f"{file}: {doc['kind']} has fields its CRD does not define: {sorted(unknown)}"
                )
            checked.append(f"{file}: {doc['kind']} (CRD fields)")
            continue
        kv = require("kubernetes_validate")
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            raise ArtifactError(
                f"{file}: {doc['kind']} is not valid Kubernetes {version}: {e.message}"
            ) from e
        checked.append(f"{file}: {doc['kind']} (Kubernetes {version} schema)")
    return checked
