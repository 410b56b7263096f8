"""layers.py's attribution: its "all" group (the method on every linear) must reproduce the
harness's numbers on the same windows, and its sums must not depend on the batching."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")

if os.environ.get("SHARQ_ACC_SLICE", "1") == "0":
    pytest.skip("SHARQ_ACC_SLICE=0", allow_module_level=True)

import torch

from benchmarks.accuracy import corpora, harness, layers
from benchmarks.accuracy.methods import install

ARGS = [  # 3 windows of 64 tokens (189 scored)
    "--model", "smollm2", "--corpora", "prose", "--tokens", "189", "--window", "64",
    "--methods", "bf16,w4a16-w16-search-up", "--device", "cpu", "--dtype", "float32"]


def test_attribution_all_group_is_the_harness_result():
    args = harness.parser().parse_args(ARGS)
    args.threads, args.state = 2, None
    want = harness.run(args)["corpora"]["prose"]["methods"]["w4a16-w16-search-up"]

    model, tok, _ = harness.load_model(harness.resolve_model_dir("smollm2", None), torch.float32, "cpu")
    state, linears = install(model)
    wins = harness.make_windows(corpora.load_text("prose"), tok, 64, 3, bos=False)
    ids = torch.tensor(wins)
    one = layers.kl_attribution(model, linears, state, ids, ["w4a16-w16-search-up"], batch=1)
    two = layers.kl_attribution(model, linears, state, ids, ["w4a16-w16-search-up"], batch=2)
    got = one["w4a16-w16-search-up"]
    for key in ("ppl", "kl", "top1"):
        assert got["all"][key] == pytest.approx(want[key], rel=1e-4, abs=1e-6)
        assert two["w4a16-w16-search-up"]["all"][key] == pytest.approx(got["all"][key], rel=1e-4, abs=1e-6)
    # one linear type alone costs less than all of them
    assert 0 < got["type:down_proj"]["kl"] < got["all"]["kl"]
