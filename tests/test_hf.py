"""transformers loading a SharQ checkpoint (sharq_vllm.hf): with ``import sharq_vllm.hf`` the
model is the reference model (every quantized linear == reference.dequantize_weight of its
payload, the rest unchanged); a malformed payload raises; without the import transformers 5.19
loads random weights with only a warning (the documented limitation: docs/CHECKPOINTS.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")

from sharq_vllm.checkpoint import SafetensorsCheckpoint, payload_from_tensors, quantize_checkpoint
from sharq_vllm.options import SharQOptions
from sharq_vllm.reference import dequantize_weight

from .tiny_checkpoint import llama_config, write_checkpoint

ROOT = Path(__file__).parents[1]
PRESETS = {
    "default": SharQOptions(skip_layers=("re:layers\\.1\\.mlp\\.",)),
    "plus": SharQOptions(pattern="2:4", weight_block=16, weight_rounding="search-up"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    src = write_checkpoint(root / "src", llama_config(hidden=64, inter=128, heads=2, kv_heads=1), extra_files=False)
    out = {"src": src}
    for name, options in PRESETS.items():
        out[name] = root / name
        quantize_checkpoint(src, out[name], options, progress=False)
    return out


def _load(path: Path, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    import sharq_vllm.hf  # noqa: F401

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loads_the_reference_model(checkpoints: dict[str, Path], preset: str, dtype: torch.dtype) -> None:
    model = _load(checkpoints[preset], dtype)
    ckpt = SafetensorsCheckpoint(checkpoints[preset])
    src = load_file(str(checkpoints["src"] / "model.safetensors"))
    names = set(ckpt.names())
    quantized = skipped = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        if f"{name}.weight_packed" in names:
            p = payload_from_tensors(*(ckpt.get(f"{name}.{s}") for s in ("weight_packed", "weight_scale", "weight_tensor_scale")))
            assert torch.equal(mod.weight.data, dequantize_weight(p).to(dtype)), name
            quantized += 1
        else:
            assert torch.equal(mod.weight.data, src[f"{name}.weight"].to(dtype)), name
            skipped += 1
    assert (quantized, skipped) == ((11, 4) if preset == "default" else (14, 1))  # lm_head is 16-bit
    assert torch.equal(model.model.embed_tokens.weight.data, src["model.embed_tokens.weight"].to(dtype))
    assert not model.is_quantized and getattr(model.config, "quantization_config", None) is None
    assert torch.isfinite(model(torch.tensor([[1, 5, 7, 9]])).logits).all()


def _broken(checkpoints: dict[str, Path], tmp_path: Path, edit, config_edit=None) -> Path:  # type: ignore[no-untyped-def]
    dst = tmp_path / "broken"
    shutil.copytree(checkpoints["default"], dst)
    (f,) = dst.glob("*.safetensors")
    t = load_file(str(f))
    edit(t)
    save_file(t, str(f), metadata={"format": "pt"})
    index = dst / "model.safetensors.index.json"
    wm = json.loads(index.read_text())
    wm["weight_map"] = {k: v for k, v in wm["weight_map"].items() if k in t}
    index.write_text(json.dumps(wm))
    if config_edit is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


Q3 = "model.layers.0.self_attn.k_proj"
BROKEN = {
    "truncated scale": (lambda t: t.__setitem__(f"{Q3}.weight_scale", t[f"{Q3}.weight_scale"][:, :1].contiguous()), None,
                        "tensor model.layers.0.self_attn.k_proj.weight_scale: shape [32, 1], expected [32, 2]"),
    "no tensor scale": (lambda t: t.pop(f"{Q3}.weight_tensor_scale"), None,
                        "model.layers.0.self_attn.k_proj.weight_tensor_scale is missing"),
    "no payload": (lambda t: [t.pop(f"{Q3}.{s}") for s in ("weight_packed", "weight_scale", "weight_tensor_scale")], None,
                   "1 quantized linear layer(s) have no SharQ payload in the checkpoint (e.g. model.layers.0.self_attn.k_proj.weight_packed)"),
    "wrong dtype": (lambda t: t.__setitem__(f"{Q3}.weight_tensor_scale", t[f"{Q3}.weight_tensor_scale"].half()), None,
                    "weight_tensor_scale: dtype float16, expected float32"),
    "block != config": (lambda t: None, lambda qc: qc.__setitem__("weight_block", 16),
                        "weight_scale: shape [128, 2], expected [128, 4]"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_malformed_payload_raises(checkpoints: dict[str, Path], tmp_path: Path, case: str,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """The quantizer's error either is the exception or (errors inside a weight conversion)
    stands in transformers' load report, which it prints before raising RuntimeError."""
    edit, config_edit, needle = BROKEN[case]
    path = _broken(checkpoints, tmp_path, edit, config_edit)
    with pytest.raises((RuntimeError, ValueError)) as e:
        _load(path)
    text = str(e.value) + caplog.text
    assert needle in text, text[-3000:]


def test_config_errors(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    newer = _broken(checkpoints, tmp_path, lambda t: None, lambda qc: qc.__setitem__("version", 99))
    with pytest.raises(Exception, match="newer than this sharq-vllm understands"):
        _load(newer)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_import_sharq_vllm_stays_light() -> None:
    r = _run("""
        import sys, sharq_vllm, sharq_vllm.options, sharq_vllm.checkpoint
        print(sorted(m for m in ("transformers", "vllm") if m in sys.modules))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_without_the_import_transformers_loads_random_weights(checkpoints: dict[str, Path]) -> None:
    """What docs/CHECKPOINTS.md says happens without ``import sharq_vllm.hf`` (transformers
    5.19): no exception, a warning, random q/k/v/o/gate/up/down weights. If transformers ever
    refuses instead, this test tells us to update the docs."""
    r = _run(f"""
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(checkpoints["plus"])!r}, dtype=torch.float32)
        print("LOADED", m.model.layers[0].self_attn.q_proj.weight.float().std().item())
    """)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "LOADED" in r.stdout, out[-3000:]
    assert "Unknown quantization type, got sharq" in out, out[-3000:]


def test_written_checkpoint_readme_says_how_to_load(tmp_path: Path) -> None:
    """`sharq-vllm quantize` appends the loading note (vLLM; transformers needs the import) to
    the source's model card, once."""
    src = write_checkpoint(tmp_path / "src", llama_config(hidden=64, inter=128, heads=2, kv_heads=1), extra_files=False)
    card = "---\nlicense: apache-2.0\n---\n# Tiny model\n"
    (src / "README.md").write_text(card)
    dst = tmp_path / "dst"
    for _ in range(2):
        quantize_checkpoint(src, dst, PRESETS["plus"], progress=False, overwrite=True, log=lambda s: None)
    text = (dst / "README.md").read_text()
    assert text.startswith(card)
    assert text.count("## SharQ checkpoint") == 1
    assert "import sharq_vllm.hf" in text and "randomly initialised" in text
    assert "pattern=2:4 weight_block=16 weight_rounding=search-up" in text
