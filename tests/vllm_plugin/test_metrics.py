"""SharQ's /metrics export (vllm_plugin/metrics.py) across real processes, both ways vLLM's API
server builds its registry: the global REGISTRY (a collector over the facts the worker processes
write) and prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR). The real server is
scraped in tests/server/test_openai_api.py::test_sharq_metrics_endpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

ROOT = Path(__file__).resolve().parents[2]
FACTS = {"preset": "sharq-plus", "options": "format=nvfp4 pattern=2:4", "kernel": "reference",
         "kernel_detail": "cpu", "layers": 3, "bytes_sharq": 1234, "bytes_16bit": 4096}

# the API server: sets up (owner), starts a worker that publishes, scrapes its REGISTRY while the
# worker lives, then once more after it exited
OWNER = """
import os, subprocess, sys
from prometheus_client import REGISTRY, generate_latest
from sharq_vllm.vllm_plugin import metrics
metrics.setup()
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert worker.stdout.readline().strip() == "published"
print("WORKER", worker.pid)
print(generate_latest(REGISTRY).decode())
worker.stdin.close(); worker.wait()
print("AFTER")
print(generate_latest(REGISTRY).decode())
"""
WORKER = f"""
import sys
from sharq_vllm.vllm_plugin import metrics
metrics.setup()
metrics.publish({FACTS!r})
print("published", flush=True)
sys.stdin.read()
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROMETHEUS_MULTIPROC_DIR", "SHARQ_METRICS_DIR", "SHARQ_METRICS_OWNER")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for m in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        out.append((labels, float(m.group(2))))
    return out


def test_registry_collects_the_facts_of_live_child_processes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", OWNER, WORKER], capture_output=True, text=True,
                       timeout=300, check=False, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    during, after = r.stdout.split("AFTER")
    pid = re.search(r"^WORKER (\d+)$", during, re.MULTILINE).group(1)  # type: ignore[union-attr]
    info = _samples(during, "sharq_info")
    assert info == [({"pid": pid, "tp_rank": "-", **{k: str(FACTS[k]) for k in
                      ("preset", "options", "kernel", "kernel_detail")}}, 1.0)], during
    assert _samples(during, "sharq_weight_bytes") == [({"pid": pid, "tp_rank": "-"}, 1234.0)]
    assert _samples(during, "sharq_weight_bytes_16bit") == [({"pid": pid, "tp_rank": "-"}, 4096.0)]
    assert _samples(during, "sharq_quantized_layers") == [({"pid": pid, "tp_rank": "-"}, 3.0)]
    assert "# HELP sharq_info" in after and not _samples(after, "sharq_info")  # a dead process drops out


def test_a_folder_from_an_unrelated_process_is_not_used(tmp_path: Path) -> None:
    """SHARQ_METRICS_DIR inherited from a process that is not an ancestor (e.g. a test runner
    that set it up, then started a server) is replaced by the process's own."""
    other = tmp_path / "other"
    other.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        code = ("import os\nfrom sharq_vllm.vllm_plugin import metrics\nmetrics.setup()\n"
                "print(os.environ['SHARQ_METRICS_DIR']); print(os.environ['SHARQ_METRICS_OWNER'], os.getpid())")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                           env=_env(SHARQ_METRICS_DIR=str(other), SHARQ_METRICS_OWNER=str(sleeper.pid)))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode == 0, r.stderr[-2000:]
    folder, owner = r.stdout.splitlines()[:2]
    assert folder != str(other) and len(set(owner.split())) == 1, r.stdout


def test_multiprocess_mode_gauges(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (vLLM's --api-server-count > 1) the worker's gauges land in
    prometheus_client's files, read by the registry vLLM builds then; a changed kernel path
    leaves the old info sample at 0."""
    code = f"""
import os
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from sharq_vllm.vllm_plugin import metrics
metrics.publish({FACTS!r})
metrics.publish({{**{FACTS!r}, "kernel": "mixed", "layers": 4}})
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print("PID", os.getpid())
print(generate_latest(registry).decode())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                       env=_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    pid = re.search(r"^PID (\d+)$", r.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    info = {s[0]["kernel"]: s[1] for s in _samples(r.stdout, "sharq_info") if s[0]["pid"] == pid}
    assert info == {"reference": 0.0, "mixed": 1.0}, r.stdout
    assert _samples(r.stdout, "sharq_quantized_layers") == [({"pid": pid, "tp_rank": "-"}, 4.0)], r.stdout
