"""SharQ checkpoint format: fused-group numerics, the loader-side validator, corrupt checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sharq_vllm import reference
from sharq_vllm.checkpoint import (
    PACKED,
    SCALE,
    TENSOR_SCALE,
    CheckpointError,
    expected_tensors,
    find_weight_files,
    fused_group,
    is_quantizable_linear,
    make_quantization_config,
    payload_from_tensors,
    payload_to_tensors,
    read_quantization_config,
    shared_tensor_scale,
    validate_checkpoint,
    validate_loaded,
)
from sharq_vllm.convert import quantize_checkpoint
from sharq_vllm.options import SharQOptions

from .tiny_checkpoint import llama_config, llama_tensors, write_checkpoint

OPTS = SharQOptions()


def _eq(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality (float8 has no torch.equal on every build: compare the raw bytes)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.itemsize == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


def _online_payload(w: torch.Tensor, options: SharQOptions, amax: torch.Tensor | None = None):
    """What SharQLinearMethod.process_weights_after_loading computes for a (fused) weight."""
    if amax is None:
        amax = w.detach().float().abs().amax().reshape(1)
    return options.quantize_weight(w, tensor_amax=amax)


# --------------------------------------------------------------------------------------------
# numerics: per-projection payloads with a shared amax == the fused payload
# --------------------------------------------------------------------------------------------
@given(
    rows=st.lists(st.integers(1, 6), min_size=2, max_size=3),
    kb=st.integers(1, 3),
    block=st.sampled_from([32, 16]),
    rounding=st.sampled_from(["rtn", "search", "search-up"]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    seed=st.integers(0, 2**16),
)
def test_concat_of_shared_amax_payloads_is_fused_payload(rows, kb, block, rounding, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = 64 * kb
    ws = [(torch.randn(8 * r, k, generator=g) * (i + 1) * 0.1).to(dtype) for i, r in enumerate(rows)]
    fused = torch.cat(ws)
    online = reference.quantize_weight(fused, block=block, rounding=rounding)
    amax = torch.stack([w.float().abs().amax() for w in ws]).amax().reshape(1)
    parts = [reference.quantize_weight(w, block=block, rounding=rounding, tensor_amax=amax) for w in ws]
    assert _eq(torch.cat([p.codes for p in parts]), online.codes)
    assert _eq(torch.cat([p.block_scales for p in parts]), online.block_scales)
    for p in parts:
        assert _eq(p.tensor_scale, online.tensor_scale)


def test_own_amax_differs_from_fused():
    """Guard: without the shared amax the payload would NOT be the fused one."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(64, 64, generator=g).bfloat16()
    k = (torch.randn(32, 64, generator=g) * 4).bfloat16()
    fused = reference.quantize_weight(torch.cat([q, k]))
    own = reference.quantize_weight(q)
    assert not _eq(own.tensor_scale, fused.tensor_scale)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    src = write_checkpoint(root / "src", shards=3)
    dst = root / "dst"
    quantize_checkpoint(src, dst, OPTS, progress=False)
    return src, dst


