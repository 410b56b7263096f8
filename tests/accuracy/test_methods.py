import torch

from benchmarks.accuracy.methods import METHODS, WEIGHT_SCREEN, WEIGHTS
from tests.conftest import heavy_tailed


def test_screen_row_that_became_search_up_is_search_up():
    """The screen's 'rtn-up6' row chose the plugin's weight_rounding=search-up: same weights."""
    torch.manual_seed(3)
    w = heavy_tailed(48, 160)
    amax = w.abs().amax() * 1.5  # a fused group's amax, larger than this linear's
    screen = WEIGHTS["w16-rtn-up6"](w, tensor_amax=amax)
    plugin = WEIGHTS["sharq-w16-search-up"](w, tensor_amax=amax)
    assert torch.equal(screen, plugin)
    # and the others differ from it (they are different candidates)
    assert not torch.equal(WEIGHTS["w16-up6"](w, tensor_amax=amax), plugin)


def test_every_screen_row_is_a_w4a16_method():
    for k in WEIGHT_SCREEN:
        m = METHODS[f"w4a16-w16-{k}"]
        assert m.act == "16bit" and m.weight in WEIGHTS


def test_nvfp4_checkpoint_rows_use_the_checkpoint_weights_as_stored():
    """The "NVFP4 checkpoint + SharQ activations" rows take each linear's weight from the real
    tool's checkpoint (per member, exact), not from the 16-bit model."""
    from pathlib import Path

    import pytest
    from transformers import AutoConfig, LlamaForCausalLM

    from benchmarks.accuracy import methods
    from sharq_vllm.checkpoint.nvfp4 import read_nvfp4_payloads
    from sharq_vllm.reference import dequantize_weight

    folder = Path(__file__).parents[1] / "fixtures" / "nvfp4" / "llmc-nvfp4-unfused"
    config = AutoConfig.from_pretrained(folder)
    config.quantization_config = None
    model = LlamaForCausalLM(config)
    state, layers = methods.install(model)
    with pytest.raises(SystemExit, match="need --nvfp4-checkpoint ct=DIR"):
        layers[0].weight_for("ckpt:ct")
    try:
        assert "compressed-tensors" in methods.load_checkpoint_weights("ct", str(folder))
        _, payloads = read_nvfp4_payloads(folder)
        for layer in layers:
            assert torch.equal(layer.weight_for("ckpt:ct"), dequantize_weight(payloads[layer.name])), layer.name
        m = METHODS["nvfp4ckpt-ct+sharq"]
        assert (m.weight, m.act) == ("ckpt:ct", "sharq-nvfp4-4:8-pairs")
        assert METHODS["nvfp4ckpt-ct+sharq-2:4"].act == "sharq-nvfp4-2:4"
        state.set("nvfp4ckpt-ct+sharq")
        assert torch.isfinite(model(torch.tensor([[1, 5, 9, 20]])).logits).all()
    finally:
        methods.CHECKPOINT_WEIGHTS.pop("ct", None)
