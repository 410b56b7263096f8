"""The accuracy harness refuses a tokenizer that splits a corpus differently from the pinned
one. Found on the H100 machine: transformers 5.17's GGUF conversion of the Gemma 3 tokenizer
gives 136,072 ids for the first 300k characters of the code corpus where the pinned one
(transformers 5.19, sharq_vllm.assets) gives 101,533, and perplexity ~150 instead of ~6."""

from __future__ import annotations

import pytest

from benchmarks.accuracy import corpora, harness
from sharq_vllm import assets


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(assets.ensure_model("smollm2")))


@pytest.mark.parametrize("corpus", ["code", "prose"])
def test_the_asset_tokenizer_matches_its_pin(smollm2_tokenizer, corpus):
    text = corpora.load_text(corpus)
    assert harness.tokenizer_fingerprint(smollm2_tokenizer, text) == harness.TOKENIZER_PINS[("smollm2", corpus)]
    harness.check_tokenizer("smollm2", corpus, smollm2_tokenizer, text)  # no exit


def test_a_different_split_is_refused(smollm2_tokenizer):
    text = corpora.load_text("code")
    with pytest.raises(SystemExit, match="splits the code corpus differently"):
        harness.check_tokenizer("qwen2.5-coder", "code", smollm2_tokenizer, text)  # SmolLM2's ids under Qwen's pin


def test_models_without_a_pin_are_not_checked(smollm2_tokenizer):
    harness.check_tokenizer("some-other-model", "code", smollm2_tokenizer, "anything")
