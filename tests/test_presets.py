"""Presets by name (sharq_vllm.options.PRESETS): the options model, `sharq-vllm quantize --preset`,
and a Hugging Face model id as quantize's source (offline cache, HF_HUB_OFFLINE, unreachable Hub).
The vLLM side (`--quantization sharq-plus`) is tests/vllm_plugin/test_presets_vllm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sharq_vllm.cli import main
from sharq_vllm.options import (
    DEFAULTS,
    PRESET_DOCS,
    PRESETS,
    SharQOptionError,
    SharQOptions,
    preset_defaults,
)

from .tiny_checkpoint import write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PLUS = {"format": "nvfp4", "pattern": "2:4", "weight_block": 16, "weight_rounding": "search-up",
        "act_scale": "token"}


def _values(o: SharQOptions) -> dict[str, object]:
    d = o.to_dict()
    d.pop("quant_method")
    d.pop("skip_layers")
    return d


def test_presets_table() -> None:
    assert list(PRESETS) == ["sharq", "sharq-plus"] and set(PRESET_DOCS) == set(PRESETS)
    assert preset_defaults("sharq") == DEFAULTS
    assert _values(SharQOptions.from_dict({}, preset="sharq-plus")) == PLUS
    for name in PRESETS:  # every preset is a valid configuration that knows its own name
        assert SharQOptions.from_dict({}, preset=name).preset() == name
    with pytest.raises(SharQOptionError, match="unknown preset 'sharq-max'"):
        preset_defaults("sharq-max")


def test_recommended_preset_is_the_accuracy_harness_sharq_plus() -> None:
    """`sharq-plus` is the configuration docs/ACCURACY.md measured under that name: the accuracy
    harness's plugin options for its "sharq-plus" method."""
    from benchmarks.accuracy.vllm_check import PLUGIN_OPTIONS

    assert {**DEFAULTS, **PLUGIN_OPTIONS["sharq-plus"]} == preset_defaults("sharq-plus")
    assert {**DEFAULTS, **PLUGIN_OPTIONS["sharq-nvfp4-4:8-pairs"]} == preset_defaults("sharq")


def test_explicit_values_override_a_preset_one_by_one() -> None:
    o = SharQOptions.from_dict({"format": "mxfp4", "skip_layers": "o_proj"}, preset="sharq-plus")
    assert _values(o) == {**PLUS, "format": "mxfp4"} and o.skip_layers == ("o_proj",)
    assert o.preset() is None  # custom
    # quant_method naming a preset gives its defaults (`--hf-overrides` with "sharq-plus")
    assert _values(SharQOptions.from_dict({"quant_method": "sharq-plus"})) == PLUS
    # plain "sharq" in the dict does not undo the method's preset (`--quantization sharq-plus`)
    assert _values(SharQOptions.from_dict({"quant_method": "sharq"}, preset="sharq-plus")) == PLUS
    assert SharQOptions.from_dict({"quant_method": "sharq"}).preset() == "sharq"
    with pytest.raises(SharQOptionError, match="quant_method='fp8', not one of"):
        SharQOptions.from_dict({"quant_method": "fp8"}, preset="sharq-plus")


def test_quantize_preset_and_flag_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_checkpoint(tmp_path / "src")
    cases = {
        "plus": (["--preset", "sharq-plus"], PLUS),
        "plus-rtn": (["--preset", "sharq-plus", "--weight-rounding", "rtn", "--format", "mxfp4"],
                     {**PLUS, "weight_rounding": "rtn", "format": "mxfp4"}),
        "paper-flags": (["--pattern", "2:4"], {**preset_defaults("sharq"), "pattern": "2:4"}),
    }
    for name, (flags, want) in cases.items():
        dst = tmp_path / name
        assert main(["quantize", str(src), str(dst), "--no-progress", *flags]) == 0
        qc = json.loads((dst / "config.json").read_text())["quantization_config"]
        assert qc["quant_method"] == "sharq" and qc["version"] == 1  # loads under any SharQ name
        assert {k: qc[k] for k in PLUS} == {k: want[k] for k in PLUS}, name
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["quantize", str(src), str(tmp_path / "x"), "--preset", "sharq-max"])
    assert "invalid choice: 'sharq-max'" in capsys.readouterr().err


