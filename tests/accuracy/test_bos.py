"""BOS choice of the accuracy harness (no model run; fast).

`--bos auto` once followed the tokenizer alone; transformers 5.17's GGUF conversion built a
Gemma 3 tokenizer that adds no BOS, and the GPU run measured Gemma 3 without BOS. The choice
must come from the model, not the tokenizer build. (That tokenizer also splits text wrongly:
test_tokenizer_pin.py.)
"""

from __future__ import annotations

import pytest

from benchmarks.accuracy import harness, report


class FakeTok:
    """Just what harness.uses_bos / choose_bos touch."""

    def __init__(self, bos_id: int | None, adds_bos: bool):
        self.bos_token_id = bos_id
        self._adds = adds_bos

    def __call__(self, text, add_special_tokens=True):
        ids = [7]
        if add_special_tokens and self._adds and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return {"input_ids": ids}


@pytest.mark.parametrize("tok_adds", [False, True])
@pytest.mark.parametrize("model,expected", [("gemma3", True), ("smollm2", False), ("qwen2.5-coder", False)])
def test_auto_uses_the_model_table_not_the_tokenizer(model, expected, tok_adds):
    bos, source = harness.choose_bos(model, "auto", FakeTok(2, tok_adds))
    assert bos is expected
    assert source == "harness.MODEL_BOS"


def test_auto_falls_back_to_the_tokenizer_for_unknown_models():
    assert harness.choose_bos("other", "auto", FakeTok(1, True)) == (True, "tokenizer")
    assert harness.choose_bos("other", "auto", FakeTok(1, False)) == (False, "tokenizer")
    assert harness.choose_bos("other", "auto", FakeTok(None, True)) == (False, "tokenizer")


def test_explicit_flag_wins():
    assert harness.choose_bos("gemma3", "no", FakeTok(2, True)) == (False, "--bos no")
    assert harness.choose_bos("qwen2.5-coder", "yes", FakeTok(5, False)) == (True, "--bos yes")


def test_bos_without_a_bos_token_is_an_error():
    with pytest.raises(SystemExit, match="bos_token_id"):
        harness.choose_bos("gemma3", "auto", FakeTok(None, False))


@pytest.mark.parametrize("value", [True, False])
def test_unknown_model_reads_the_gguf_metadata(tmp_path, value):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list(["<s>", "a", "b"])  # a string array before the key, as in real files
    w.add_add_bos_token(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert harness.gguf_add_bos(path) is value
    assert harness.choose_bos("other", "auto", FakeTok(1, not value), path) == (
        value, "GGUF tokenizer.ggml.add_bos_token")
    assert harness.gguf_add_bos(tmp_path / "missing.gguf") is None
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all, really")
    assert harness.gguf_add_bos(tmp_path / "x.gguf") is None


def test_windows_start_with_bos_only_when_chosen():
    class Tok(FakeTok):
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": list(range(10, 10 + len(text)))}

    tok = Tok(2, False)
    with_bos = harness.make_windows("x" * 50, tok, window=8, n_windows=2, bos=True)
    without = harness.make_windows("x" * 50, tok, window=8, n_windows=2, bos=False)
    assert [w[0] for w in with_bos] == [2, 2] and all(len(w) == 8 for w in with_bos)
    assert all(2 not in w and len(w) == 8 for w in without)


@pytest.mark.parametrize("model", sorted(harness.MODEL_BOS))
def test_table_matches_the_pinned_gguf_metadata(model):
    """MODEL_BOS agrees with each pinned GGUF's tokenizer.ggml.add_bos_token (header only).
    SmolLM2 and Gemma 3 are fetched if needed; Qwen2.5-Coder (1.1 GB) only where cached."""
    from sharq_vllm import assets

    asset = assets.MODELS[model]
    if model == "qwen2.5-coder" and not (assets.cache_dir() / "gguf" / asset.gguf_name).exists():
        pytest.skip("qwen2.5-coder's GGUF (1.1 GB) is not in the asset cache")
    assert harness.gguf_add_bos(assets.ensure_gguf(model)) is harness.MODEL_BOS[model]


def test_merge_combines_corpora_and_refuses_mismatched_runs(tmp_path):
    import json

    def run(corpus, sha="abc", bos=False):
        ms = {"bf16": {"ppl": 2.0, "kl": 0.0, "top1": 1.0}, "nvfp4": {"ppl": 3.0, "kl": 0.4, "top1": 0.7}}
        return {"model": "M", "model_key": "m", "weights_sha256": sha, "window": 8, "bos": bos,
                "dtype": "bfloat16", "act_scale": "token", "weight_tensor_scale": "fused", "device": "cuda",
                "device_name": "GPU", "torch": "2", "target_tokens": 10, "corpus": corpus, "tokens": 10,
                "methods": ms, "command": f"harness --corpora {corpus}", "timing_s": {}, "threads": 1,
                "corpora": {corpus: {"tokens": 10, "windows": 1, "info": {"source": corpus}, "methods": ms}}}

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(run("code")))
    b.write_text(json.dumps(run("prose")))
    c.write_text(json.dumps(run("prose", bos=True)))
    res = report.merge([a, b], {"transformers": "5.17.0"}, ["n"])
    assert list(res["corpora"]) == ["code", "prose"] and res["corpus"] == "code"
    assert res["commands"] == {"code": "harness --corpora code", "prose": "harness --corpora prose"}
    assert res["transformers"] == "5.17.0" and res["notes"] == ["n"]
    assert res["targets"] == []  # no SharQ rows in this toy result
    assert "| M | code | 10 | 2.000 | 3.000 |" in report.summary([res])
    with pytest.raises(ValueError, match="bos"):
        report.merge([a, c])
    with pytest.raises(ValueError, match="twice"):
        report.merge([a, a])
