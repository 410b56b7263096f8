"""Reading NVFP4 checkpoints of ModelOpt and llm-compressor (sharq_vllm.checkpoint.nvfp4, no
vLLM): which configs are served and the named reasons for the others, the payload values
against the formats' own definitions, folder validation. Fixtures: tests/fixtures/nvfp4 (real
tool output, README there). Against vLLM's own loaders: tests/vllm_plugin/test_nvfp4_vllm.py."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sharq_vllm.checkpoint import CheckpointError, is_module_skipped, is_prequantized_config
from sharq_vllm.checkpoint.nvfp4 import (
    parse_nvfp4_config,
    read_nvfp4_payloads,
    split_by_tensor_scale,
    validate_nvfp4_checkpoint,
)
from sharq_vllm.options import SharQOptions

FIXTURES = Path(__file__).parent / "fixtures" / "nvfp4"
KINDS = {
    "llmc-nvfp4": ("compressed-tensors", "W4A4"),
    "llmc-nvfp4a16": ("compressed-tensors", "W4A16"),
    "llmc-nvfp4-unfused": ("compressed-tensors", "W4A4"),
    "llmc-nvfp4a16-ignore": ("compressed-tensors", "W4A16"),
    "modelopt-nvfp4": ("modelopt", "W4A4"),
    "modelopt-w4a16": ("modelopt", "W4A16"),
    "modelopt-nvfp4-unfused": ("modelopt", "W4A4"),
}
E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def qconfig(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize("name", list(KINDS))
def test_fixture_configs_parse(name: str) -> None:
    src = parse_nvfp4_config(qconfig(name))
    assert (src.producer, src.scheme) == KINDS[name]
    if src.producer == "modelopt":
        assert (src.packed, src.global_scale, src.input_scale, src.global_is_divisor) == (
            "weight", "weight_scale_2", "input_scale", False)
        assert src.tool == "nvidia-modelopt 0.47.0"
    else:
        assert (src.packed, src.global_scale, src.input_scale, src.global_is_divisor) == (
            "weight_packed", "weight_global_scale", "input_global_scale", True)
        assert src.tool == "compressed-tensors 0.19.0"
    skip = SharQOptions(skip_layers=src.skip_layers)
    assert skip.is_skipped_name("lm_head")
    assert not is_module_skipped(skip, "model.layers.0.self_attn.q_proj")
    assert is_module_skipped(skip, "model.layers.1.mlp.down_proj") == name.endswith("-ignore")


def test_legacy_modelopt_config_as_vllm_passes_it() -> None:
    """A ModelOpt folder with only hf_quant_config.json: vLLM hands the nested dict over with
    quant_method modelopt_fp4; it reads as the flat config.json does."""
    legacy = json.loads((FIXTURES / "modelopt-nvfp4" / "hf_quant_config.json").read_text())
    assert parse_nvfp4_config({**legacy, "quant_method": "modelopt_fp4"}) == parse_nvfp4_config(qconfig("modelopt-nvfp4"))
    legacy16 = json.loads((FIXTURES / "modelopt-w4a16" / "hf_quant_config.json").read_text())
    assert parse_nvfp4_config({**legacy16, "quant_method": "modelopt"}).scheme == "W4A16"


def _ct(**groups_patch: object) -> dict:
    qc = copy.deepcopy(qconfig("llmc-nvfp4"))
    for path, value in groups_patch.items():
        *keys, last = path.split("__")
        d = qc
        for k in keys:
            d = d[k]
        d[last] = value
    return qc


REFUSED = [
    ({**qconfig("modelopt-nvfp4"), "quant_algo": "FP8"}, "quant_algo 'FP8' is not NVFP4 or W4A16_NVFP4"),
    ({"quant_method": "modelopt_fp4", "producer": {"name": "modelopt"},
      "quantization": {"quant_algo": "NVFP4", "group_size": 32, "kv_cache_quant_algo": None, "exclude_modules": []}},
     "weight group_size ['32'], not 16"),
    ({"quant_method": "modelopt_fp4", "producer": {"name": "modelopt"},
      "quantization": {"quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": "FP8", "exclude_modules": []}},
     "it quantizes the KV cache ('FP8')"),
    (_ct(config_groups__group_0__weights__group_size=32), "weights.group_size is 32, not 16 (NVFP4)"),
    (_ct(config_groups__group_0__weights__num_bits=8, config_groups__group_0__format="float-quantized", format="float-quantized"),
     "has format 'float-quantized', not 'nvfp4-pack-quantized'"),
    (_ct(config_groups__group_0__input_activations__num_bits=8), "input_activations.num_bits is 8, not 4"),
    (_ct(config_groups__group_0__targets=["re:.*self_attn.*"]), "target ['re:.*self_attn.*']"),
    (_ct(kv_cache_scheme={"num_bits": 8, "type": "float"}), "it quantizes the KV cache (kv_cache_scheme)"),
    (_ct(sparsity_config={"format": "sparse-24-bitmask"}), "it uses sparsity compression"),
    (_ct(transform_config={"config_groups": {"u": {}}}), "it uses transforms (rotations)"),
    (_ct(quantization_status="frozen"), "quantization_status 'frozen'"),
    (_ct(config_groups__group_0__output_activations={"num_bits": 4}), "quantizes output activations"),
    (_ct(ignore="lm_head"), "ignore / exclude_modules list is not a list of names"),
    ({"quant_method": "gptq", "bits": 4}, "quant_method 'gptq' is not ModelOpt or compressed-tensors"),
]


@pytest.mark.parametrize(("qc", "needle"), REFUSED, ids=[n[:40] for _, n in REFUSED])
def test_unsupported_configs_are_refused_naming_the_reason(qc: dict, needle: str) -> None:
    with pytest.raises(CheckpointError) as e:
        parse_nvfp4_config(qc)
    msg = str(e.value)
    assert msg.startswith("sharq cannot serve this"), msg
    assert needle in msg, msg
    assert "without --quantization" in msg


def test_ignore_lists_keep_each_tools_matching_rule() -> None:
    """compressed-tensors: exact names and `re:` with re.match (anchored at the start);
    ModelOpt: fnmatch wildcards, plain names as substrings (vLLM's rules for each)."""
    ct = SharQOptions(skip_layers=parse_nvfp4_config(_ct(ignore=["re:.*mlp\\.down_proj", "re:mlp", "lm_head"])).skip_layers)
    assert is_module_skipped(ct, "model.layers.1.mlp.down_proj")
    assert not is_module_skipped(ct, "model.layers.1.mlp.gate_proj")  # "re:mlp" must match at the start
    mo_qc = {**qconfig("modelopt-nvfp4"), "ignore": ["layers.0.mlp", "*.o_proj"]}
    mo = SharQOptions(skip_layers=parse_nvfp4_config(mo_qc).skip_layers)
    assert is_module_skipped(mo, "model.layers.0.mlp.gate_proj") and is_module_skipped(mo, "model.layers.0.mlp.up_proj")
    assert is_module_skipped(mo, "model.layers.1.self_attn.o_proj")
    assert not is_module_skipped(mo, "model.layers.1.mlp.down_proj")


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    codes = torch.stack((packed & 0xF, packed >> 4), -1).reshape(packed.shape[0], -1)  # element 2i low
    return E2M1[codes.long()]


@pytest.mark.parametrize("name", list(KINDS))
def test_payloads_are_the_formats_values(name: str) -> None:
    """Every layer's payload dequantizes (SharQ's reference) to e2m1 * (fp32(scale) * t) with
    t = weight_scale_2 (ModelOpt) or fp32(1.0 / weight_global_scale) (compressed-tensors), from
    the raw tensors; and reading the high nibble first would not (the order is checked)."""
    from sharq_vllm.reference import dequantize_weight

    src, payloads = read_nvfp4_payloads(FIXTURES / name)
    raw = load_file(str(FIXTURES / name / "model.safetensors"))
    assert len(payloads) == (12 if name.endswith("-ignore") else 14)
    for prefix, p in payloads.items():
        packed, s, g = (raw[f"{prefix}.{x}"] for x in (src.packed, src.scale, src.global_scale))
        t = (1.0 / g.float()).reshape(1) if src.global_is_divisor else g.float().reshape(1)
        vals = _unpack(packed)
        n, k = vals.shape
        want = (vals.reshape(n, k // 16, 16) * (s.float() * t).unsqueeze(-1)).reshape(n, k)
        got = dequantize_weight(p)
        assert torch.equal(got, want), prefix
        swapped = E2M1[torch.stack((packed >> 4, packed & 0xF), -1).reshape(n, -1).long()]
        assert not torch.equal((swapped.reshape(n, k // 16, 16) * (s.float() * t).unsqueeze(-1)).reshape(n, k), want)


def test_split_by_tensor_scale_joins_equal_members_only() -> None:
    _, shared = read_nvfp4_payloads(FIXTURES / "llmc-nvfp4")
    _, unfused = read_nvfp4_payloads(FIXTURES / "llmc-nvfp4-unfused")
    members = [f"model.layers.0.self_attn.{m}_proj" for m in "qkv"]
    one = split_by_tensor_scale([shared[m] for m in members])
    assert len(one) == 1 and one[0].codes.shape == (128, 32)
    assert torch.equal(one[0].codes, torch.cat([shared[m].codes for m in members]))
    three = split_by_tensor_scale([unfused[m] for m in members])
    assert [p.codes.shape[0] for p in three] == [64, 32, 32]
    assert len({float(p.tensor_scale) for p in three}) == 3


@pytest.mark.parametrize(("name", "per_shard"), [("llmc-nvfp4", 0), ("llmc-nvfp4-unfused", 4), ("modelopt-nvfp4-unfused", 4)])
def test_validation_reports_per_member_scales(name: str, per_shard: int) -> None:
    info = validate_nvfp4_checkpoint(FIXTURES / name)
    assert len(info.layers) == 14
    assert len(info.per_shard) == per_shard


def test_prequantized_config_is_sharq_only() -> None:
    """compressed-tensors configs carry a `version` too; that does not make them SharQ's."""
    assert not is_prequantized_config(qconfig("llmc-nvfp4"))
    assert is_prequantized_config({"quant_method": "sharq", "version": 1})


def _mutated(tmp_path: Path, name: str, edit) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _drop(*names: str):
    def edit(t: dict) -> None:
        for n in names:
            del t[n]
    return edit


L0 = "model.layers.0."
BROKEN = [
    ("llmc-nvfp4", lambda t: t.__setitem__(L0 + "self_attn.o_proj.weight_scale", t[L0 + "self_attn.o_proj.weight_scale"][:, :3].contiguous()),
     "tensor model.layers.0.self_attn.o_proj.weight_scale: float8_e4m3fn [64, 3], expected float8_e4m3fn [64, 4]"),
    ("modelopt-nvfp4", _drop(L0 + "self_attn.k_proj.weight_scale_2"), "tensor model.layers.0.self_attn.k_proj.weight_scale_2 is missing"),
    ("llmc-nvfp4", lambda t: t.__setitem__(L0 + "mlp.down_proj.weight_global_scale", torch.zeros(1)),
     "model.layers.0.mlp.down_proj.weight_global_scale: 0.0 is not a finite positive scale"),
    ("modelopt-nvfp4", lambda t: t.update({"lm_head.weight_scale": t[L0 + "self_attn.o_proj.weight_scale"].clone()}),
     "lm_head is quantized in the checkpoint, but sharq quantizes only the decoder linears"),
    ("llmc-nvfp4", lambda t: (_drop(*(L0 + "self_attn.o_proj." + s for s in ("weight_packed", "weight_scale", "weight_global_scale", "input_global_scale")))(t),
                              t.__setitem__(L0 + "self_attn.o_proj.weight", torch.zeros(64, 64, dtype=torch.bfloat16))),
     "tensor model.layers.0.self_attn.o_proj.weight: model.layers.0.self_attn.o_proj is stored in bfloat16 but the checkpoint's ignore list does not name it"),
    ("modelopt-nvfp4", lambda t: (_drop(*(L0 + "self_attn.v_proj." + s for s in ("weight_scale", "weight_scale_2", "input_scale")))(t),
                                  t.__setitem__(L0 + "self_attn.v_proj.weight", torch.zeros(32, 64, dtype=torch.bfloat16))),
     "ignore list does not name it"),
    ("llmc-nvfp4", lambda t: t.__setitem__(L0 + "mlp.up_proj.weight_packed", t[L0 + "mlp.up_proj.weight_packed"][:, :16].contiguous()),
     "float8_e4m3fn [128, 4], expected float8_e4m3fn [128, 2]"),
]


@pytest.mark.parametrize(("name", "edit", "needle"), BROKEN, ids=[b[2][:50] for b in BROKEN])
def test_broken_folders_fail_validation_naming_the_tensor(tmp_path: Path, name: str, edit, needle: str) -> None:
    with pytest.raises(CheckpointError) as e:
        validate_nvfp4_checkpoint(_mutated(tmp_path, name, edit))
    assert needle in str(e.value), str(e.value)
