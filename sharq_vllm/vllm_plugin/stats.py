"""Per-process evidence that SharQ ran: what was quantized and how often it was called.

Each vLLM worker process logs

* one line per quantized layer at load time (``sharq: quantized <layer> ... bytes``),
* a summary line after each layer with the running totals,
* ``sharq: forward calls=<n>`` on the 1st, 2nd, 4th, 8th, ... SharQ linear call (the
  reference path on CPU counts inside its custom op, so the count is exact even under
  torch.compile).

Tests read these lines from the server's log; ``snapshot()`` gives the same numbers in-process,
and :mod:`.metrics` exports them on vLLM's ``/metrics`` after every quantized layer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .. import log
from . import metrics

_lock = threading.Lock()
_said: set[str] = set()


@dataclass
class _Stats:
    layers_quantized: int = 0
    bytes_16bit: int = 0
    bytes_sharq: int = 0
    forward_calls: int = 0
    forward_rows: int = 0
    kernel_layers: dict[str, int] = field(default_factory=dict)  # "cuda ..." / "reference (why)" -> layers


_STATS = _Stats()


def log_once(key: str, msg: str) -> None:
    """Log ``msg`` the first time ``key`` is seen in this process (e.g. once per device)."""
    with _lock:
        if key in _said:
            return
        _said.add(key)
    log.info("%s", msg)


def record_quantized(
    name: str,
    shape: tuple[int, int],
    bytes_16bit: int,
    bytes_sharq: int,
    how: str = "",
    kernel: str = "",
    options: Any = None,
    preset: str | None = None,
) -> None:
    """``kernel``: the load log's ``kernel=...`` text (dispatch.layer_label); ``options``: the
    layer's SharQOptions (for /metrics); ``preset``: the preset /metrics names (default: the one
    the options are, else ``custom``; an NVFP4 checkpoint's layers name the method that serves
    them, whose activation options they use)."""
    with _lock:
        _STATS.layers_quantized += 1
        _STATS.bytes_16bit += bytes_16bit
        _STATS.bytes_sharq += bytes_sharq
        path = kernel.removeprefix("kernel=") or "reference (unknown)"
        _STATS.kernel_layers[path] = _STATS.kernel_layers.get(path, 0) + 1
        n, b16, bsq = _STATS.layers_quantized, _STATS.bytes_16bit, _STATS.bytes_sharq
        facts = _facts(options, preset)
    log.info(
        "sharq: quantized %s [%d x %d] (%s): %d -> %d bytes (%.3fx); totals: %d layers, %d -> %d bytes%s",
        name, shape[0], shape[1], how, bytes_16bit, bytes_sharq,
        bytes_sharq / max(bytes_16bit, 1), n, b16, bsq, f"; {kernel}" if kernel else "",
    )
    metrics.publish(facts)


def _facts(options: Any, preset: str | None = None) -> dict[str, Any]:
    """What /metrics shows for this process (call under _lock)."""
    paths = _STATS.kernel_layers
    kinds = {p.split(" ", 1)[0] for p in paths}
    kernel = kinds.pop() if len(kinds) == 1 else "mixed"
    # the reason the reference runs, else the CUDA path's description
    detail = next((p for p in paths if not p.startswith("cuda")), next(iter(paths), ""))
    if kernel == "reference":
        detail = detail.removeprefix("reference (").removesuffix(")")
    return {
        "preset": (preset or options.preset() or "custom") if options is not None else "",
        "options": options.summary() if options is not None else "",
        "kernel": kernel,
        "kernel_detail": detail,
        "layers": _STATS.layers_quantized,
        "bytes_sharq": _STATS.bytes_sharq,
        "bytes_16bit": _STATS.bytes_16bit,
    }


def record_forward(rows: int) -> None:
    with _lock:
        _STATS.forward_calls += 1
        _STATS.forward_rows += rows
        n, r = _STATS.forward_calls, _STATS.forward_rows
    if n & (n - 1) == 0:  # 1, 2, 4, 8, ...
        log.info("sharq: forward calls=%d rows=%d (SharQ W4A4 linear ran in this process)", n, r)


def snapshot() -> dict[str, Any]:
    with _lock:
        d = dict(vars(_STATS))
        d["kernel_layers"] = dict(_STATS.kernel_layers)
        return d
