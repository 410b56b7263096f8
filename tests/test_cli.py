"""`sharq-vllm quantize` / `inspect` end to end on tiny random Llama-shaped checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sharq_vllm.checkpoint import validate_checkpoint
from sharq_vllm.cli import main, parse_size

from .tiny_checkpoint import llama_config, write_checkpoint


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_quantize_then_inspect(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "src", shards=2)
    dst = tmp_path / "out" / "sharq"
    assert run("quantize", src, dst, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "quantized 14 linear layers (0 vLLM layers left 16-bit)" in out
    assert "size on disk:" in out and "serve: vllm serve" in out
    # folder layout
    names = sorted(p.name for p in dst.iterdir())
    assert names == [
        "README.md",  # the usage note (checkpoint/readme.py)
        "config.json",
        "generation_config.json",
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not list(tmp_path.glob("out/.*partial*"))
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"] == {
        "quant_method": "sharq",
        "format": "nvfp4",
        "pattern": "4:8-pairs",
        "skip_layers": [],
        "weight_block": 32,
        "weight_rounding": "rtn",
        "act_scale": "token",
        "version": 1,
    }
    assert cfg["hidden_size"] == 64  # the rest of config.json is kept
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(load_file(str(dst / "model-00001-of-00001.safetensors")))
    assert (dst / "model-00001-of-00001.safetensors").stat().st_mode & 0o044 == 0o044  # readable by others

    assert run("inspect", dst) == 0
    out = capsys.readouterr().out
    assert "method: sharq (checkpoint version 1)  valid" in out
    assert "format=nvfp4 pattern=4:8-pairs weight_block=32" in out
    assert "q_proj" in out and "[64, 64]" in out and "4.258" in out
    assert "quantized: 14 layers" in out

    assert run("inspect", dst, "--layers") == 0
    assert "model.layers.1.mlp.down_proj" in capsys.readouterr().out

    assert run("inspect", dst, "--json") == 0
    js = json.loads(capsys.readouterr().out)
    assert js["quantized_layers"] == 14 and js["quantization_config"]["quant_method"] == "sharq"
    assert js["layers"][0]["shape"] == [64, 128]  # natural order: layers.0.mlp.down_proj first

    assert run("inspect", src) == 0
    assert "method: none" in capsys.readouterr().out


def test_options_skip_and_shards(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "src", llama_config(layers=3))
    dst = tmp_path / "dst"
    rc = run(
        "quantize", src, dst, "--no-progress", "--format", "mxfp4", "--pattern", "2:4",
        "--weight-block", "16", "--weight-rounding", "search", "--act-scale", "tensor",
        "--skip", r"layers\.0\.", "--skip", r"down_proj$", "--max-shard-size", "20KB",
    )
    assert rc == 0, capsys.readouterr().err
    # layer 0: qkv_proj, o_proj, gate_up_proj, down_proj; layers 1, 2: down_proj
    assert "quantized 12 linear layers (6 vLLM layers left 16-bit)" in capsys.readouterr().out
    info = validate_checkpoint(dst)
    assert info.options is not None
    assert info.options.skip_layers == ("re:layers\\.0\\.", "re:down_proj$")
    assert (info.options.format, info.options.pattern, info.options.weight_block) == ("mxfp4", "2:4", 16)
    assert len(info.layers) == 2 * 6
    assert not any("layers.0." in layer.prefix or "down_proj" in layer.prefix for layer in info.layers)
    shards = sorted(dst.glob("*.safetensors"))
    assert len(shards) > 1 and shards[-1].name.endswith(f"-of-{len(shards):05d}.safetensors")
    t = {}
    for f in shards:
        t.update(load_file(str(f)))
    assert t["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert t["model.layers.2.mlp.down_proj.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--skip", r"\.q_proj$"], r"qkv_proj: skip_layers matches \['q_proj'\] but not \['k_proj', 'v_proj'\]"),
        (["--skip", "*.layers.0.*"], r"--skip '\*\.layers\.0\.\*' is not a valid regular expression"),
    ],
)
def test_bad_skip(tmp_path, capsys, args, needle):
    import re

    src = write_checkpoint(tmp_path / "src", llama_config(layers=1))
    assert run("quantize", src, tmp_path / "dst", "--no-progress", *args) == 1
    assert re.search(needle, capsys.readouterr().err)
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize(
    ("regex", "left_16bit"),
    [
        (r"layers\.0\.self_attn\.qkv_proj$", 3),  # the fused vLLM name skips q, k and v
        (r"\.(q|k|v)_proj$", 3),  # all members
        (r"v_proj", 3),  # re.search also matches "qkv_proj" itself, as in the plugin: whole group
        (r"gate_up_proj", 2),
        (r"\.down_proj$", 1),
    ],
)
def test_skip_follows_plugin_fused_rules(tmp_path, capsys, regex, left_16bit):
    src = write_checkpoint(tmp_path / "src", llama_config(layers=1))
    assert run("quantize", src, tmp_path / "dst", "--no-progress", "--skip", regex) == 0, capsys.readouterr().err
    assert "(1 vLLM layers left 16-bit)" in capsys.readouterr().out
    info = validate_checkpoint(tmp_path / "dst")
    assert len(info.layers) == 7 - left_16bit


def test_unsupported_dims(tmp_path, capsys):
    # intermediate 80: down_proj K=80 is not a multiple of 32 (gate/up have K=64: fine)
    src = write_checkpoint(tmp_path / "src", llama_config(inter=80, layers=1))
    assert run("quantize", src, tmp_path / "dst", "--no-progress") == 1
    err = capsys.readouterr().err
    assert "tensor model.layers.0.mlp.down_proj.weight: input dim 80 is not a multiple of 32" in err
    assert r"--skip 'layers\.0\.mlp\.down_proj$'" in err
    assert run("quantize", src, tmp_path / "dst", "--no-progress", "--skip", r"layers\.0\.mlp\.down_proj$") == 0
    # MXFP4 with a sparse backbone needs K % 64: hidden 96 fails for q_proj
    src2 = write_checkpoint(tmp_path / "src2", llama_config(hidden=96, heads=3, kv_heads=1, layers=1))
    assert run("quantize", src2, tmp_path / "dst2", "--no-progress", "--format", "mxfp4") == 1
    assert "input dim 96 is not a multiple of 64" in capsys.readouterr().err


def test_refusals(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "src", llama_config(layers=1))
    # not a directory / no config / no weights
    assert run("quantize", tmp_path / "missing", tmp_path / "d1", "--no-progress") == 1
    assert "missing: no such folder (and not a Hugging Face model id" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert run("inspect", empty) == 1
    assert "no *.safetensors weights (not a checkpoint folder)" in capsys.readouterr().err
    # pickle only: refused, never unpickled
    pk = tmp_path / "pickle"
    pk.mkdir()
    shutil.copy(src / "config.json", pk / "config.json")
    (pk / "pytorch_model.bin").write_bytes(b"not really a pickle")
    assert run("quantize", pk, tmp_path / "d2", "--no-progress") == 1
    assert "only pickle checkpoints found (pytorch_model.bin)" in capsys.readouterr().err
    # already quantized
    dst = tmp_path / "dst"
    assert run("quantize", src, dst, "--no-progress") == 0
    capsys.readouterr()
    assert run("quantize", dst, tmp_path / "d3", "--no-progress") == 1
    assert "already quantized (quant_method='sharq')" in capsys.readouterr().err
    # non-empty destination needs --overwrite
    assert run("quantize", src, dst, "--no-progress") == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert run("quantize", src, dst, "--no-progress", "--overwrite") == 0
    # destination inside the source
    assert run("quantize", src, src / "q", "--no-progress") == 1
    assert "outside the source" in capsys.readouterr().err
    # MoE refused
    moe = write_checkpoint(tmp_path / "moe", llama_config(layers=1))
    from safetensors.torch import save_file

    t = load_file(str(moe / "model.safetensors"))
    t["model.layers.0.mlp.experts.0.down_proj.weight"] = torch.zeros(64, 128, dtype=torch.bfloat16)
    save_file(t, str(moe / "model.safetensors"))
    assert run("quantize", moe, tmp_path / "d4", "--no-progress") == 1
    assert "mixture-of-experts" in capsys.readouterr().err


def test_inspect_reports_corruption(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "src", llama_config(layers=1))
    dst = tmp_path / "dst"
    assert run("quantize", src, dst, "--no-progress") == 0
    capsys.readouterr()
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"]["format"] = "fp6"
    (dst / "config.json").write_text(json.dumps(cfg))
    assert run("inspect", dst) == 1
    err = capsys.readouterr().err
    assert "sharq-vllm inspect: error:" in err and "invalid format='fp6'" in err


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("1GiB") == 2**30
    assert parse_size("500mb") == 500 * 10**6
    assert parse_size("123") == 123
    with pytest.raises(Exception, match="invalid size"):
        parse_size("lots")


def test_console_entry_point_module(tmp_path):
    """`python -m sharq_vllm.cli` works (the console script `sharq-vllm` calls the same main)."""
    r = subprocess.run(
        [sys.executable, "-m", "sharq_vllm.cli", "quantize", "--help"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and "--weight-rounding" in r.stdout and "--skip" in r.stdout


def test_output_config_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    src = write_checkpoint(tmp_path / "src", llama_config(layers=1))
    assert run("quantize", src, tmp_path / "dst", "--no-progress") == 0
    cfg = transformers.AutoConfig.from_pretrained(str(tmp_path / "dst"))
    qc = cfg.quantization_config
    assert (qc if isinstance(qc, dict) else qc.to_dict())["quant_method"] == "sharq"


def test_output_config_parses_in_vllm_plugin(tmp_path):
    """When the plugin's SharQConfig exists, it accepts the quantization_config we write."""
    pytest.importorskip("vllm")
    try:
        from sharq_vllm.vllm_plugin.config import SharQConfig  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("sharq_vllm.vllm_plugin.config.SharQConfig not available")
    src = write_checkpoint(tmp_path / "src", llama_config(layers=1))
    assert run("quantize", src, tmp_path / "dst", "--no-progress", "--pattern", "dense") == 0
    qc = json.loads((tmp_path / "dst" / "config.json").read_text())["quantization_config"]
    cfg = SharQConfig.from_config(qc)
    assert cfg.get_name() == "sharq"