def test_quantize_shows_bytes_and_layers(tmp_path: Path) -> None:
    """The progress bar (stderr) counts bytes and names the layer it is at: `n/14 layers, ...`."""
    src = write_checkpoint(tmp_path / "src")
    r = subprocess.run(
        [sys.executable, "-m", "sharq_vllm.cli", "quantize", str(src), str(tmp_path / "dst")],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "sharq quantize: 100%" in r.stderr and "14/14 layers, model.layers.1." in r.stderr, r.stderr


def _hub_cli(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess (huggingface_hub reads HF_* at import) with its own HF_HOME."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full.update({"HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT), **env})
    return subprocess.run([sys.executable, "-m", "sharq_vllm.cli", *argv], capture_output=True,
                          text=True, timeout=300, check=False, env=full, cwd=tmp_path)


def test_quantize_hub_id_from_the_offline_cache(tmp_path: Path) -> None:
    """A model id resolves through huggingface_hub's own cache lookup (HF_HUB_OFFLINE=1, a cache
    laid out as the Hub client writes it: refs/main -> snapshots/<commit>/)."""
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_checkpoint(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    r = _hub_cli(tmp_path, "quantize", "acme/tiny-llama", str(tmp_path / "out"), "--preset",
                 "sharq-plus", "--no-progress", HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert "quantized 14 linear layers" in r.stdout
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["weight_block"] == 16 and qc["pattern"] == "2:4"
    assert (tmp_path / "out" / "tokenizer.json").exists()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"),
        # a closed local port: the Hub cannot be reached (no traffic leaves the machine)
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "the Hub (http://127.0.0.1:9) could not be reached"),
    ],
)
def test_quantize_hub_id_without_the_hub_says_why(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    r = _hub_cli(tmp_path, "quantize", "acme/not-cached", str(tmp_path / "out"), **env)
    assert r.returncode == 1, r.stderr
    assert needle in r.stderr and "hf download acme/not-cached" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_quantize_source_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    for src, needle in [("./missing", "no such folder (and not a Hugging Face model id"),
                        (str(tmp_path / "file"), "not a folder")]:
        assert main(["quantize", src, str(tmp_path / "o"), "--no-progress"]) == 1
        assert needle in capsys.readouterr().err
    src = write_checkpoint(tmp_path / "src")
    assert main(["quantize", str(src), str(tmp_path / "o"), "--revision", "main"]) == 1
    assert "--revision applies to Hugging Face model ids" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "quantization", "overrides"),
    [
        ({}, "sharq", None),
        ({"SHARQ_PRESET": "sharq-plus"}, "sharq-plus", None),
        ({"SHARQ_PRESET": "sharq-plus", "SHARQ_OPTIONS": '{"format": "mxfp4"}'}, "sharq-plus",
         {"quant_method": "sharq-plus", "format": "mxfp4"}),
    ],
)
def test_serve_sh_presets(env: dict[str, str], quantization: str, overrides: dict | None) -> None:
    """scripts/serve.sh's vLLM command (SERVE_DRY_RUN=1 prints it instead of running it)."""
    import shlex

    r = _serve_dry_run(env)
    assert r.returncode == 0, r.stderr[-2000:]
    argv = shlex.split(r.stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"], argv
    assert argv[argv.index("--quantization") + 1] == quantization
    if overrides is None:
        assert "--hf-overrides" not in argv
    else:
        assert json.loads(argv[argv.index("--hf-overrides") + 1]) == {"quantization_config": overrides}
    assert argv[-1] == "--enforce-eager"  # extra arguments go to vLLM, last


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SHARQ_PRESET": "sharq-max"}, "[serve] ERROR: SHARQ_PRESET='sharq-max': expected one of"),
        ({"SHARQ_PRESET": "sharq-plus", "SHARQ_OPTIONS": '{"weight_block": 8}'},
         "[serve] ERROR: sharq: invalid weight_block=8"),
    ],
)
def test_serve_sh_refuses_bad_presets_before_vllm(env: dict[str, str], needle: str) -> None:
    r = _serve_dry_run(env)
    assert r.returncode != 0 and needle in r.stderr, r.stderr[-2000:]


def _serve_dry_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    venv = Path(sys.executable).parent.parent
    if not (venv / ".sharq-setup-v1").exists():  # serve.sh would run setup.sh into this venv
        pytest.skip(f"{venv} was not made by scripts/setup.sh")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SHARQ_", "SERVE_"))}
    if "SHARQ_VLLM_CACHE" in os.environ:
        full["SHARQ_VLLM_CACHE"] = os.environ["SHARQ_VLLM_CACHE"]
    full.update({"SHARQ_VENV": str(venv), "SERVE_DRY_RUN": "1", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run(["bash", str(ROOT / "scripts" / "serve.sh"), "--enforce-eager"],
                          capture_output=True, text=True, timeout=600, check=False, env=full)
