"""SharQ on vLLM's ``/metrics``: per process that runs SharQ layers, its options, its kernel path
(CUDA kernels, or the PyTorch reference and why) and the weight bytes of its quantized layers.

The layers are quantized in the engine-core / worker processes; ``/metrics`` is served by the API
server from its own prometheus_client registry (vLLM 0.26 - 0.33,
``vllm.v1.metrics.prometheus.get_prometheus_registry``): the global ``REGISTRY``, or, when
``PROMETHEUS_MULTIPROC_DIR`` is set (``--api-server-count`` > 1, or set by the user), a registry
that reads prometheus_client's multiprocess files. So:

* without ``PROMETHEUS_MULTIPROC_DIR``: the first process that loads the plugin (the API server:
  vLLM loads plugins while it builds the engine config, before it starts the engine) makes a
  private folder, names it in ``SHARQ_METRICS_DIR`` for its child processes, and registers a
  collector in its ``REGISTRY`` that reads the folder at every scrape; each process with SharQ
  layers writes its facts there (``<pid>.json``, replaced atomically after every layer). A
  process whose ``SHARQ_METRICS_DIR`` came from a process that is not its ancestor (e.g. a test
  runner that started the server) makes its own.
* with ``PROMETHEUS_MULTIPROC_DIR``: the workers set prometheus_client gauges (multiprocess mode
  ``all``: a ``pid`` label per process), which vLLM's multiprocess registry reads.

Metrics (gauges; labels ``pid`` and ``tp_rank`` on each):

* ``sharq_info{preset, options, kernel, kernel_detail} 1``: ``preset`` sharq / sharq-plus /
  custom; ``options`` the options summary; ``kernel`` cuda / reference / mixed;
  ``kernel_detail`` the load log's kernel text (``cpu``, or why not the kernels);
* ``sharq_quantized_layers``, ``sharq_weight_bytes`` (SharQ payload), ``sharq_weight_bytes_16bit``
  (the same layers in 16 bits).

Single node only: Ray workers on other nodes write to their own machine.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["ENV_DIR", "ENV_OWNER", "SharQCollector", "publish", "read_facts", "setup"]

ENV_DIR = "SHARQ_METRICS_DIR"
ENV_OWNER = "SHARQ_METRICS_OWNER"
INFO_LABELS = ("preset", "options", "kernel", "kernel_detail")
VALUES = {
    "sharq_quantized_layers": ("layers", "SharQ-quantized linear layers in this process"),
    "sharq_weight_bytes": ("bytes_sharq", "bytes of the SharQ weight payloads of those layers"),
    "sharq_weight_bytes_16bit": ("bytes_16bit", "bytes the same layers take in 16 bits"),
}
INFO_DOC = "SharQ in this process: options, preset, kernel path (cuda / reference / mixed) and why"

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _ancestors() -> set[int]:
    out, pid = set(), os.getppid()
    for _ in range(64):
        if pid <= 1:
            break
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _inherited_dir() -> str | None:
    """SHARQ_METRICS_DIR when it belongs to this process tree (set by an ancestor), else None."""
    path, owner = os.environ.get(ENV_DIR), os.environ.get(ENV_OWNER, "")
    if not path or not os.path.isdir(path) or not owner.isdigit():
        return None
    if int(owner) == os.getpid() or int(owner) in _ancestors() or not os.path.isdir("/proc"):
        return path
    return None


def setup() -> None:
    """Once per process (from the plugin's registration): take over the ancestor's folder, or
    make one and collect from it in this process's prometheus REGISTRY."""
    with _lock:
        if "dir" in _state:
            return
        inherited = _inherited_dir()
        if inherited is not None:
            _state["dir"] = inherited
            return
        tmp = tempfile.TemporaryDirectory(prefix="sharq-metrics-")
        _state["tmp"] = tmp  # removed when this process exits
        _state["dir"] = tmp.name
        os.environ[ENV_DIR] = tmp.name
        os.environ[ENV_OWNER] = str(os.getpid())
        try:
            from prometheus_client import REGISTRY
        except ImportError:
            return
        REGISTRY.register(SharQCollector(tmp.name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_facts(path: str) -> list[dict[str, Any]]:
    """The facts of the live processes that wrote into ``path``."""
    out = []
    for name in sorted(os.listdir(path)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(path, name)) as f:
                facts = json.load(f)
        except (OSError, ValueError):
            continue  # being replaced, or foreign
        if isinstance(facts, dict) and _alive(int(facts.get("pid", 0)) or 0):
            out.append(facts)
    return out


class SharQCollector:
    """A prometheus_client custom collector over the facts files of one folder."""

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> list[Any]:
        return []  # no fixed families: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        facts = read_facts(self.path)
        info = GaugeMetricFamily("sharq_info", INFO_DOC, labels=["pid", "tp_rank", *INFO_LABELS])
        values = {name: GaugeMetricFamily(name, doc, labels=["pid", "tp_rank"])
                  for name, (_, doc) in VALUES.items()}
        for f in facts:
            who = [str(f["pid"]), str(f.get("tp_rank", "-"))]
            info.add_metric([*who, *(str(f.get(k, "")) for k in INFO_LABELS)], 1)
            for name, (key, _) in VALUES.items():
                values[name].add_metric(who, float(f.get(key, 0)))
        yield info
        yield from values.values()


def _tp_rank() -> str:
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return str(get_tensor_model_parallel_rank())
    except Exception:
        return "-"


def publish(facts: dict[str, Any]) -> None:
    """Export this process's facts (keys: INFO_LABELS and VALUES' keys); called after every
    quantized layer. Never raises: metrics must not stop a model from loading."""
    try:
        facts = {**facts, "pid": os.getpid(), "tp_rank": _tp_rank()}
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            _publish_multiprocess(facts)
            return
        path = _state.get("dir") or _inherited_dir()
        if path is None:
            return
        tmp = os.path.join(path, f".{facts['pid']}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(facts, f)
        os.replace(tmp, os.path.join(path, f"{facts['pid']}.json"))
    except Exception as e:  # pragma: no cover - reported, not raised
        from .. import log

        log.warning("sharq: could not publish the SharQ metrics: %s", e)


def _publish_multiprocess(facts: dict[str, Any]) -> None:
    from prometheus_client import Gauge

    with _lock:
        if "gauges" not in _state:
            info = Gauge("sharq_info", INFO_DOC, ["tp_rank", *INFO_LABELS], multiprocess_mode="all")
            values = {name: Gauge(name, doc, ["tp_rank"], multiprocess_mode="all")
                      for name, (_, doc) in VALUES.items()}
            _state["gauges"] = (info, values)
        info, values = _state["gauges"]
        labels = [str(facts["tp_rank"]), *(str(facts.get(k, "")) for k in INFO_LABELS)]
        previous = _state.get("info_labels")
        if previous is not None and previous != labels:
            info.labels(*previous).set(0)  # the kernel path changed (e.g. to mixed): not current
        info.labels(*labels).set(1)
        _state["info_labels"] = labels
        for name, (key, _) in VALUES.items():
            values[name].labels(str(facts["tp_rank"])).set(float(facts.get(key, 0)))
