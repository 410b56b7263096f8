"""The evaluated quantization methods, as weight + activation fake-quantizers.

Every method is built from ``sharq_vllm.reference`` (the bit-level contract of
docs/NUMERICS.md) except FP8, which is vLLM's dynamic FP8 (``--quantization fp8`` with
per-token activation scales) written as fake quantization with ``torch.float8_e4m3fn``.

A method is applied to every decoder linear (q, k, v, o, gate, up, down); embeddings and the
lm_head stay 16-bit. Weights are fake-quantized once (FP32 result, exact), activations on
every call: ``y = act(x) @ weight(W)^T`` with FP32 accumulation, output in the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sharq_vllm import reference as ref

E4M3_MAX = 448.0


# ------------------------------------------------------------------ weight fake-quantizers
def w_none(w: torch.Tensor) -> torch.Tensor:
    return w.float()


def w_fp8_channel(w: torch.Tensor) -> torch.Tensor:
    """E4M3 with one FP32 scale per output channel (row), scale = row amax / 448."""
    wf = w.float()
    s = wf.abs().amax(-1, keepdim=True) / E4M3_MAX
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (wf / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * s


def w_sharq(block: int, rounding: str = "rtn"):
    def f(w: torch.Tensor, tensor_amax: torch.Tensor | None = None) -> torch.Tensor:
        return ref.dequantize_weight(
            ref.quantize_weight(w.float(), block=block, rounding=rounding, tensor_amax=tensor_amax)
        )

    f.uses_tensor_amax = True
    f.__name__ = f"w_sharq{block}_{rounding}"
    return f


def _w16_search(offsets: range, start: str = "rtn"):
    """16-block weights, least-squares search over E4M3 block-scale codes ``start + offset``
    (the screening family that chose ``search-up``; start "ceil" = the smallest code that does
    not clip the block max; docs/ACCURACY.md "Choosing the weight rounding")."""

    def f(w: torch.Tensor, tensor_amax: torch.Tensor | None = None) -> torch.Tensor:
        from sharq_vllm.formats import (
            TENSOR_SCALE_DIVISOR,
            _encode_blocks,
            search_e4m3_block_scales,
        )
        from sharq_vllm.fp4 import e2m1_decode

        wf = w.float()
        amax = (wf.abs().amax() if tensor_amax is None else tensor_amax.float()).reshape(1, 1)
        t = amax / TENSOR_SCALE_DIVISOR
        blocks = wf.reshape(wf.shape[0], -1, 16)
        scales = search_e4m3_block_scales(blocks, t, offsets=offsets, start=start)
        d = scales.float() * t
        return (e2m1_decode(_encode_blocks(blocks, d)) * d.unsqueeze(-1)).reshape(wf.shape)

    f.uses_tensor_amax = True
    return f


def w_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """OCP MXFP4 weights: E2M1 with an E8M0 scale per 32 input channels, no tensor scale."""
    return ref.fake_quantize(w.float(), "mxfp4")


# -------------------------------------------------------------- activation fake-quantizers
def a_none(x: torch.Tensor, act_scale: str) -> torch.Tensor:
    return x


def a_fp8_token(x: torch.Tensor, act_scale: str) -> torch.Tensor:
    """vLLM dynamic FP8: E4M3 with one FP32 scale per token (row amax / 448)."""
    xf = x.float()
    if act_scale == "tensor":
        s = xf.abs().amax() / E4M3_MAX
    else:
        s = xf.abs().amax(-1, keepdim=True) / E4M3_MAX
    s = torch.where(s > 0, s, torch.ones_like(s))
    return ((xf / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * s).to(x.dtype)


def a_fp4(fmt: str):
    def f(x: torch.Tensor, act_scale: str) -> torch.Tensor:
        return ref.fake_quantize(x, fmt, act_scale=act_scale)

    f.__name__ = f"a_{fmt}"
    return f


def a_sharq(fmt: str, pattern: str):
    def f(x: torch.Tensor, act_scale: str) -> torch.Tensor:
        return ref.sharq_activation(x, fmt, pattern, act_scale=act_scale)

    f.__name__ = f"a_sharq_{fmt}_{pattern}"
    return f


@dataclass(frozen=True)
class Method:
    name: str
    weight: str  # key into WEIGHTS
    act: str  # key into ACTS
    description: str
    options: dict = field(default_factory=dict)


WEIGHTS = {
    "16bit": w_none,
    "fp8-channel": w_fp8_channel,
    "nvfp4": w_sharq(16, "rtn"),  # NVFP4 = E2M1 + E4M3 per 16 + FP32 tensor scale (amax/2688)
    "sharq-w32": w_sharq(32, "rtn"),  # the paper's shared payload
    "sharq-w16": w_sharq(16, "rtn"),  # == NVFP4 weights
    "sharq-w16-search": w_sharq(16, "search"),
    "sharq-w32-search": w_sharq(32, "search"),
    "mxfp4": w_mxfp4,
    "sharq-w16-search-up": w_sharq(16, "search-up"),
}

# The held-out screen of calibration-free 16-block weight roundings that chose search-up
# (SmolLM2, the corpora's text after the reported 200k tokens; docs/ACCURACY.md "Target (c)"):
# suffix -> (first code, offsets tried, what it is). Each is a W4A16 method "w4a16-w16-<suffix>".
WEIGHT_SCREEN = {
    "noclip": ("rtn", range(1, -1, -1), "least squares over the RTN scale code and the next larger"),
    "ceil": ("ceil", range(0, 1), "the smallest non-clipping scale code"),
    "up4": ("ceil", range(4, -1, -1), "least squares over ceil .. ceil+4"),
    "up6": ("ceil", range(6, -1, -1), "least squares over ceil .. ceil+6"),
    "up8": ("ceil", range(8, -1, -1), "least squares over ceil .. ceil+8"),
    "up12": ("ceil", range(12, -1, -1), "least squares over ceil .. ceil+12"),
    "rtn-up6": ("rtn", range(6, -1, -1), "least squares over RTN .. RTN+6 (= search-up)"),
    "rtn-m1-up6": ("rtn", range(6, -2, -1), "least squares over RTN-1 .. RTN+6"),
}
WEIGHTS.update({f"w16-{k}": _w16_search(offsets, start) for k, (start, offsets, _) in WEIGHT_SCREEN.items()})

ACTS = {
    "16bit": a_none,
    "fp8-token": a_fp8_token,
    "nvfp4": a_fp4("nvfp4"),
    "mxfp4": a_fp4("mxfp4"),
    "sharq-nvfp4-2:4": a_sharq("nvfp4", "2:4"),
    "sharq-nvfp4-4:8-pairs": a_sharq("nvfp4", "4:8-pairs"),
    "sharq-nvfp4-dense": a_sharq("nvfp4", "dense"),
    "sharq-mxfp4-2:4": a_sharq("mxfp4", "2:4"),
}

# Weights read from an NVFP4 checkpoint of the same model written by another tool (harness
# --nvfp4-checkpoint LABEL=DIR; labels "ct" = llm-compressor / compressed-tensors, "mo" = ModelOpt):
# label -> {linear name: FP32 weight}, each member exactly as stored (sharq_vllm.checkpoint.nvfp4,
# what `--quantization sharq` serves). Weight key "ckpt:LABEL".
CHECKPOINT_WEIGHTS: dict[str, dict[str, torch.Tensor]] = {}
CHECKPOINT_LABELS = {"ct": "llm-compressor NVFP4 (compressed-tensors)", "mo": "ModelOpt NVFP4"}


def load_checkpoint_weights(label: str, path: str) -> str:
    """Read the NVFP4 checkpoint ``path`` as the weights of method rows ``nvfp4ckpt-LABEL*``;
    returns its description (format, tool version, scheme)."""
    from sharq_vllm.checkpoint.nvfp4 import read_nvfp4_payloads

    if label not in CHECKPOINT_LABELS:
        raise SystemExit(f"--nvfp4-checkpoint label {label!r}: expected one of {sorted(CHECKPOINT_LABELS)}")
    src, payloads = read_nvfp4_payloads(path)
    CHECKPOINT_WEIGHTS[label] = {name: ref.dequantize_weight(p) for name, p in payloads.items()}
    return src.label


def _checkpoint_methods(label: str) -> list[Method]:
    what = CHECKPOINT_LABELS[label]
    w = f"ckpt:{label}"
    return [
        Method(f"nvfp4ckpt-{label}-w4a16", w, "16bit", f"the weights of a real {what} checkpoint, 16-bit activations"),
        Method(f"nvfp4ckpt-{label}", w, "nvfp4",
               f"the weights of a real {what} checkpoint with NVFP4 activations (dynamic per-token scales)"),
        Method(f"nvfp4ckpt-{label}+sharq", w, "sharq-nvfp4-4:8-pairs",
               f"NVFP4 checkpoint + SharQ activations: a real {what} checkpoint's weights as stored with "
               "SharQ nvfp4 4:8-pairs activations (what --quantization sharq serves)"),
        Method(f"nvfp4ckpt-{label}+sharq-2:4", w, "sharq-nvfp4-2:4",
               f"a real {what} checkpoint's weights as stored with SharQ nvfp4 2:4 activations "
               "(sharq-plus' activations)"),
    ]


# The name "bf16" is the 16-bit model itself (bf16 weights; activations in the run's dtype).
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("bf16", "16bit", "16bit", "16-bit model (weights dequantized from the 4-bit GGUF)"),
        Method("fp8", "fp8-channel", "fp8-token",
               "FP8 W8A8 as vLLM fp8: E4M3 weights with per-channel scales, dynamic per-token E4M3 activations"),
        Method("nvfp4", "nvfp4", "nvfp4",
               "plain NVFP4 W4A4, RTN: E2M1 + E4M3 scale per 16 (+FP32 tensor scale) on both sides"),
        Method("mxfp4", "mxfp4", "mxfp4", "plain MXFP4 W4A4: E2M1 + E8M0 scale per 32 on both sides"),
        Method("nvfp4-w32", "sharq-w32", "nvfp4",
               "NVFP4 activations with the SharQ 32-block weights (reference for the activation gap)"),
        Method("w4a16-w32", "sharq-w32", "16bit", "SharQ 32-block weights, 16-bit activations"),
        Method("w4a16-w16", "sharq-w16", "16bit", "16-block (NVFP4) weights, 16-bit activations"),
        Method("sharq-nvfp4-2:4", "sharq-w32", "sharq-nvfp4-2:4",
               "SharQ NVFP4, 2:4 backbone, paper's 32-block weights"),
        Method("sharq-nvfp4-4:8-pairs", "sharq-w32", "sharq-nvfp4-4:8-pairs",
               "SharQ NVFP4, 4:8-pairs backbone (paper's NVFP4 configuration), 32-block weights"),
        Method("dense+dense", "sharq-w32", "sharq-nvfp4-dense",
               "paper's dense+dense ablation: both paths dense NVFP4, 32-block weights"),
        Method("sharq-mxfp4", "sharq-w32", "sharq-mxfp4-2:4",
               "SharQ MXFP4: 2:4 backbone (64-channel E8M0 blocks) + MXFP4 residual; the shared "
               "SharQ 32-block E4M3 weights (what the plugin serves with format=mxfp4)"),
        Method("sharq-mxfp4-wmx", "mxfp4", "sharq-mxfp4-2:4",
               "SharQ MXFP4 activations with MXFP4 (E8M0) weights: all-MX, as plain mxfp4"),
        Method("sharq-nvfp4-4:8-pairs-w16", "sharq-w16", "sharq-nvfp4-4:8-pairs",
               "SharQ NVFP4 4:8-pairs with 16-block weight scales"),
        Method("sharq-nvfp4-2:4-w16", "sharq-w16", "sharq-nvfp4-2:4",
               "SharQ NVFP4 2:4 with 16-block weight scales"),
        Method("w4a16-w16-search", "sharq-w16-search", "16bit",
               "16-block weights with per-block E4M3 scale search, 16-bit activations"),
        Method("dense+dense-w16", "sharq-w16", "sharq-nvfp4-dense",
               "dense+dense activations with 16-block weight scales (RTN)"),
        # the search-up weights (plugin weight_rounding=search-up) with each activation side
        Method("nvfp4-w16-search-up", "sharq-w16-search-up", "nvfp4",
               "NVFP4 activations with 16-block search-up weights (reference for sharq-plus' activation gap)"),
        Method("w4a16-w16-search-up", "sharq-w16-search-up", "16bit",
               "16-block search-up weights, 16-bit activations"),
        # "sharq-plus": declared after the held-out screen, before the 200k-token runs that report
        # it. Until then it was the RTN configuration, now "sharq-plus-rtn".
        Method("sharq-plus", "sharq-w16-search-up", "sharq-nvfp4-2:4",
               "our best configuration beyond the paper (options inside): SharQ NVFP4 2:4 backbone "
               "(Hopper's sparse pattern) with 16-block E4M3 weight scales, search-up rounding",
               {"fmt": "nvfp4", "pattern": "2:4", "weight_block": 16, "weight_rounding": "search-up",
                "act_scale": "token"}),
        Method("sharq-plus-dense", "sharq-w16-search-up", "sharq-nvfp4-dense",
               "sharq-plus with a dense backbone (the dense+dense ablation; Hopper's kernels run it "
               "at the same cost)",
               {"fmt": "nvfp4", "pattern": "dense", "weight_block": 16, "weight_rounding": "search-up",
                "act_scale": "token"}),
        Method("sharq-plus-rtn", "sharq-w16", "sharq-nvfp4-2:4",
               "sharq-plus with RTN weights (the sharq-plus of the runs before search-up)",
               {"fmt": "nvfp4", "pattern": "2:4", "weight_block": 16, "weight_rounding": "rtn",
                "act_scale": "token"}),
        Method("sharq-plus-search", "sharq-w16-search", "sharq-nvfp4-2:4",
               "sharq-plus with the per-block E4M3 scale search (least block squared error)",
               {"fmt": "nvfp4", "pattern": "2:4", "weight_block": 16, "weight_rounding": "search",
                "act_scale": "token"}),
        Method("sharq-plus-search-dense", "sharq-w16-search", "sharq-nvfp4-dense",
               "sharq-plus-search with a dense backbone (dense+dense; same cost on Hopper's 16-bit GEMM)",
               {"fmt": "nvfp4", "pattern": "dense", "weight_block": 16, "weight_rounding": "search",
                "act_scale": "token"}),
    ]
}
METHODS.update({f"w4a16-w16-{k}": Method(f"w4a16-w16-{k}", f"w16-{k}", "16bit", f"screen: {what}")
                for k, (_, _, what) in WEIGHT_SCREEN.items()})
METHODS.update({m.name: m for label in CHECKPOINT_LABELS for m in _checkpoint_methods(label)})

# Methods every report must contain (issue 7).
REQUIRED = ["bf16", "fp8", "nvfp4", "mxfp4", "w4a16-w32", "sharq-nvfp4-2:4",
            "sharq-nvfp4-4:8-pairs", "sharq-plus"]
ALL = list(METHODS)


def method_options(m: Method, act_scale: str) -> dict:
    opts = {"weights": m.weight, "activations": m.act, "act_scale": act_scale}
    opts.update(m.options)
    if "act_scale" in m.options:
        opts["act_scale"] = act_scale
    return opts


# -------------------------------------------------------------------------- model surgery
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _SharedPrep:
    """q/k/v (and gate/up) are called on the same tensor object: quantize it once."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.key: str | None = None
        self.out: torch.Tensor | None = None

    def get(self, x: torch.Tensor, key: str, fn, act_scale: str) -> torch.Tensor:
        if self.x is x and self.key == key:
            assert self.out is not None
            return self.out
        out = fn(x, act_scale)
        self.x, self.key, self.out = x, key, out
        return out

    def clear(self) -> None:
        self.x = self.key = self.out = None


