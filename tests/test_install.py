"""Installing gives kernels (or says why not): the wheel built the default way (pip's build
isolation, so no torch and no prebuilt ``_C``) ships the CUDA sources; installed into a clean
venv, the loader finds them there and names what is missing on this CPU machine. The compile
itself needs a CUDA torch (GPU machines only); its cache key and preconditions are checked here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from sharq_vllm.kernels import build

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FILES = (*build.SOURCES, *build.HEADERS)


def _env(**extra: str) -> dict[str, str]:
    """The environment without this checkout on PYTHONPATH (the subprocesses must see only
    what they install) and without a SHARQ_BUILD_CUDA of the caller's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHARQ_BUILD_CUDA")}
    return {**env, **extra}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source_tree(dst: Path) -> Path:
    """What `pip install .` builds from (the Dockerfile's allow-list), without build debris."""
    dst.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "sharq_vllm", dst / "sharq_vllm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    return dst


def _pip_wheel(src: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600, check=False, env=_env(**env))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("wheel")
    r = _pip_wheel(_source_tree(tmp / "src"), tmp / "dist")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("sharq_vllm-*.whl")
    return whl, r.stdout + r.stderr


def test_default_wheel_ships_the_sources_and_says_it_has_no_prebuilt_kernels(wheel: tuple[Path, str]) -> None:
    whl, log = wheel
    assert "sharq-vllm: this wheel has NO prebuilt CUDA kernels (torch is not importable" in log
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        assert not any(n.startswith("sharq_vllm/_C") for n in names)
        for f in KERNEL_FILES:
            assert _sha(zf.read(f"sharq_vllm/csrc/{f}")) == _sha((ROOT / "sharq_vllm" / "csrc" / f).read_bytes()), f


def test_demanding_prebuilt_kernels_without_torch_fails_the_build(tmp_path: Path) -> None:
    r = _pip_wheel(_source_tree(tmp_path / "src"), tmp_path / "dist", SHARQ_BUILD_CUDA="1")
    assert r.returncode != 0
    assert "SHARQ_BUILD_CUDA=1 but torch is not importable in this build" in r.stdout + r.stderr
    assert not list(tmp_path.glob("dist/*.whl"))


@pytest.fixture(scope="module")
def clean_venv(wheel: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new Python 3.11 venv with only the wheel installed (--no-deps: no torch in it)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "-q", "--no-deps", "--no-index", str(wheel[0])], check=True, timeout=300, env=_env())
    assert (_site(venv) / "sharq_vllm" / "csrc").is_dir()
    return venv


def _site(venv: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    return venv / rel


def test_clean_venv_finds_the_sources_and_says_torch_is_missing(clean_venv: Path, tmp_path: Path) -> None:
    r = subprocess.run([str(clean_venv / "bin" / "python"), "-m", "sharq_vllm.kernels.build", "check"],
                       capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path, env=_env())
    csrc = _site(clean_venv) / "sharq_vllm" / "csrc"
    assert r.returncode == 1, r.stdout + r.stderr
    n = len(KERNEL_FILES)  # every kernel source and header ships in the wheel
    assert f"sources: {csrc} ({n} of {n} files)" in r.stdout, r.stdout
    assert "kernels: not available (torch is not installed)" in r.stdout, r.stdout
    for f in KERNEL_FILES:
        assert (csrc / f).read_bytes() == (ROOT / "sharq_vllm" / "csrc" / f).read_bytes(), f


def test_installed_loader_explains_what_is_missing_without_cuda(clean_venv: Path, tmp_path: Path) -> None:
    """The installed package with this venv's (CPU) torch: the loader reads the installed sources,
    finds no prebuilt _C and names why it cannot compile them here."""
    code = (
        "import sharq_vllm, torch\n"
        "from sharq_vllm.kernels import build\n"
        "print('FILE', sharq_vllm.__file__)\n"
        "print('LOAD', build.load_extension())\n"
        "raise SystemExit(build.check())\n"
    )
    env = _env(PYTHONPATH=str(_site(clean_venv)), SHARQ_BUILD_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       check=False, cwd=tmp_path, env=env)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert f"FILE {_site(clean_venv)}" in out, out
    assert "no prebuilt sharq_vllm._C (the wheel was built without torch" in out, out
    assert "cannot compile them at first use:" in out and "is a CPU build (no CUDA)" in out, out
    n = len(KERNEL_FILES)
    assert f"sources: {_site(clean_venv) / 'sharq_vllm' / 'csrc'} ({n} of {n} files)" in out, out
    assert "kernels: not available here (no CUDA device)" in out, out
    assert not (tmp_path / "cache").exists()  # nothing was compiled or cached


def test_cache_key_follows_everything_that_goes_into_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = build.cache_key("2.14.0+cu130", "13.0", ["9.0a"])
    assert key.startswith("torch2.14.0_cu130-cu13.0-sm_90a-") and "/" not in key
    assert key == build.cache_key("2.14.0+cu130", "13.0", ["9.0a"])
    others = {build.cache_key("2.11.0+cu130", "13.0", ["9.0a"]), build.cache_key("2.14.0+cu128", "12.8", ["9.0a"]),
              build.cache_key("2.14.0+cu130", "13.0", ["10.0a"])}
    assert key not in others and len(others) == 3
    # a changed source (even a header) is another build
    copy = tmp_path / "csrc"
    shutil.copytree(ROOT / "sharq_vllm" / "csrc", copy)
    monkeypatch.setattr(build, "CSRC", str(copy))
    assert build.cache_key("2.14.0+cu130", "13.0", ["9.0a"]) == key
    with open(copy / "sharq_kernels.h", "a") as f:
        f.write("\n")
    assert build.cache_key("2.14.0+cu130", "13.0", ["9.0a"]) != key
    (copy / "gemm.cu").unlink()
    assert build.missing_sources() == ["gemm.cu"]
    assert any("kernel sources missing" in b and "gemm.cu" in b for b in build.jit_blockers())


def test_missing_nvcc_is_named(tmp_path: Path) -> None:
    """Without nvcc (no CUDA_HOME, none on PATH) the reason says so and what to install."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(PATH=os.pathsep.join(p for p in ("/usr/bin", "/bin") if not os.path.exists(f"{p}/nvcc")),
               PYTHONPATH=str(ROOT))
    code = "from sharq_vllm.kernels import build; print(build.nvcc_path()); print(build.jit_blockers())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       check=False, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first, blockers = r.stdout.splitlines()[:2]
    assert first == "None" and "nvcc not found (no CUDA_HOME, no nvcc on PATH)" in blockers, r.stdout