def test_version(capsys):
    import sharq_vllm

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"sharq-vllm {sharq_vllm.__version__}\n"
    exe = shutil.which("sharq-vllm")
    if exe is None:  # the console script exists where the package is installed (scripts/setup.sh)
        pytest.skip("no sharq-vllm console script on PATH")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout) == (0, f"sharq-vllm {sharq_vllm.__version__}\n")


def test_every_option_has_help_text():
    """Every argument of every subcommand documents itself; the SharQ options reuse the
    plugin's OPTION_DOCS (one definition)."""
    import argparse

    from sharq_vllm.cli import _build_parser
    from sharq_vllm.options import OPTION_DOCS

    parser = _build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == {"quantize", "inspect", "fetch-model"}
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 10, label
    quantize = subs.choices["quantize"]
    text = " ".join(quantize.format_help().split())
    for key in ("format", "pattern", "weight_block", "weight_rounding", "act_scale"):
        action = next(a for a in quantize._actions if a.dest == key)
        assert action.help.startswith(OPTION_DOCS[key]), key
        assert " ".join(OPTION_DOCS[key].split()) in text, key


def test_fetch_model_lists_and_names_without_fetching(capsys):
    """`sharq-vllm fetch-model` (what scripts/serve.sh runs; = python -m sharq_vllm.assets)."""
    from sharq_vllm.assets import MODELS

    assert main(["fetch-model", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing and a.served_name in listing for name, a in MODELS.items())
    for name, asset in MODELS.items():
        assert main(["fetch-model", name, "--served-name"]) == 0
        assert capsys.readouterr().out.strip() == asset.served_name
    r = subprocess.run([sys.executable, "-m", "sharq_vllm.assets", "smollm2", "--served-name"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == MODELS["smollm2"].served_name, r.stderr
    with pytest.raises(SystemExit):
        main(["fetch-model", "no-such-model"])
