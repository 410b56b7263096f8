"""Option parsing and validation (no vLLM needed), the values and rules the options take from the
numerics modules, and the format/pattern codes shared with the CUDA kernels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sharq_vllm.options import DEFAULTS, SharQOptionError, SharQOptions


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


def test_allowed_values_come_from_the_numerics_modules() -> None:
    from sharq_vllm import formats, masks, options, reference

    assert options.FORMATS == tuple(formats.ACTIVATION_FORMATS)
    assert options.PATTERNS == masks.PATTERNS
    assert options.WEIGHT_BLOCKS == tuple(formats.WEIGHT_FORMATS)
    assert options.WEIGHT_ROUNDINGS == reference.WEIGHT_ROUNDINGS == ("rtn", *formats.SCALE_SEARCHES)
    assert options.ACT_SCALES == reference.ACT_SCALES
    assert set(options.FORMAT_CODES) == set(options.FORMATS)
    assert set(options.PATTERN_CODES) == set(options.PATTERNS)


def test_derived_blocks() -> None:
    for fmt, base in (("nvfp4", 16), ("mxfp4", 32)):
        for pattern in ("4:8-pairs", "2:4", "dense"):
            o = SharQOptions(format=fmt, pattern=pattern)
            assert o.activation_block == base
            assert o.backbone_block == (base if pattern == "dense" else 2 * base)


def _header_enum(text: str, name: str) -> dict[str, int]:
    m = re.search(rf"enum {name} : int \{{([^}}]*)\}};", text)
    assert m, f"enum {name} not found in sharq_vllm/csrc/sharq_kernels.h"
    out = {}
    for item in m.group(1).split(","):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value)
    return out


def test_kernel_codes_match_the_cuda_header() -> None:
    """sharq_vllm.options mirrors sharq::Format / sharq::Pattern of sharq_vllm/csrc/sharq_kernels.h (the one
    definition): same names (kTwoOfFour <-> TWO_OF_FOUR) and values."""
    from sharq_vllm.options import FormatCode, PatternCode

    header = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "sharq_kernels.h").read_text()
    for cpp, py in (("Format", FormatCode), ("Pattern", PatternCode)):
        want = {k.removeprefix("k").upper(): v for k, v in _header_enum(header, cpp).items()}
        assert {e.name.replace("_", ""): int(e) for e in py} == want, cpp


def test_gemm_variants_match_the_cuda_header() -> None:
    """kernels.dispatch.GEMM_VARIANTS mirrors sharq::GemmVariant (kGemmStream <-> "stream")."""
    from sharq_vllm.kernels.dispatch import GEMM_VARIANTS

    header = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "sharq_kernels.h").read_text()
    want = {k.removeprefix("kGemm").lower(): v for k, v in _header_enum(header, "GemmVariant").items()}
    assert GEMM_VARIANTS == want


def test_gemm_auto_bounds_match_the_cuda_header() -> None:
    """kernels.dispatch.GEMM_AUTO_MAX_M mirrors sharq::GemmAutoMaxM (kGemmStreamWideMaxM <-> "streamwide"),
    GEMM_STREAM_MAX_ROUNDS sharq::kGemmStreamMaxRounds, GEMM_DEC_TILE_ROWS sharq::kGemmDecTileRows."""
    from sharq_vllm.kernels.dispatch import (
        GEMM_AUTO_MAX_M,
        GEMM_DEC_TILE_ROWS,
        GEMM_STREAM_CTAS_PER_SM,
        GEMM_STREAM_MAX_ROUNDS,
    )

    header = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "sharq_kernels.h").read_text()
    got = _header_enum(header, "GemmAutoMaxM")
    assert GEMM_AUTO_MAX_M == {k.removeprefix("kGemm").removesuffix("MaxM").lower(): v for k, v in got.items()}
    rounds = re.search(r"constexpr int kGemmStreamMaxRounds = (\d+);", header)
    assert rounds is not None and int(rounds.group(1)) == GEMM_STREAM_MAX_ROUNDS
    tile = re.search(r"constexpr int kGemmDecTileRows = (\d+);", header)
    assert tile is not None and int(tile.group(1)) == GEMM_DEC_TILE_ROWS
    ctas = re.search(r"constexpr int kGemmStreamCtasPerSm = (\d+);", header)
    assert ctas is not None and int(ctas.group(1)) == GEMM_STREAM_CTAS_PER_SM
    gemm = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "gemm.cu").read_text()
    assert "constexpr int kStreamCtasPerSm = kGemmStreamCtasPerSm;" in gemm  # the kernel's own, defined once


def test_gemm_variant_limits_match_the_cuda_header() -> None:
    """kernels.dispatch.GEMM_VARIANT_MAX_M mirrors sharq::GemmVariantMaxM (kGemmStreamLimitM <-> "stream")."""
    from sharq_vllm.kernels.dispatch import GEMM_VARIANT_MAX_M

    header = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "sharq_kernels.h").read_text()
    got = _header_enum(header, "GemmVariantMaxM")
    assert GEMM_VARIANT_MAX_M == {k.removeprefix("kGemm").removesuffix("LimitM").lower(): v for k, v in got.items()}


def test_xhat_fragment_limits_match_the_cuda_header() -> None:
    """kernels.dispatch.XHAT_FRAGMENT_LIMITS mirrors sharq::XhatFragment: none, the rows where every
    layer takes the stream kernel, and the stream kernel's own bound."""
    from sharq_vllm.kernels.dispatch import GEMM_AUTO_MAX_M, XHAT_FRAGMENT_LIMITS

    header = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "sharq_kernels.h").read_text()
    assert tuple(sorted(_header_enum(header, "XhatFragment").values())) == XHAT_FRAGMENT_LIMITS
    assert XHAT_FRAGMENT_LIMITS == (0, GEMM_AUTO_MAX_M["streamwide"], GEMM_AUTO_MAX_M["stream"])


def test_deprecated_plugin_location_reexports() -> None:
    import sharq_vllm.options as new
    import sharq_vllm.vllm_plugin.options as old

    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name


def test_prep_norm_bound_matches_the_cuda_header() -> None:
    """kernels.dispatch.PREP_NORM_MAX_K mirrors sharq::kPrepNormMaxK (one CTA a row holds it)."""
    from sharq_vllm.kernels.dispatch import PREP_NORM_MAX_K

    header = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "sharq_kernels.h").read_text()
    m = re.search(r"constexpr int kPrepNormMaxK = (\d+) \* (\d+);", header)
    assert m is not None and int(m.group(1)) * int(m.group(2)) == PREP_NORM_MAX_K


def test_prep_cta_bounds_match_the_cuda_header() -> None:
    """kernels.dispatch.PREP_MAX_THREADS mirrors sharq::kPrepMaxThreads (V = 1, 2, 4, 8)."""
    from sharq_vllm.kernels.dispatch import PREP_MAX_THREADS

    header = (Path(__file__).resolve().parents[1] / "sharq_vllm" / "csrc" / "sharq_kernels.h").read_text()
    m = re.search(r"constexpr int kPrepMaxThreads\[4\] = \{(\d+), (\d+), (\d+), (\d+)\};", header)
    assert m is not None
    assert dict(zip((1, 2, 4, 8), map(int, m.groups()), strict=True)) == PREP_MAX_THREADS