class QuantLinear(torch.nn.Module):
    """Drop-in for a decoder ``nn.Linear``; ``state.method`` picks the active method."""

    def __init__(self, lin: torch.nn.Linear, name: str, state: EvalState) -> None:
        super().__init__()
        self.name = name
        self.w16 = lin.weight.detach()
        self.bias = None if lin.bias is None else lin.bias.detach()
        self.state = state
        self.weights: dict[str, torch.Tensor] = {}  # weight-quantizer key -> FP32 w_hat
        # amax of the fused layer this linear belongs to in vLLM (q/k/v -> qkv_proj, gate/up ->
        # gate_up_proj): the payload's FP32 tensor scale comes from it (docs/NUMERICS.md)
        self.group_amax: torch.Tensor | None = None

    def weight_for(self, key: str) -> torch.Tensor:
        if key.startswith("ckpt:"):
            label = key[len("ckpt:"):]
            if label not in CHECKPOINT_WEIGHTS:
                raise SystemExit(f"methods with weights {key!r} need --nvfp4-checkpoint {label}=DIR")
            try:
                return CHECKPOINT_WEIGHTS[label][self.name]
            except KeyError:
                raise SystemExit(f"the {label} NVFP4 checkpoint has no quantized {self.name}") from None
        if key not in self.weights:
            fn = WEIGHTS[key]
            if getattr(fn, "uses_tensor_amax", False) and self.group_amax is not None:
                self.weights[key] = fn(self.w16, tensor_amax=self.group_amax)
            else:
                self.weights[key] = fn(self.w16)
        return self.weights[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.state.method
        if self.state.active_filter is not None and not self.state.active_filter(self.name):
            m = METHODS["bf16"]
        w = self.weight_for(m.weight)
        xa = self.state.prep.get(x, m.act, ACTS[m.act], self.state.act_scale)
        b = None if self.bias is None else self.bias.float()
        return torch.nn.functional.linear(xa.float(), w, b).to(x.dtype)


class EvalState:
    def __init__(self, act_scale: str = "token") -> None:
        self.method = METHODS["bf16"]
        self.act_scale = act_scale
        self.prep = _SharedPrep()
        self.active_filter = None  # callable(name) -> bool, or None for all layers

    def set(self, name: str) -> None:
        self.method = METHODS[name]
        self.prep.clear()


FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def install(model: torch.nn.Module, act_scale: str = "token", fused_amax: bool = True
            ) -> tuple[EvalState, list[QuantLinear]]:
    """Replace every decoder linear (q,k,v,o,gate,up,down) by a QuantLinear.

    fused_amax: q/k/v (and gate/up) of one layer share the weight tensor scale, as they do in
    vLLM, which fuses them into one qkv_proj (gate_up_proj) with one payload."""
    state = EvalState(act_scale)
    replaced = []
    for mod_name, mod in list(model.named_modules()):
        mine = {}
        for child_name, child in list(mod.named_children()):
            if child_name in LINEAR_NAMES and isinstance(child, torch.nn.Linear):
                q = QuantLinear(child, f"{mod_name}.{child_name}", state)
                setattr(mod, child_name, q)
                replaced.append(q)
                mine[child_name] = q
        if fused_amax:
            for group in FUSED_GROUPS:
                members = [mine[n] for n in group if n in mine]
                if len(members) == len(group):
                    amax = torch.stack([m.w16.float().abs().amax() for m in members]).amax()
                    for m in members:
                        m.group_amax = amax
    if not replaced:
        raise RuntimeError("no decoder linears found to replace")
    return state, replaced


def prepare_weights(layers: list[QuantLinear], methods: list[str]) -> None:
    keys = {METHODS[m].weight for m in methods}
    for layer in layers:
        for k in sorted(keys):
            layer.weight_for(k)
