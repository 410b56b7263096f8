"""SharQ's compile pass: the preparation moves into the op that produces the activation.

In a Llama-style decoder every qkv and gate/up projection reads the output of vLLM's RMSNorm
(``input_layernorm`` / ``post_attention_layernorm``) and every down projection reads SiLU(gate) *
up. Unfused, a decode step runs, per projection, that producer (a Triton kernel Inductor
generates), then SharQ's preparation kernel, then the GEMM. This pass rewrites, in the post-grad
graph vLLM hands to Inductor::

    n      = vllm_ir.rms_norm(x, w, eps)                 (or fused_add_rms_norm(x, r, w, eps))
    y_i    = sharq_plugin.linear(n, bias_i, name_i)      for every user of n
into
    x_hat  = sharq_plugin.rms_norm_prepare(x, w, eps, name_0)    (add_rms_norm_prepare: (x_hat, r'))
    y_i    = sharq_plugin.linear_prepared(x_hat, bias_i, name_i)

and likewise ``silu(x[..., :d]) * x[..., d:]`` (vLLM's SiluAndMul.forward_native as Inductor
decomposes it, matched with Inductor's own pattern tracer) feeding SharQ linears into
``sharq_plugin.silu_mul_prepare(x, name_0)`` + ``linear_prepared``. One kernel
(sharq_vllm/csrc/prep.cu: ``rms_norm_row`` / ``silu_mul_chunk``) then produces and prepares the
row; the producer's own kernel is gone. Numerics: the fused ops compute the producer as
sharq_vllm/producers.py defines it (vLLM's semantics; the norm with a fixed summation order),
bit-exact on every path (kernel or reference); vLLM's own norm kernels differ from it only
within their tolerances (the order of a float sum), Inductor's SiLU * mul by its rounding of
silu(g) to 16 bits before the product. A producer is fused only when every user of its output
is a SharQ linear with the same activation options (fmt, pattern, act_scale); the final norm
before lm_head, and producers feeding skipped (16-bit) layers, stay vLLM's.

Where it runs: vLLM's ``-O`` compile (CompilationMode.VLLM_COMPILE) with its IR ops in the graph
(``ir_enable_torch_wrap``), on CUDA devices the SharQ kernels serve; it is added as the
``post_grad_custom_post_pass`` of ``compilation_config.inductor_compile_config``, which vLLM's
pass manager runs after its own fusions and before it lowers the IR ops. Its uuid (this file's
text and the switches below) is part of vLLM's compile-cache key.

Switches: ``SHARQ_FUSE_NORM`` and ``SHARQ_FUSE_SILU`` (both default 1; "0" turns one off). Measured
on an H200 (Llama-3.1-8B shape): the norm rewrite +6.3% / +5.7% / +2.5% decode tok/s at batch
1 / 8 / 32 over none (benchmarks/results/serving-h200.json, runs ``#fused-norm``,
``#fused-norm-off``). The SiLU * mul rewrite: its kernel (prepare_silu_mul) takes 4.2 / 4.4 /
6.9 us at M = 1 / 8 / 32 where Inductor's SiLU * mul + the preparation take 5.6 / 5.8 / 8.8, and
the MLP block (gate_up GEMM -> act -> preparation -> down GEMM) is as fast at M = 1 and 1.0-1.4 us
faster at M = 8 .. 256 (benchmarks/results/mlp-chain-H200.json, bench_mlp_chain.py); in serving
the two settings are within the runs' noise (runs ``#s30`` / ``#s30-silu``, twice each, ABBA).
An earlier single pair of runs (``#fused-prep``, ``#fused-prep-silu-off``: -1.8% / -5.9% / +0.5%)
had kept it off; repeated, that difference did not reappear.
"""

from __future__ import annotations

import functools
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

__all__ = ["ENV_FUSE_NORM", "ENV_FUSE_SILU", "SharQFusionPass", "fuse_norms", "fuse_silu_mul", "install"]

ENV_FUSE_NORM = "SHARQ_FUSE_NORM"
ENV_FUSE_SILU = "SHARQ_FUSE_SILU"
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


