"""SharQ's compile pass: the preparation moves into the RMSNorm that produces the activation.

In a Llama-style decoder every qkv and gate/up projection reads the output of vLLM's RMSNorm
(``input_layernorm`` / ``post_attention_layernorm``). Unfused, a decode step runs, per layer and
per projection, the norm (a Triton kernel after vLLM's IR lowering), then SharQ's preparation
kernel, then the GEMM. This pass rewrites, in the post-grad graph vLLM hands to Inductor::

    n      = vllm_ir.rms_norm(x, w, eps)                 (or fused_add_rms_norm(x, r, w, eps))
    y_i    = sharq_plugin.linear(n, bias_i, name_i)      for every user of n
into
    x_hat  = sharq_plugin.rms_norm_prepare(x, w, eps, name_0)    (add_rms_norm_prepare: (x_hat, r'))
    y_i    = sharq_plugin.linear_prepared(x_hat, bias_i, name_i)

so one kernel (sharq_vllm/csrc/prep.cu, ``rms_norm_row``) normalizes and prepares the row, and
the norm's separate kernel is gone. Numerics: the fused op computes the norm as
sharq_vllm/norm.py defines it (vLLM's semantics with a fixed summation order), bit-exact on
every path (kernel or reference); vLLM's own norm kernels differ from it only within their own
tolerances (the order of a float sum). A norm is fused only when every user of its output is a
SharQ linear with the same activation options (fmt, pattern, act_scale); the final norm before
lm_head, and norms feeding skipped (16-bit) layers, stay vLLM's.

Where it runs: vLLM's ``-O`` compile (CompilationMode.VLLM_COMPILE) with its IR ops in the graph
(``ir_enable_torch_wrap``), on CUDA devices the SharQ kernels serve; it is added as the
``post_grad_custom_post_pass`` of ``compilation_config.inductor_compile_config``, which vLLM's
pass manager runs after its own fusions and before it lowers the IR ops. Its uuid (this file's
text) is part of vLLM's compile-cache key. ``SHARQ_FUSE_NORM=0`` turns it off (A/B runs).
"""

from __future__ import annotations

import hashlib
import operator
import os
from pathlib import Path
from typing import Any

import torch
from torch import fx
from vllm.compilation.passes.inductor_pass import InductorPass
from vllm.logger import init_logger

from sharq_vllm.kernels import dispatch

from . import linear_method

logger = init_logger("vllm.sharq")

__all__ = ["ENV_FUSE_NORM", "SharQNormFusionPass", "fuse_norms", "install"]

ENV_FUSE_NORM = "SHARQ_FUSE_NORM"
PASS_KEY = "post_grad_custom_post_pass"


def _ir_targets() -> tuple[Any, Any] | None:
    """(rms_norm, fused_add_rms_norm) default overloads of vLLM's IR ops, or None (no vLLM IR)."""
    try:
        import vllm.ir.ops  # noqa: F401  (registers torch.ops.vllm_ir.*)

        ns = torch.ops.vllm_ir
        return ns.rms_norm.default, ns.fused_add_rms_norm.default
    except (ImportError, AttributeError, RuntimeError):
        return None


def _act_options(layer_name: str) -> tuple[str, str, str] | None:
    try:
        o = linear_method.layer_options(layer_name)
    except (RuntimeError, AttributeError):
        return None
    return o.format, o.pattern, o.act_scale


