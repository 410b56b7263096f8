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
