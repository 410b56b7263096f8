"""tools/gpu/gemm_bits.py: the comparison of two builds' GEMM outputs (CPU), and its refusal to
dump where the kernels do not run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "gpu" / "gemm_bits.py"
    spec = importlib.util.spec_from_file_location("gemm_bits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dump(tool, path: Path, outputs: dict[str, torch.Tensor]) -> Path:
    # the provenance `dump` stores (its own function: a class in it, e.g. torch.__version__'s
    # TorchVersion, made every real dump unreadable to `compare`)
    meta = tool._meta(str(path), "NVIDIA H200", 37)
    torch.save({"meta": meta, "outputs": {k: tool._record(v) for k, v in outputs.items()}}, path)
    return path


def _outputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "qkv M=1 auto": torch.randn(1, 6144, generator=g).bfloat16(),
        # larger than the 4096 values a dump keeps: a difference past them still counts
        "down M=3 mma": torch.randn(3, 4096, generator=g).bfloat16(),
    }


def test_equal_dumps_compare_equal(tmp_path, capsys):
    tool = _tool()
    a = _dump(tool, tmp_path / "a.pt", _outputs(0))
    b = _dump(tool, tmp_path / "b.pt", _outputs(0))
    assert tool.main(["compare", str(a), str(b)]) == 0
    assert "2 of 2 outputs bitwise equal" in capsys.readouterr().out


@pytest.mark.parametrize("where", [0, 3 * 4096 - 1])  # in the kept values, past them
def test_one_changed_value_is_found(tmp_path, capsys, where):
    tool = _tool()
    outs = _outputs(0)
    changed = {k: v.clone() for k, v in outs.items()}
    flat = changed["down M=3 mma"].view(-1)
    flat[where] = flat[where] + 1  # randn values: |v| < 256, so v + 1 != v in bf16
    a = _dump(tool, tmp_path / "a.pt", outs)
    b = _dump(tool, tmp_path / "b.pt", changed)
    assert tool.main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "DIFFER   down M=3 mma" in out and "DIFFER   qkv" not in out
    assert "1 of 2 outputs bitwise equal" in out
    assert ("1 differ" in out) == (where < 4096)


def test_missing_case_fails(tmp_path, capsys):
    tool = _tool()
    outs = _outputs(1)
    a = _dump(tool, tmp_path / "a.pt", outs)
    b = _dump(tool, tmp_path / "b.pt", {"qkv M=1 auto": outs["qkv M=1 auto"]})
    assert tool.main(["compare", str(a), str(b)]) == 1
    assert "MISSING  down M=3 mma (only in A)" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device is")
def test_dump_refuses_without_the_kernels(tmp_path):
    with pytest.raises(SystemExit, match="do not run here"):
        _tool().main(["dump", str(tmp_path / "x.pt"), "--shapes", "odd_n", "--ms", "1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device is")
def test_ab_libraries_bits_gemm_times_nothing_that_was_not_compared(tmp_path):
    """tools/gpu/ab_libraries.sh BITS=gemm: each library's outputs are dumped before any timing; a
    library whose dump or comparison fails (here: no kernels on this machine) is not timed and the
    script exits 1."""
    root = Path(__file__).resolve().parents[1]
    libs = []
    for name in ("v0", "v1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "libsharq_C.so").write_bytes(b"not a library")
        libs.append(f"{name}={tmp_path / name / 'libsharq_C.so'}")
    out = tmp_path / "ab"
    env = {**os.environ, "BITS": "gemm", "ROUNDS": "1",  # the script's python3: this interpreter
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", str(root / "tools" / "gpu" / "ab_libraries.sh"), str(out), *libs],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "v0: GEMM outputs against v0's rc=1" in r.stdout, r.stdout
    assert "not timed" in r.stderr and "v0" in r.stderr and "v1" in r.stderr
    assert not list(out.glob("run-*")), "a library was timed"
    assert "do not run here" in (out / "bits-v0.log").read_text()
