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
(docs/KERNELS.md, "Latest change", and docs/KERNELS-HISTORY.md). The device code of the same source and flags is
deterministic; line information lives in other sections and does not count.

The `.nv_fatbin` section is read as nvcc writes it: containers of entries, each a cubin, a PTX
text or (nvcc 12.8+: `--compress-mode`, `-Xfatbin=-compress-all`, and by default for large device
code, e.g. prep.cu's) a zstd-compressed one, which is decompressed (`pip install zstandard`).
An entry that cannot be read is named in a note and fails --expect-same: its kernels were not
compared, so nothing may be claimed about them.

`--sass` adds, under every kernel that differs, its instruction count in both builds and the
opcodes whose counts changed most (e.g. `instructions 6368 -> 5056: R2UR -1037, UIADD3 -142`):
what a change did to the machine code, read without a GPU. It disassembles with nvdisasm (the `nvidia-cuda-nvdisasm` wheel of the
test extra, or one on PATH / in $CUDA_HOME/bin / named by $NVDISASM); for a whole listing run
`nvdisasm -c` on a cubin, or `cuobjdump -sass -fun MANGLED lib.so` with both tools in one folder.

Needs pyelftools (`pip install pyelftools`). Exit status: 0, or 1 with --expect-same when any
kernel matched by --match differs or is missing from one build, or an entry was not read.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter

ELF_MAGIC = b"\x7fELF"
FATBIN_MAGIC = 0xBA55ED50
# a container: magic, version, header size, size of its entries; an entry: kind (2: cubin), -,
# header size, payload size, compressed size, -, minor, major, arch, name offset / length, flags,
# -, decompressed size
CONTAINER = struct.Struct("<IHHQ")
ENTRY = struct.Struct("<HHIQIIHHIIIQQQ")
ENTRY_CUBIN = 2
FLAG_COMPRESSED = 0x2000 | 0x8000  # LZ4 (nvcc 11.x-12.x) / zstd (nvcc 12.8+)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Itanium mangling of the anonymous namespace nvcc names per translation unit and build
ANON = re.compile(r"\d+_GLOBAL__N__[0-9a-f]+_\d+_\w+?_[0-9a-f]+")


def _cubins(blob: bytes) -> tuple[list[bytes], list[str]]:
    """The cubins of a `.nv_fatbin` section (compressed ones decompressed) and a note for every
    entry that could not be read."""
    cubins: list[bytes] = []
    unread: list[str] = []
    off = 0
    while off + CONTAINER.size <= len(blob):
        magic, _, hsize, size = CONTAINER.unpack_from(blob, off)
        if magic != FATBIN_MAGIC:
            break  # padding after the last container
        e, end = off + hsize, off + hsize + size
        while e + ENTRY.size <= end:
            kind, _, ehsize, esize, csize, _, _, _, arch, _, _, flags, _, dsize = ENTRY.unpack_from(blob, e)
            payload = blob[e + ehsize : e + ehsize + esize]
            if kind == ENTRY_CUBIN:
                if flags & FLAG_COMPRESSED:
                    payload = payload[:csize]
                    if not payload.startswith(ZSTD_MAGIC):
                        unread.append(f"sm_{arch} cubin at {e}: compressed with another codec than zstd")
                        payload = b""
                    else:
                        try:
                            import zstandard
                        except ImportError:
                            unread.append(f"sm_{arch} cubin at {e}: zstd-compressed (pip install zstandard)")
                            payload = b""
                        else:
                            payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=dsize)
                if payload:
                    cubins.append(payload)
            e += ehsize + esize
        off = end
    return cubins, unread


def device_cubins(lib: str, unread: list[str] | None = None) -> list[bytes]:
    """The ELF cubins in a library's device code; entries that could not be read are appended
    to `unread`."""
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
    cubins, notes = _cubins(blob)
    if unread is not None:
        unread.extend(f"{lib}: {n}" for n in notes)
    return [c for c in cubins if c.startswith(ELF_MAGIC)]