def _sharq_users(out: list[fx.Node]) -> tuple[list[fx.Node], tuple[str, str, str]] | None:
    """The SharQ linears reading ``out`` (one tensor, possibly through several nodes) and their
    activation options, when they are its only users and share the options; else None."""
    linear = torch.ops.sharq_plugin.linear.default
    users = [u for n in out for u in n.users]
    if not users or any(u.op != "call_function" or u.target is not linear or u.args[0] not in out
                        or u.args[1] in out for u in users):
        return None
    options = {_act_options(str(u.args[2])) for u in users}
    if len(options) != 1:
        return None
    (o,) = options
    return None if o is None else (users, o)


def _val(node: Any) -> Any:
    """The fake tensor the graph records for ``node`` (None where it has none)."""
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _to_prepared(graph: fx.Graph, users: list[fx.Node], x_hat: fx.Node) -> None:
    """Each SharQ linear in ``users`` becomes linear_prepared on ``x_hat``."""
    for u in users:
        with graph.inserting_before(u):
            g = graph.call_function(torch.ops.sharq_plugin.linear_prepared.default, (x_hat, u.args[1], u.args[2]))
        g.meta.update(u.meta)
        u.replace_all_uses_with(g)
        graph.erase_node(u)


def fuse_norms(graph: fx.Graph) -> int:
    """Rewrite every RMSNorm -> SharQ linear(s) in ``graph`` (module docstring); returns how
    many norms were fused."""
    targets = _ir_targets()
    if targets is None:
        return 0
    rms, add_rms = targets
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (rms, add_rms) or node.kwargs:
            continue
        with_residual = node.target is add_rms
        # (x, [residual,] weight, eps[, variance_size]): the IR ops' signatures
        n_in = 2 if with_residual else 1
        x, residual = node.args[0], (node.args[1] if with_residual else None)
        weight, eps, variance_size = [*node.args[n_in:], None][:3]
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
        found = _sharq_users(normed)
        val, w_val = _val(normed[0]), _val(weight)
        # only where the fused kernel takes the rows: elsewhere the op would run the norm in
        # PyTorch (the same bits, slower than vLLM's kernel)
        k = val.shape[-1] if val is not None else None
        if (found is None or not isinstance(k, int) or w_val is None
                or not dispatch.prep_norm_takes(k, val.dtype, w_val.dtype, *found[1])):
            continue
        users = found[0]
        names = [u.args[2] for u in users]
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
        _to_prepared(graph, users, x_hat)
        for r in residual_outs:
            r.replace_all_uses_with(r_out)
            graph.erase_node(r)
        for n in normed:
            if n is not node:
                graph.erase_node(n)
        graph.erase_node(node)
        fused += 1
    return fused


def _silu_mul_native(x: torch.Tensor) -> torch.Tensor:
    # vLLM's SiluAndMul.forward_native (the form in the graph when vLLM's custom op is off, as
    # it is by default under Inductor)
    d = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :d]) * x[..., d:]


@functools.cache
def _silu_mul_pattern(dtype: torch.dtype) -> Any:
    """The Inductor pattern of _silu_mul_native as the post-grad graph holds it (traced with
    Inductor's decompositions; integer arguments are wildcards, checked in _halves)."""
    from torch._inductor.pattern_matcher import fwd_only, gen_pattern

    return gen_pattern(_silu_mul_native, [torch.empty(5, 8, dtype=dtype)], fwd_only)


def _halves(x: fx.Node, nodes: list[fx.Node]) -> bool:
    """The matched slices of x are [0, d) (into silu) and [d, 2d) (the multiplier)."""
    val = x.meta.get("val")
    if val is None or val.dim() < 1 or not isinstance(val.shape[-1], int) or val.shape[-1] % 2:
        return False
    n = val.shape[-1]
    d = n // 2
    spans = set()
    for node in nodes:
        if node.target is torch.ops.aten.slice.Tensor and node.args[0] is x:
            dim, start, end = [*node.args[1:4], None, None, None][:3]
            if dim not in (-1, val.dim() - 1) or not isinstance(start or 0, int) or not isinstance(end, (int, type(None))):
                return False
            spans.add((start or 0, n if end is None else min(end, n)))
    return spans == {(0, d), (d, n)}