def test_checkpoint_payload_equals_online_fused_payload(tiny):
    src, dst = tiny
    src_t = {}
    for f in sorted(src.glob("*.safetensors")):
        src_t.update(load_file(str(f)))
    dst_t = {}
    for f in sorted(dst.glob("*.safetensors")):
        dst_t.update(load_file(str(f)))
    for layer in range(2):
        p = f"model.layers.{layer}."
        for fused, members in [
            ("self_attn.qkv_proj", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
            ("mlp.gate_up_proj", ["mlp.gate_proj", "mlp.up_proj"]),
            ("self_attn.o_proj", ["self_attn.o_proj"]),
            ("mlp.down_proj", ["mlp.down_proj"]),
        ]:
            w = torch.cat([src_t[f"{p}{m}.weight"] for m in members])
            online = _online_payload(w, OPTS)
            codes = torch.cat([dst_t[f"{p}{m}.{PACKED}"] for m in members])
            scales = torch.cat([dst_t[f"{p}{m}.{SCALE}"] for m in members])
            ts = shared_tensor_scale(p + fused, [dst_t[f"{p}{m}.{TENSOR_SCALE}"] for m in members])
            assert _eq(codes, online.codes), p + fused
            assert _eq(scales, online.block_scales), p + fused
            assert _eq(ts, online.tensor_scale.reshape(1)), p + fused
            # and the loaded payload dequantizes like the online one
            loaded = payload_from_tensors(codes, scales, ts)
            assert torch.equal(reference.dequantize_weight(loaded), reference.dequantize_weight(online))
    # 16-bit tensors pass through unchanged
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.input_layernorm.weight"):
        assert _eq(dst_t[name], src_t[name])
        assert "model.layers.0.self_attn.q_proj.weight" not in dst_t


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_shards_of_checkpoint_equal_online_tp_payload(tiny, tp):
    """Under TP the online path all-reduces the amax (MAX), so each rank's payload is the slice
    of the TP=1 payload: the checkpoint's tensors sliced the way vLLM's weight loaders do."""
    src, dst = tiny
    src_t = {k: v for f in src.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    dst_t = {k: v for f in dst.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    p = "model.layers.1."
    # column parallel, fused qkv: rank r holds rows r/tp of q, k and v
    members = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    global_amax = torch.cat([src_t[f"{p}{m}.weight"] for m in members]).float().abs().amax().reshape(1)
    for r in range(tp):
        def rows(t: torch.Tensor, r: int = r) -> torch.Tensor:
            n = t.shape[0] // tp
            return t[r * n : (r + 1) * n]

        w_rank = torch.cat([rows(src_t[f"{p}{m}.weight"]) for m in members])
        online = _online_payload(w_rank, OPTS, amax=global_amax)
        assert _eq(torch.cat([rows(dst_t[f"{p}{m}.{PACKED}"]) for m in members]), online.codes)
        assert _eq(torch.cat([rows(dst_t[f"{p}{m}.{SCALE}"]) for m in members]), online.block_scales)
    # row parallel, down_proj: rank r holds input columns r/tp (K 128 / tp is a multiple of 32)
    w = src_t[f"{p}mlp.down_proj.weight"]
    amax = w.float().abs().amax().reshape(1)
    kr = w.shape[1] // tp
    for r in range(tp):
        online = _online_payload(w[:, r * kr : (r + 1) * kr], OPTS, amax=amax)
        packed = dst_t[f"{p}mlp.down_proj.{PACKED}"][:, r * kr // 2 : (r + 1) * kr // 2]
        scale = dst_t[f"{p}mlp.down_proj.{SCALE}"][:, r * kr // 32 : (r + 1) * kr // 32]
        assert _eq(packed, online.codes)
        assert _eq(scale, online.block_scales)


# --------------------------------------------------------------------------------------------
# naming, config, per-layer helpers
# --------------------------------------------------------------------------------------------
def test_naming_and_groups():
    assert is_quantizable_linear("model.layers.3.self_attn.q_proj")
    assert is_quantizable_linear("model.language_model.layers.0.mlp.down_proj")
    assert not is_quantizable_linear("lm_head")
    assert not is_quantizable_linear("model.embed_tokens")
    assert not is_quantizable_linear("model.layers.0.input_layernorm")
    assert not is_quantizable_linear("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")
    assert fused_group("model.layers.0.self_attn.k_proj") == (
        "model.layers.0.self_attn.qkv_proj",
        ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"),
    )
    assert fused_group("model.layers.0.mlp.up_proj")[0] == "model.layers.0.mlp.gate_up_proj"
    assert fused_group("model.layers.0.mlp.down_proj") == ("model.layers.0.mlp.down_proj", ("model.layers.0.mlp.down_proj",))


def test_quantization_config_roundtrip_through_plugin_options():
    opts = SharQOptions(format="mxfp4", pattern="2:4", skip_layers=("re:layers\\.0\\.",), weight_block=16)
    qc = make_quantization_config(opts)
    assert qc["quant_method"] == "sharq" and qc["version"] == 1
    assert json.loads(json.dumps(qc)) == qc
    assert read_quantization_config({"quantization_config": qc}) == opts
    assert SharQOptions.from_dict(qc) == opts  # what SharQConfig.from_config parses
    assert read_quantization_config({}) is None


@pytest.mark.parametrize(
    ("qc", "needle"),
    [
        ({"quant_method": "sharq", "format": "fp3"}, "format"),
        ({"quant_method": "sharq", "pattern": "1:2"}, "pattern"),
        ({"quant_method": "sharq", "weight_block": 64}, "weight_block"),
        ({"quant_method": "sharq", "colour": "red"}, "colour"),
        ({"quant_method": "sharq", "version": 2}, "version 2"),
        ({"quant_method": "fp8"}, "not 'sharq'"),
        ("sharq", "must be an object"),
    ],
)
def test_bad_quantization_config(qc, needle):
    with pytest.raises(CheckpointError, match=r"config.json") as e:
        read_quantization_config({"quantization_config": qc})
    assert needle in str(e.value)


def test_expected_tensors_and_validate_loaded():
    specs = expected_tensors("m.layers.0.self_attn.qkv_proj", 128, 64, OPTS)
    assert {k: (v.shape, v.dtype) for k, v in specs.items()} == {
        PACKED: ((128, 32), torch.uint8),
        SCALE: ((128, 2), torch.float8_e4m3fn),
        TENSOR_SCALE: ((1,), torch.float32),
    }
    assert expected_tensors("x", 8, 64, 16)[SCALE].shape == (8, 4)
    w = torch.randn(128, 64)
    good = payload_to_tensors("m.layers.0.self_attn.qkv_proj", reference.quantize_weight(w))
    validate_loaded("m.layers.0.self_attn.qkv_proj", good, 128, 64, OPTS)
    by_suffix = {k.rpartition(".")[2]: v for k, v in good.items()}
    validate_loaded("m.layers.0.self_attn.qkv_proj", by_suffix, 128, 64, OPTS)

    bad = dict(by_suffix, weight_scale=by_suffix[SCALE].float())
    with pytest.raises(CheckpointError, match=r"qkv_proj\.weight_scale: dtype float32, expected float8_e4m3fn"):
        validate_loaded("m.layers.0.self_attn.qkv_proj", bad, 128, 64, OPTS)
    bad = dict(by_suffix, weight_packed=by_suffix[PACKED][:, :16])
    with pytest.raises(CheckpointError, match=r"qkv_proj\.weight_packed: shape \[128, 16\], expected \[128, 32\]"):
        validate_loaded("m.layers.0.self_attn.qkv_proj", bad, 128, 64, OPTS)
    bad = {k: v for k, v in by_suffix.items() if k != TENSOR_SCALE}
    with pytest.raises(CheckpointError, match=r"qkv_proj\.weight_tensor_scale is missing"):
        validate_loaded("m.layers.0.self_attn.qkv_proj", bad, 128, 64, OPTS)
    bad = dict(by_suffix, weight_tensor_scale=torch.tensor([float("nan")]))
    with pytest.raises(CheckpointError, match="not finite"):
        validate_loaded("m.layers.0.self_attn.qkv_proj", bad, 128, 64, OPTS)
    with pytest.raises(CheckpointError, match="not a multiple of the weight block 32"):
        expected_tensors("x", 8, 48, OPTS)
    with pytest.raises(CheckpointError, match="not a multiple of 64"):
        expected_tensors("x", 8, 96, SharQOptions(format="mxfp4"))


def test_shared_tensor_scale():
    assert shared_tensor_scale("qkv", torch.tensor([0.5, 0.5, 0.5])).tolist() == [0.5]
    with pytest.raises(CheckpointError, match=r"qkv\.weight_tensor_scale: the fused shards carry different.*k_proj"):
        shared_tensor_scale("qkv", [torch.tensor([0.5]), torch.tensor([0.25])], ["q_proj", "k_proj"])


# --------------------------------------------------------------------------------------------
# validate_checkpoint on good, corrupt and mismatched folders
# --------------------------------------------------------------------------------------------
def test_validate_good_checkpoint(tiny):
    _, dst = tiny
    info = validate_checkpoint(dst)
    assert info.options == OPTS
    assert len(info.layers) == 14
    assert info.other_tensors == 3 + 2 * 2
    # payload: 4 bits + an 8-bit scale per 32 values (+ 4 bytes per layer)
    assert info.quantized_bytes == sum(layer.out_features * layer.in_features * 4.25 / 8 + 4 for layer in info.layers)
    assert info.metadata["quantized_layers"] == 14


def _copy_with(dst: Path, out: Path, edit) -> Path:
    """Copy a (one-or-more shard) SharQ checkpoint into one shard with ``edit(tensors)`` applied."""
    out.mkdir()
    tensors = {}
    for f in sorted(dst.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    cfg = json.loads((dst / "config.json").read_text())
    edit(tensors, cfg)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    return out


L0 = "model.layers.0."


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t, c: t.pop(L0 + "self_attn.k_proj.weight_scale"), r"tensor model\.layers\.0\.self_attn\.k_proj\.weight_scale is missing"),
        (lambda t, c: t.update({L0 + "mlp.up_proj.weight_scale": t[L0 + "mlp.up_proj.weight_scale"].float()}), r"mlp\.up_proj\.weight_scale: dtype float32, expected float8_e4m3fn"),
        (lambda t, c: t.update({L0 + "mlp.up_proj.weight_packed": t[L0 + "mlp.up_proj.weight_packed"].to(torch.int8)}), r"tensor model\.layers\.0\.mlp\.up_proj\.weight_packed: dtype int8"),
        (lambda t, c: t.update({L0 + "mlp.down_proj.weight_tensor_scale": torch.ones(2)}), r"down_proj\.weight_tensor_scale: shape \[2\], expected \[1\]"),
        (lambda t, c: t.update({L0 + "mlp.down_proj.weight_packed": torch.zeros(64, 32, dtype=torch.uint8)}), r"down_proj\.weight_packed: shape \[64, 32\] means a \[64, 64\] weight, but config\.json implies \[64, 128\]"),
        (lambda t, c: c["quantization_config"].update(weight_block=16), r"down_proj\.weight_scale: shape \[64, 4\], expected \[64, 8\]"),
        (lambda t, c: c["quantization_config"].update(format="nvfp8"), r"invalid format='nvfp8'"),
        (lambda t, c: c.pop("quantization_config"), r"weight_packed: packed SharQ tensors but config\.json has no SharQ"),
        (lambda t, c: t.update({L0 + "self_attn.v_proj.weight_tensor_scale": t[L0 + "self_attn.v_proj.weight_tensor_scale"] * 2}), r"self_attn\.qkv_proj\.weight_tensor_scale: the fused shards carry different"),
        (lambda t, c: [t.pop(L0 + "self_attn.o_proj." + s) for s in (PACKED, SCALE, TENSOR_SCALE)] and t.update({L0 + "self_attn.o_proj.weight": torch.zeros(64, 64)}), r"tensor model\.layers\.0\.self_attn\.o_proj\.weight: .* stored in 16 bits but quantization_config does not skip it"),
        (lambda t, c: c["quantization_config"].update(skip_layers=["o_proj"]), r"o_proj\.weight_packed: .*skip_layers skips it"),
        (lambda t, c: [t.pop(L0 + "self_attn.v_proj." + s) for s in (PACKED, SCALE, TENSOR_SCALE)], r"v_proj\.weight_packed is missing"),
        (lambda t, c: t.update({L0 + "self_attn.v_proj.weight_tensor_scale": torch.tensor([-1.0])}), r"v_proj\.weight_tensor_scale: tensor scale \[-1\.0\] is not finite"),
    ],
    ids=["missing", "scale-dtype", "packed-dtype", "ts-shape", "config-shape", "block-mismatch",
         "unknown-format", "no-qconfig", "fused-scales", "unskipped-16bit", "skipped-but-packed",
         "missing-member", "negative-scale"],
)
def test_validate_rejects(tiny, tmp_path, edit, needle):
    _, dst = tiny
    bad = _copy_with(dst, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=needle):
        validate_checkpoint(bad)


def test_corrupt_files(tiny, tmp_path):
    _, dst = tiny
    # truncated shard
    bad = tmp_path / "trunc"
    bad.mkdir()
    (bad / "config.json").write_text((dst / "config.json").read_text())
    shard = next(iter(sorted(dst.glob("*.safetensors"))))
    (bad / "model.safetensors").write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or unreadable"):
        validate_checkpoint(bad)
    # index names a missing shard
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-9.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"model-9.safetensors"):
        validate_checkpoint(bad)
    (bad / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        validate_checkpoint(bad)


def test_pickle_only_refused_without_unpickling(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(llama_config()))
    # a file that would execute code if unpickled: it must never be opened as a pickle
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    with pytest.raises(CheckpointError, match=r"only pickle checkpoints found.*safetensors only"):
        find_weight_files(d)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        find_weight_files(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"no config.json"):
        validate_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights"):
        validate_checkpoint(tmp_path, require_sharq=False)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no quantization_config"):
        validate_checkpoint(tmp_path)


def test_safetensors_headers_only(tiny):
    """The validator reads the headers (plus [1]-element scales), never whole weights: check the
    dtypes it reports against safe_open's."""
    _, dst = tiny
    info = validate_checkpoint(dst)
    f = next(iter(dst.glob("*.safetensors")))
    with safe_open(str(f), framework="pt") as h:
        assert h.get_slice(info.layers[0].prefix + "." + SCALE).get_dtype() == "F8_E4M3"


def test_search_and_block16_checkpoints(tmp_path):
    src = write_checkpoint(tmp_path / "src", llama_config(layers=1))
    opts = SharQOptions(weight_block=16, weight_rounding="search", pattern="dense")
    quantize_checkpoint(src, tmp_path / "dst", opts, progress=False)
    info = validate_checkpoint(tmp_path / "dst")
    assert info.options == opts and all(layer.block == 16 for layer in info.layers)
    t = load_file(str(next((tmp_path / "dst").glob("*.safetensors"))))
    s = load_file(str(src / "model.safetensors"))
    w = torch.cat([s["model.layers.0.mlp.gate_proj.weight"], s["model.layers.0.mlp.up_proj.weight"]])
    online = _online_payload(w, opts)
    codes = torch.cat([t["model.layers.0.mlp.gate_proj.weight_packed"], t["model.layers.0.mlp.up_proj.weight_packed"]])
    scales = torch.cat([t["model.layers.0.mlp.gate_proj.weight_scale"], t["model.layers.0.mlp.up_proj.weight_scale"]])
    assert _eq(codes, online.codes) and _eq(scales, online.block_scales)


def test_float32_source_quantized_in_vllm_dtype(tmp_path):
    """vLLM serves a float32 checkpoint in bfloat16 ('auto'): the payload must come from the
    bf16-rounded weight, as online quantization sees it."""
    cfg = llama_config(layers=1)
    tensors = llama_tensors(cfg, torch.float32)
    src = write_checkpoint(tmp_path / "src", cfg, dtype=torch.float32, tensors=tensors)
    quantize_checkpoint(src, tmp_path / "dst", OPTS, progress=False)
    t = load_file(str(next((tmp_path / "dst").glob("*.safetensors"))))
    w = tensors["model.layers.0.mlp.down_proj.weight"].bfloat16()
    assert _eq(t["model.layers.0.mlp.down_proj.weight_packed"], _online_payload(w, OPTS).codes)
    assert t["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_checkpoint_package_imports_no_vllm() -> None:
    """The format, reading, validation and writing code runs where vLLM is not installed."""
    import subprocess
    import sys

    code = ("import sys, sharq_vllm.checkpoint, sharq_vllm.cli, sharq_vllm.options; "
            "bad = sorted(m for m in sys.modules if m == 'vllm' or m.startswith(('vllm.', 'transformers'))); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