def kernel_digests(lib: str, unread: list[str] | None = None) -> dict[str, str]:
    """Kernel name (demangled: the anonymous namespace carries no per-build hash) -> md5 of its
    machine code; entries of the device code that could not be read are appended to `unread`."""
    notes: list[str] = []
    cubins = device_cubins(lib, notes)  # first: it says how to get pyelftools where it is missing
    from elftools.elf.elffile import ELFFile

    code: dict[str, str] = {}
    for data in cubins:
        for sec in ELFFile(io.BytesIO(data)).iter_sections():
            if sec.name.startswith(".text."):
                code[sec.name[len(".text."):]] = hashlib.md5(sec.data()).hexdigest()
    if unread is not None:
        unread.extend(notes)
    if not code:
        sys.exit(f"{lib}: no kernels found in its device code" + (f" ({'; '.join(notes)})" if notes else ""))
    mangled = sorted(code)
    return {name: code[m] for m, name in zip(mangled, readable(mangled), strict=True)}


def nvdisasm() -> str | None:
    """An nvdisasm executable: $NVDISASM, PATH, $CUDA_HOME/bin, or NVIDIA's pip wheel (its files
    live under the `nvidia` namespace package, e.g. nvidia/cu13/bin/nvdisasm)."""
    cands = [os.environ.get("NVDISASM"), shutil.which("nvdisasm"),
             os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvdisasm")]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        cands += sorted(glob.glob(os.path.join(root, "*", "bin", "nvdisasm")))
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


# an instruction line of `nvdisasm -c`: /*0a40*/  [@!P0 ]OPCODE.MODIFIERS operands ;
SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9_]*)")
SASS_FUNC = re.compile(r"^//-+ \.text\.(\S+) -+$")


def kernel_opcodes(lib: str, tool: str) -> dict[str, Counter[str]]:
    """Kernel name (as kernel_digests names it) -> how many instructions of each opcode (the
    mnemonic without its modifiers: HGMMA, STG, ...) its machine code holds."""
    ops: dict[str, Counter[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(device_cubins(lib)):
            path = os.path.join(tmp, f"{i}.cubin")
            with open(path, "wb") as f:
                f.write(data)
            res = subprocess.run([tool, "-c", path], capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"{tool} -c failed on a cubin of {lib}: {res.stderr.strip()[:300]}")
            cur: Counter[str] | None = None
            for line in res.stdout.splitlines():
                if m := SASS_FUNC.match(line):
                    cur = ops.setdefault(m.group(1), Counter())
                elif cur is not None and (m := SASS_LINE.match(line)):
                    cur[m.group(1)] += 1
    mangled = sorted(ops)
    return {name: ops[m] for m, name in zip(mangled, readable(mangled), strict=True)}


def opcode_delta(old: Counter[str], new: Counter[str], top: int = 10) -> str:
    """'instructions A -> B: OP +n, OP -m, ...' (the `top` largest changes)."""
    diff = {op: new[op] - old[op] for op in set(old) | set(new) if new[op] != old[op]}
    ranked = sorted(diff.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
    head = f"instructions {sum(old.values())} -> {sum(new.values())}"
    return head + (": " + ", ".join(f"{op} {d:+d}" for op, d in ranked) if ranked else " (same opcode counts)")


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
    ap.add_argument("--sass", action="store_true", help="under each differing kernel: instruction count and "
                    "the opcodes whose counts changed (needs nvdisasm)")
    a = ap.parse_args(argv)
    unread: list[str] = []
    old, new = kernel_digests(a.old, unread), kernel_digests(a.new, unread)
    sass_old: dict[str, Counter[str]] = {}
    sass_new: dict[str, Counter[str]] = {}
    if a.sass:
        tool = nvdisasm()
        if tool is None:
            sys.exit("--sass needs nvdisasm: pip install nvidia-cuda-nvdisasm (the test extra), or set NVDISASM")
        sass_old, sass_new = kernel_opcodes(a.old, tool), kernel_opcodes(a.new, tool)
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
        if a.sass and state != "same":
            print(f"         {opcode_delta(sass_old.get(name, Counter()), sass_new.get(name, Counter()))}")
    if not counts:
        print(f"no kernel's name contains {a.match!r}")
        return 1 if a.expect_same else 0
    print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for n in unread:
        print(f"note: not compared: {n}")
    return 1 if a.expect_same and (set(counts) - {"same"} or unread) else 0


if __name__ == "__main__":
    sys.exit(main())
