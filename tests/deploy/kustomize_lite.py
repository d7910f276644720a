"""The subset of kustomize that deploy/k8s uses, to render it without a kustomize binary.

Supported in a kustomization.yaml: ``resources`` (files, or directories holding a
kustomization.yaml), ``namespace``, ``images``, ``replicas`` and ``patches`` given as
``path`` to a strategic-merge patch. Anything else raises :class:`Unsupported`, so an
overlay that outgrows this renderer fails the tests instead of being rendered wrongly.

Strategic merge follows Kubernetes for what it covers: maps merge recursively, ``null``
deletes a key, the lists below merge by their patch merge key, other lists are replaced.
Patch directives (``$patch``, ``$setElementOrder/…``, ``$retainKeys``) are unsupported.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
#: Kinds without a namespace (the ones a paylane overlay could plausibly hold).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
}
#: Kinds whose bodies name namespaces, which kustomize rewrites and this renderer does not.
NAMESPACE_REFERENCING = {"RoleBinding", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
#: Kinds the ``replicas`` field applies to.
SCALABLE = {"Deployment", "ReplicaSet", "StatefulSet", "ReplicationController"}
#: Patch merge keys of the Kubernetes lists a patch may touch here (x-kubernetes-patch-merge-key).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,  # atomic in Kubernetes: replaced as a whole
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[Doc]:
    """Render the kustomization in ``directory`` into a list of resource documents."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise Unsupported(f"{directory}: kustomization fields {sorted(unknown)}")

    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        docs.extend(_load_resource(directory, entry))
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, docs)
    if "namespace" in kustomization:
        _set_namespace(docs, kustomization["namespace"])
    for image in kustomization.get("images", []):
        _set_image(docs, image)
    for replicas in kustomization.get("replicas", []):
        _set_replicas(docs, replicas)
    return docs


def _load_resource(directory: Path, entry: str) -> list[Doc]:
    if "://" in entry or entry.startswith("github.com/"):
        raise Unsupported(f"remote resource {entry}")
    path = (directory / entry).resolve()
    if path.is_dir():
        return render(path)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if doc.get("kind") in NAMESPACE_REFERENCING:
            raise Unsupported(f"{path}: {doc['kind']} (namespace references are not rewritten)")
    return docs


def _apply_patch(directory: Path, patch: dict[str, Any], docs: list[Doc]) -> None:
    if set(patch) != {"path"}:
        raise Unsupported(f"patch entry {patch}: only {{path: …}} is supported")
    body = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(body, dict):
        raise Unsupported(f"{patch['path']}: JSON 6902 patches are not supported")
    kind, name = body["kind"], body["metadata"]["name"]
    targets = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(targets) != 1:
        raise Unsupported(f"{patch['path']}: {len(targets)} resources match {kind}/{name}")
    merged = strategic_merge(targets[0], body)
    targets[0].clear()
    targets[0].update(merged)


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """``patch`` applied to ``original`` (neither is modified)."""
    if isinstance(patch, dict) and isinstance(original, dict):
        result = copy.deepcopy(original)
        for key, value in patch.items():
            if key.startswith("$"):
                raise Unsupported(f"patch directive {key}")
            if value is None:
                result.pop(key, None)
            elif key in result:
                result[key] = strategic_merge(result[key], value, key)
            else:
                result[key] = copy.deepcopy(value)
        return result
    if isinstance(patch, list) and isinstance(original, list):
        merge_key = _merge_key(field, original + patch)
        if merge_key is None:
            return copy.deepcopy(patch)
        result = copy.deepcopy(original)
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise Unsupported(f"{field}: patch item without its merge key {merge_key}")
            same = [i for i, old in enumerate(result) if old.get(merge_key) == item[merge_key]]
            if same:
                result[same[0]] = strategic_merge(result[same[0]], item, field)
            else:
                result.append(copy.deepcopy(item))
        return result
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        # Container ports merge by containerPort, Service ports by port.
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def _set_namespace(docs: list[Doc], namespace: str) -> None:
    for doc in docs:
        if doc["kind"] == "Namespace":
            if doc["metadata"]["name"] != namespace:
                raise Unsupported(f"Namespace {doc['metadata']['name']} != namespace {namespace}")
        elif doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace


def _split_image(image: str) -> tuple[str, str]:
    """``registry:5000/app:tag`` -> (``registry:5000/app``, ``:tag``); digests likewise."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_image(docs: list[Doc], rule: dict[str, str]) -> None:
    unknown = set(rule) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise Unsupported(f"images entry fields {sorted(unknown)}")

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        name, suffix = _split_image(container["image"])
                        if name == rule["name"]:
                            if "digest" in rule:
                                suffix = "@" + rule["digest"]
                            elif "newTag" in rule:
                                suffix = ":" + rule["newTag"]
                            container["image"] = rule.get("newName", name) + suffix
                else:
                    visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(docs)


def _set_replicas(docs: list[Doc], rule: dict[str, Any]) -> None:
    targets = [d for d in docs if d["kind"] in SCALABLE and d["metadata"]["name"] == rule["name"]]
    if not targets:
        raise Unsupported(f"replicas: no workload named {rule['name']}")
    for doc in targets:
        doc["spec"]["replicas"] = int(rule["count"])
