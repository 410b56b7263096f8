"""Compare the machine code of every CUDA kernel in two builds of the kernel library.

    python3 tools/cubin_diff.py OLD.so NEW.so [--match gemm_stream] [--expect-same]

Reads each library's embedded device code (the `.nv_fatbin` section: the sm_90a cubins nvcc
put there), takes every kernel's `.text.<kernel>` section and says per kernel whether its bytes
are the same, differ, or exist in one build only. Kernel names are demangled and the anonymous
namespace's per-build hash is dropped, so the same kernel matches across builds. No GPU needed:
build both libraries with `tools/gpu/prebuild_ext.sh` (EXTRA_NVFLAGS for a variant) and compare.

What it is for: a kernel change that must leave other kernels alone (say, one template
instantiation) can show that every other kernel is byte-identical to a build whose GPU tests
passed, and a committed kernel can be shown to be the exact one an A/B measured
(docs/KERNELS.md, "Latest change"). The device code of the same source and flags is
deterministic; line information lives in other sections and does not count.

Needs pyelftools (`pip install pyelftools`). Exit status: 0, or 1 with --expect-same when any
kernel matched by --match differs or is missing from one build.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import subprocess
import sys

ELF_MAGIC = b"\x7fELF"
# Itanium mangling of the anonymous namespace nvcc names per translation unit and build
ANON = re.compile(r"\d+_GLOBAL__N__[0-9a-f]+_\d+_\w+?_[0-9a-f]+")


def kernel_digests(lib: str) -> dict[str, str]:
    """Kernel name (demangled: the anonymous namespace carries no per-build hash) -> md5 of its
    machine code."""
    try:
        from elftools.elf.elffile import ELFFile
    except ImportError:
        sys.exit("tools/cubin_diff.py needs pyelftools: pip install pyelftools")
    with open(lib, "rb") as f:
        host = ELFFile(f)
        fatbin = host.get_section_by_name(".nv_fatbin")
        if fatbin is None:
            sys.exit(f"{lib}: no .nv_fatbin section (not a CUDA library built with device code)")
        blob = fatbin.data()
    code: dict[str, str] = {}
    for m in re.finditer(re.escape(ELF_MAGIC), blob):
        try:
            cubin = ELFFile(io.BytesIO(blob[m.start():]))
            sections = list(cubin.iter_sections())
        except Exception:  # an ELF magic inside other data, or a truncated tail: not a cubin
            continue
        for sec in sections:
            if sec.name.startswith(".text."):
                code[sec.name[len(".text."):]] = hashlib.md5(sec.data()).hexdigest()
    if not code:
        sys.exit(f"{lib}: no kernels found in its device code (compressed fatbin?)")
    mangled = sorted(code)
    return {name: code[m] for m, name in zip(mangled, readable(mangled), strict=True)}


def readable(mangled: list[str]) -> list[str]:
    """Demangled names without the anonymous namespace and the parameter list (c++filt), else the
    mangled names with the anonymous namespace's hash replaced."""
    if shutil.which("c++filt"):
        res = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True)
        lines = res.stdout.splitlines()
        if len(lines) == len(mangled):
            return [line.replace("(anonymous namespace)::", "").split("(", 1)[0] for line in lines]
    return [ANON.sub("ANON", m) for m in mangled]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--match", default="", help="only kernels whose demangled name contains this")
    ap.add_argument("--expect-same", action="store_true", help="exit 1 if a matched kernel differs")
    a = ap.parse_args(argv)
    old, new = kernel_digests(a.old), kernel_digests(a.new)
    counts: dict[str, int] = {}
    for name in sorted(set(old) | set(new)):
        if a.match not in name:
            continue
        if name not in new:
            state = "only-old"
        elif name not in old:
            state = "only-new"
        else:
            state = "same" if old[name] == new[name] else "DIFF"
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:8s} {name}")
    if not counts:
        print(f"no kernel's name contains {a.match!r}")
        return 1 if a.expect_same else 0
    print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if "only-old" in counts or "only-new" in counts:
        # nvcc 13 may compress a source file's device code (seen for prep.cu in session 32): its
        # kernels then look absent; building both sides uncompressed tells a missing kernel apart
        print("note: kernels in one build only: if a whole source file's kernels are missing, its device code may "
              "be compressed; rebuild both with EXTRA_NVFLAGS=--compress-mode=none and compare again")
    return 1 if a.expect_same and set(counts) - {"same"} else 0


if __name__ == "__main__":
    sys.exit(main())