def fuse_silu_mul(graph: fx.Graph) -> int:
    """Rewrite every SiLU * mul -> SharQ linear(s) in ``graph``; returns how many were fused."""
    linear = torch.ops.sharq_plugin.linear.default
    fused = 0
    erased: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node in erased or node.op != "call_function" or node.target is not linear:
            continue
        prod = node.args[0]
        if not isinstance(prod, fx.Node) or prod.target is not torch.ops.aten.mul.Tensor:
            continue
        val = prod.meta.get("val")
        if val is None or val.dtype not in (torch.bfloat16, torch.float16):
            continue
        m = _silu_mul_pattern(val.dtype).match(prod)
        if not m:
            continue
        x = m.kwargs["x"]
        found = _sharq_users([prod])
        if (found is None or not _halves(x, m.nodes)
                or not isinstance(val.shape[-1], int) or not dispatch.prep_takes(val.shape[-1], val.dtype, *found[1])):
            continue
        users = found[0]
        erased.update(users)
        with graph.inserting_before(prod):
            x_hat = graph.call_function(torch.ops.sharq_plugin.silu_mul_prepare.default, (x, users[0].args[2]))
        x_hat.meta["val"] = val
        _to_prepared(graph, users, x_hat)
        order = {n: i for i, n in enumerate(graph.nodes)}
        for n in sorted(m.nodes, key=lambda n: -order.get(n, -1)):
            if n in order and not n.users:
                graph.erase_node(n)
        fused += 1
    return fused


class SharQFusionPass(InductorPass):  # type: ignore[misc]
    """The pass vLLM's pass manager runs (``post_grad_custom_post_pass``): the rewrites the
    switches left on. Both erase what they replace (no dead-code pass: graphs hold mutating ops)."""

    def __init__(self, norm: bool = True, silu: bool = True) -> None:
        self.norm, self.silu = norm, silu
        self.total = [0, 0]
        if silu:
            for dtype in (torch.bfloat16, torch.float16):
                _silu_mul_pattern(dtype)  # traced here, outside Inductor's compile

    def __call__(self, graph: fx.Graph) -> None:
        n = (fuse_norms(graph) if self.norm else 0, fuse_silu_mul(graph) if self.silu else 0)
        msg = "sharq: compile pass: %d RMSNorm(s) and %d SiLU * mul(s) run inside the SharQ preparation%s"
        # at info the first graph where each rewrite applied (vLLM compiles a graph per piece
        # between attention layers and per size range), the rest at debug
        firsts = [k for k in range(2) if n[k] and not self.total[k]]
        self.total = [self.total[0] + n[0], self.total[1] + n[1]]
        if firsts:
            logger.info(msg, n[0], n[1], " in this graph (the first where it applied)")
        else:
            logger.debug(msg, n[0], n[1], f" ({self.total[0]} / {self.total[1]} in this process)")

    def uuid(self) -> str:
        h = hashlib.sha256(Path(__file__).read_bytes())
        h.update(f"norm={self.norm},silu={self.silu}".encode())
        return h.hexdigest()


def _switches() -> tuple[bool, bool]:
    """(norm, silu): the rewrites on (module docstring: both by default)."""
    return os.environ.get(ENV_FUSE_NORM, "1") != "0", os.environ.get(ENV_FUSE_SILU, "1") != "0"


def _disabled_reason(vllm_config: Any) -> str | None:
    if not any(_switches()):
        return f"{ENV_FUSE_NORM}=0 and {ENV_FUSE_SILU}=0"
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
    if other is not None and not isinstance(other, SharQFusionPass):
        return f"another {PASS_KEY} is configured ({type(other).__name__})"
    return None


def install(vllm_config: Any) -> bool:
    """Add the pass to ``vllm_config`` (called for every SharQ layer while the model is built,
    before vLLM compiles it; the first call decides and logs). Returns whether it is installed."""
    from . import stats

    passes = vllm_config.compilation_config.inductor_compile_config
    if isinstance(passes.get(PASS_KEY), SharQFusionPass):
        return True
    why = _disabled_reason(vllm_config)
    if why is None:
        norm, silu = _switches()
        passes[PASS_KEY] = SharQFusionPass(norm, silu)
        what = " and ".join(w for w, on in (("RMSNorm (+ residual add)", norm), ("SiLU * mul", silu)) if on)
        stats.log_once("fusion", f"sharq: {what} run(s) inside the SharQ preparation (compile pass; "
                       f"{ENV_FUSE_NORM}={int(norm)}, {ENV_FUSE_SILU}={int(silu)})")
        return True
    stats.log_once(f"fusion:{why}", f"sharq: RMSNorm and SiLU * mul stay separate kernels before the SharQ "
                   f"preparation: {why}")
    return False
