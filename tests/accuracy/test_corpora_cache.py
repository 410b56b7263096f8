"""The corpora cache is keyed by what built the text (builder version, package file sha256,
pinned text sha256); a build or a cached text that differs from the pinned text sha256 is
never used."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from benchmarks.accuracy import corpora


def test_fingerprint_covers_every_input(monkeypatch):
    base = corpora.build_fingerprint("code")
    assert base in corpora.corpus_text_path("code").name
    code = corpora.CORPORA["code"]
    others = set()
    for change in ({"sha256": "0" * 64}, {"text_sha256": "1" * 64}):
        monkeypatch.setitem(corpora.CORPORA, "code", dataclasses.replace(code, **change))
        others.add(corpora.build_fingerprint("code"))
    monkeypatch.setitem(corpora.CORPORA, "code", code)
    monkeypatch.setattr(corpora, "BUILDER_VERSION", "999")
    others.add(corpora.build_fingerprint("code"))
    assert base not in others and len(others) == 3


def test_a_clean_cache_builds_the_pinned_text_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch):
    """Into an empty cache: fetch Django 5.1.4, build, check the text sha256 pin; a cached text
    that no longer has the pinned sha256 is built again."""
    monkeypatch.setenv("SHARQ_VLLM_CACHE", str(tmp_path))
    path = corpora.ensure_corpus("code")
    assert path == corpora.corpus_text_path("code") and path.parent == tmp_path / "corpora"
    pin = corpora.CORPORA["code"].text_sha256
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin
    assert corpora.corpus_info("code")["build_fingerprint"] == corpora.build_fingerprint("code")
    path.write_text("left by something else\n")
    assert corpora.ensure_corpus("code") == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin


def test_a_build_that_differs_from_the_pin_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARQ_VLLM_CACHE", str(tmp_path))
    monkeypatch.setitem(corpora._BUILDERS, "code", lambda archive: "other text\n")
    with pytest.raises(ValueError, match="!= pinned"):
        corpora.ensure_corpus("code")
    assert not corpora.corpus_text_path("code").exists()
