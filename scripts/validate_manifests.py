#!/usr/bin/env python3
"""Validate every deploy manifest without a cluster (called by scripts/lint_deploy.sh).

* Kubernetes objects in deploy/kubernetes/**/*.yaml (kustomization files excepted) and the output
  of ``kubectl kustomize`` for every kustomization (when kubectl is installed): validated with
  kubernetes-validate, strict (unknown fields rejected), against each version in --k8s-versions.
* CRDs (LeaderWorkerSet): no schema ships with kubernetes-validate, and the LWS CRD schema is not
  vendored. Instead: (1) the top level is checked against a small schema pinned to the
  leaderworkerset.x-k8s.io/v1 API (LWS v0.6-v0.7 field names, unknown fields rejected), and
  (2) the embedded leaderTemplate / workerTemplate are validated as core ``PodTemplate`` objects
  with the real Kubernetes schema (containers, probes, volumes: where mistakes happen).
* Consistency: TP_SIZE == the GPU request == the GPU limit; PP_SIZE == the LWS group size; probes
  on /health; the API key from a Secret and passed as --api-key; no ``:latest`` image.
* deploy/compose.yaml: structure checks, plus ``docker compose config -q`` where the compose
  plugin exists (CI has only the docker client: skipped with a note).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

CRD_KINDS = {("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")}

_OBJ = {"type": "object"}
LWS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "leaderworkerset.x-k8s.io/v1"},
        "kind": {"const": "LeaderWorkerSet"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "required": ["leaderWorkerTemplate"],
            "additionalProperties": False,
            "properties": {
                "replicas": {"type": "integer", "minimum": 0},
                "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
                "networkConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"subdomainPolicy": {"enum": ["Shared", "UniquePerReplica"]}},
                },
                "rolloutStrategy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": "RollingUpdate"},
                        "rollingUpdateConfiguration": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "maxUnavailable": {"type": ["integer", "string"]},
                                "maxSurge": {"type": ["integer", "string"]},
                                "partition": {"type": "integer"},
                            },
                        },
                    },
                },
                "leaderWorkerTemplate": {
                    "type": "object",
                    "required": ["workerTemplate"],
                    "additionalProperties": False,
                    "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "restartPolicy": {"enum": ["RecreateGroupOnPodRestart", "None", "Default"]},
                        "leaderTemplate": _OBJ,
                        "workerTemplate": _OBJ,
                        "subGroupPolicy": _OBJ,
                        "volumeClaimTemplates": {"type": "array"},
                    },
                },
            },
        },
    },
}


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checked = 0

    def add(self, where: str, msg: str) -> None:
        self.items.append(f"{where}: {msg}")


def load_docs(text: str) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(text):
        if doc is not None:
            yield doc


def kn(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def validate_core(doc: dict[str, Any], where: str, versions: list[str], fail: Failures) -> None:
    for v in versions:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            fail.add(where, f"{kn(doc)} (k8s {v}) {path}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.VersionNotSupportedError) as e:
            fail.add(where, f"{kn(doc)} (k8s {v}): {e}")
    fail.checked += 1


def validate_crd(doc: dict[str, Any], where: str, versions: list[str], fail: Failures) -> None:
    for err in jsonschema.Draft7Validator(LWS_SCHEMA).iter_errors(doc):
        fail.add(where, f"{kn(doc)} {'/'.join(str(p) for p in err.path)}: {err.message}")
    tmpl = (doc.get("spec") or {}).get("leaderWorkerTemplate") or {}
    for key in ("leaderTemplate", "workerTemplate"):
        if key in tmpl:
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{doc['metadata']['name']}-{key.lower()}"},
                "template": tmpl[key],
            }
            validate_core(pod_template, f"{where} [{key}]", versions, fail)
    fail.checked += 1


def containers_of(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = doc.get("spec") or {}
    out = []
    if doc.get("kind") == "Deployment":
        for c in spec["template"]["spec"]["containers"]:
            out.append(("pod", c))
    elif doc.get("kind") == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        for key in ("leaderTemplate", "workerTemplate"):
            for c in (lwt.get(key) or {}).get("spec", {}).get("containers", []):
                out.append((key, c))
    return out


def env_value(c: dict[str, Any], name: str) -> Any:
    for e in c.get("env") or []:
        if e.get("name") == name:
            return e.get("value", e.get("valueFrom"))
    return None


def check_consistency(doc: dict[str, Any], where: str, fail: Failures) -> None:
    """Rendered objects only (images resolved, overlays applied)."""
    cs = containers_of(doc)
    if not cs:
        return
    for role, c in cs:
        name = f"{kn(doc)} {role}/{c.get('name')}"
        image = str(c.get("image", ""))
        if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
            fail.add(where, f"{name}: image {image!r} is not pinned to a tag")
        res = c.get("resources") or {}
        req = (res.get("requests") or {}).get("nvidia.com/gpu")
        lim = (res.get("limits") or {}).get("nvidia.com/gpu")
        if req is None or str(req) != str(lim):
            fail.add(where, f"{name}: nvidia.com/gpu request {req!r} != limit {lim!r}")
        if role == "workerTemplate":
            continue
        tp = env_value(c, "TP_SIZE")
        if str(tp) != str(req):
            fail.add(where, f"{name}: TP_SIZE={tp!r} but the pod requests {req!r} GPUs")
        args = " ".join(str(a) for a in c.get("args") or [])
        if "--tensor-parallel-size=$(TP_SIZE)" not in args:
            fail.add(where, f"{name}: args do not pass --tensor-parallel-size=$(TP_SIZE)")
        if "--api-key=$(VLLM_API_KEY)" not in args:
            fail.add(where, f"{name}: args do not pass --api-key=$(VLLM_API_KEY)")
        key = env_value(c, "VLLM_API_KEY")
        if not (isinstance(key, dict) and "secretKeyRef" in key):
            fail.add(where, f"{name}: VLLM_API_KEY must come from a Secret (secretKeyRef)")
        for probe in ("readinessProbe", "livenessProbe"):
            path = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if path != "/health":
                fail.add(where, f"{name}: {probe} must GET /health, got {path!r}")
        if doc.get("kind") == "LeaderWorkerSet":
            size = doc["spec"]["leaderWorkerTemplate"].get("size", 1)
            pp = env_value(c, "PP_SIZE")
            if str(pp) != str(size):
                fail.add(where, f"{name}: PP_SIZE={pp!r} but the group has size {size}")


def validate_objects(text: str, where: str, versions: list[str], fail: Failures, rendered: bool) -> None:
    try:
        docs = list(load_docs(text))
    except yaml.YAMLError as e:
        fail.add(where, f"YAML: {e}")
        return
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            fail.add(where, "not a Kubernetes object (no apiVersion/kind)")
            continue
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            validate_crd(doc, where, versions, fail)
        else:
            validate_core(doc, where, versions, fail)
        if rendered:
            check_consistency(doc, where, fail)


def render_kustomizations(versions: list[str], fail: Failures) -> None:
    kubectl = shutil.which("kubectl")
    dirs = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
    if kubectl is None:
        print(f"note: kubectl not found: {len(dirs)} kustomizations not rendered (raw files still validated)")
        return
    for d in dirs:
        rel = d.relative_to(ROOT)
        r = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            fail.add(str(rel), f"kubectl kustomize failed: {r.stderr.strip()}")
            continue
        validate_objects(r.stdout, f"{rel} (rendered)", versions, fail, rendered=True)


def validate_compose(fail: Failures) -> None:
    path = DEPLOY / "compose.yaml"
    where = str(path.relative_to(ROOT))
    doc = yaml.safe_load(path.read_text())
    svc = (doc.get("services") or {}).get("sharq-vllm")
    if not isinstance(svc, dict):
        fail.add(where, "no services.sharq-vllm")
        return
    for key in ("image", "build", "command", "ports", "volumes", "deploy", "shm_size", "environment"):
        if key not in svc:
            fail.add(where, f"services.sharq-vllm has no {key}")
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices):
        fail.add(where, "no nvidia GPU reservation")
    if "VLLM_API_KEY" not in (svc.get("environment") or {}):
        fail.add(where, "VLLM_API_KEY is not passed")
    fail.checked += 1
    docker = shutil.which("docker")
    ok = docker and subprocess.run(
        [docker, "compose", "version"], capture_output=True, check=False
    ).returncode == 0
    if not ok:
        print("note: `docker compose` not available: compose.yaml checked structurally only")
        return
    assert docker is not None
    env = dict(os.environ, VLLM_API_KEY="ci-dummy")
    r = subprocess.run(
        [docker, "compose", "-f", str(path), "config", "-q"], capture_output=True, text=True, env=env, check=False
    )
    if r.returncode != 0:
        fail.add(where, f"docker compose config: {r.stderr.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k8s-versions", default=os.environ.get("K8S_VERSIONS", "1.29.0,1.37.0"))
    args = ap.parse_args()
    versions = [v.strip() for v in args.k8s_versions.split(",") if v.strip()]
    fail = Failures()
    for f in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        validate_objects(f.read_text(), str(f.relative_to(ROOT)), versions, fail, rendered=False)
    render_kustomizations(versions, fail)
    validate_compose(fail)
    for item in fail.items:
        print(f"FAIL {item}")
    print(f"validate_manifests: {fail.checked} objects/files checked against k8s {', '.join(versions)}; "
          f"{len(fail.items)} problem(s)")
    return 1 if fail.items else 0


if __name__ == "__main__":
    sys.exit(main())
