"""Functions run inside vLLM's workers through ``LLM.apply_model`` (pickled by reference, so this
module must be importable there: ``common.bench_env`` puts this folder on PYTHONPATH)."""

from __future__ import annotations

import collections
from typing import Any


def model_stats(model) -> dict[str, Any]:
    """Bytes of the model's tensors by dtype (unique storages, meta skipped) and the quant method
    class each layer got."""
    by_dtype: collections.Counter = collections.Counter()
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "meta":
            continue
        st = t.untyped_storage()
        if st.data_ptr() in seen:
            continue
        seen.add(st.data_ptr())
        by_dtype[str(t.dtype).replace("torch.", "")] += st.nbytes()
    qm = collections.Counter(type(m.quant_method).__name__ for m in model.modules()
                             if getattr(m, "quant_method", None) is not None)
    return {"tensor_gib": round(sum(by_dtype.values()) / 2**30, 3),
            "by_dtype_gib": {k: round(v / 2**30, 3) for k, v in by_dtype.most_common()},
            "quant_methods": dict(qm)}