def fuse_norms(graph: fx.Graph) -> int:
    """Rewrite every RMSNorm -> SharQ linear(s) in ``graph`` (module docstring); returns how
    many norms were fused."""
    targets = _ir_targets()
    if targets is None:
        return 0
    rms, add_rms = targets
    linear = torch.ops.sharq_plugin.linear.default
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (rms, add_rms) or node.kwargs:
            continue
        with_residual = node.target is add_rms
        args = list(node.args)
        x, residual = args[0], (args[1] if with_residual else None)
        weight, eps = args[2 if with_residual else 1], args[3 if with_residual else 2]
        variance_size = args[4 if with_residual else 3] if len(args) > (4 if with_residual else 3) else None
        if weight is None or variance_size is not None or not isinstance(eps, float):
            continue
        if with_residual:
            outs = list(node.users)
            if not all(u.op == "call_function" and u.target is operator.getitem for u in outs):
                continue
            normed = [u for u in outs if u.args[1] == 0]
            residual_outs = [u for u in outs if u.args[1] == 1]
        else:
            normed, residual_outs = [node], []
        users = [u for n in normed for u in n.users]
        if not users or any(u.op != "call_function" or u.target is not linear or u.args[0] not in normed
                            or u.args[1] in normed for u in users):
            continue
        names = [u.args[2] for u in users]
        options = {_act_options(n) for n in names}
        if len(options) != 1 or None in options:
            continue
        val = normed[0].meta.get("val")
        with graph.inserting_before(node):
            if with_residual:
                pair = graph.call_function(torch.ops.sharq_plugin.add_rms_norm_prepare.default,
                                           (x, residual, weight, eps, names[0]))
                x_hat = graph.call_function(operator.getitem, (pair, 0))
                r_out = graph.call_function(operator.getitem, (pair, 1))
                r_val = residual_outs[0].meta.get("val") if residual_outs else node.meta.get("val", (None, None))[1]
                pair.meta["val"] = (val, r_val)
                x_hat.meta["val"], r_out.meta["val"] = val, r_val
            else:
                x_hat = graph.call_function(torch.ops.sharq_plugin.rms_norm_prepare.default,
                                            (x, weight, eps, names[0]))
                x_hat.meta["val"] = val
        for u in users:
            with graph.inserting_before(u):
                g = graph.call_function(torch.ops.sharq_plugin.linear_prepared.default, (x_hat, u.args[1], u.args[2]))
            g.meta.update(u.meta)
            u.replace_all_uses_with(g)
            graph.erase_node(u)
        for r in residual_outs:
            r.replace_all_uses_with(r_out)
            graph.erase_node(r)
        for n in normed:
            if n is not node:
                graph.erase_node(n)
        graph.erase_node(node)
        fused += 1
    return fused


class SharQNormFusionPass(InductorPass):  # type: ignore[misc]
    """The pass vLLM's pass manager runs (``post_grad_custom_post_pass``)."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, graph: fx.Graph) -> None:
        n = fuse_norms(graph)  # erases what it replaces: no dead-code pass (graphs hold mutating ops)
        self.total += n
        if n and not self.total - n:
            logger.info("sharq: compile pass: %d RMSNorm(s) run inside the SharQ preparation in the first graph", n)
        else:
            logger.debug("sharq: compile pass: %d RMSNorm(s) fused (%d in this process)", n, self.total)

    def uuid(self) -> str:
        return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _disabled_reason(vllm_config: Any) -> str | None:
    if os.environ.get(ENV_FUSE_NORM, "1") == "0":
        return f"{ENV_FUSE_NORM}=0"
    cc = vllm_config.compilation_config
    mode = getattr(cc, "mode", None)
    if getattr(mode, "name", str(mode)) != "VLLM_COMPILE":
        return f"compilation mode {getattr(mode, 'name', mode)} (the pass needs VLLM_COMPILE)"
    if not getattr(cc, "ir_enable_torch_wrap", False):
        return "vLLM's IR ops are not in the graph (ir_enable_torch_wrap off)"
    if _ir_targets() is None:
        return "this vLLM has no IR RMSNorm ops"
    if not torch.cuda.is_available():
        return "no CUDA device"
    ok, why = dispatch.kernels_for(torch.device("cuda"))
    if not ok:
        return why
    other = cc.inductor_compile_config.get(PASS_KEY)
    if other is not None and not isinstance(other, SharQNormFusionPass):
        return f"another {PASS_KEY} is configured ({type(other).__name__})"
    return None


def install(vllm_config: Any) -> bool:
    """Add the pass to ``vllm_config`` (called for every SharQ layer while the model is built,
    before vLLM compiles it; the first call decides and logs). Returns whether it is installed."""
    from . import stats

    passes = vllm_config.compilation_config.inductor_compile_config
    if isinstance(passes.get(PASS_KEY), SharQNormFusionPass):
        return True
    why = _disabled_reason(vllm_config)
    if why is None:
        passes[PASS_KEY] = SharQNormFusionPass()
        stats.log_once("fusion", "sharq: RMSNorm (+ residual add) runs inside the SharQ preparation (compile pass)")
        return True
    stats.log_once(f"fusion:{why}", f"sharq: RMSNorm stays a separate kernel before the SharQ preparation: {why}")
    return False
