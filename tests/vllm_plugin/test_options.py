"""Option parsing and validation (no vLLM needed)."""

from __future__ import annotations

import pytest

from sharq_vllm.vllm_plugin.options import DEFAULTS, SharQOptionError, SharQOptions


def test_defaults_are_the_paper_configuration() -> None:
    o = SharQOptions.from_dict(None)
    assert (o.format, o.pattern, o.weight_block, o.weight_rounding, o.act_scale) == (
        "nvfp4", "4:8-pairs", 32, "rtn", "token",
    )
    assert o.skip_layers == ()
    assert SharQOptions.from_dict({"quant_method": "sharq"}) == o
    assert set(o.to_dict()) == {"quant_method", *DEFAULTS}


def test_all_valid_values_round_trip() -> None:
    cfg = {"quant_method": "sharq", "format": "MXFP4", "pattern": "2:4", "weight_block": "16",
           "weight_rounding": "search", "act_scale": "tensor", "skip_layers": "o_proj, down_proj"}
    o = SharQOptions.from_dict(cfg)
    assert o.format == "mxfp4" and o.weight_block == 16 and o.skip_layers == ("o_proj", "down_proj")
    assert SharQOptions.from_dict(o.to_dict()) == o


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"format": "fp8"}, "invalid format='fp8'"),
        ({"pattern": "1:4"}, "invalid pattern='1:4'"),
        ({"weight_block": 64}, "invalid weight_block=64"),
        ({"weight_block": True}, "invalid weight_block=True"),
        ({"weight_rounding": "gptq"}, "invalid weight_rounding='gptq'"),
        ({"act_scale": "channel"}, "invalid act_scale='channel'"),
        ({"skip_layers": 3}, "invalid skip_layers=3"),
        ({"skip_layers": ["re:("]}, "not a valid regex"),
        ({"formt": "nvfp4"}, "unknown option(s) ['formt']"),
        ({"quant_method": "fp8"}, "quant_method='fp8'"),
    ],
)
def test_invalid_values_name_the_problem(cfg: dict[str, object], needle: str) -> None:
    with pytest.raises(SharQOptionError) as ei:
        SharQOptions.from_dict(cfg)
    assert needle in str(ei.value)
    assert str(ei.value).startswith("sharq:")


def test_required_k_multiple_matches_reference() -> None:
    from sharq_vllm import reference

    for fmt in ("nvfp4", "mxfp4"):
        for pattern in ("4:8-pairs", "2:4", "dense"):
            for wb in (32, 16):
                o = SharQOptions(format=fmt, pattern=pattern, weight_block=wb)
                assert o.required_k_multiple == max(reference.required_multiple(fmt, pattern), wb)


def test_skip_layer_matching() -> None:
    o = SharQOptions.from_dict({"skip_layers": ["o_proj", "layers.0.mlp.down_proj", "*.layers.1.*", "re:layers\\.2\\."]})
    assert o.is_skipped_name("model.layers.5.self_attn.o_proj")
    assert not o.is_skipped_name("model.layers.5.self_attn.o_proj_extra")
    assert o.is_skipped_name("model.layers.0.mlp.down_proj")
    assert not o.is_skipped_name("model.layers.10.mlp.down_proj")
    assert o.is_skipped_name("model.layers.1.mlp.up_proj")
    assert o.is_skipped_name("model.layers.2.self_attn.q_proj")
    assert not o.is_skipped_name("model.layers.3.self_attn.q_proj")
