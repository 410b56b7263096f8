"""Which implementation serves a SharQ linear: decided here, from the data below, and told by
:func:`describe` from the same data (the load log, the kernel benchmark).

Per device: the CUDA kernels serve compute capability exactly :data:`KERNEL_CAPABILITY` (they
are compiled for sm_90a only, ``build.ARCH``) once the extension is loaded; anything else runs
the PyTorch reference, and a CUDA device without the kernels gets one warning naming the reason.
Per call: the preparation kernel takes bf16/fp16 rows whose K is a multiple of every activation
block and at most :data:`PREP_MAX_K`, with per-token activation scales; the GEMM takes a weight
packed in the tiled layout (K % 64 == 0, weight block 16 or 32) and picks its kernel by the
number of rows M from :data:`GEMM_KERNELS` (and, for M just above the first bound, by how well the
wgmma kernel's tiles fill the GPU: :func:`gemm_kernel`).
"""

from __future__ import annotations

import functools
import sys
import threading
from dataclasses import dataclass

import torch

from .. import log
from ..options import FORMAT_CODES, PATTERN_CODES
from ..reference import backbone_block, required_multiple, residual_block
from . import build
from .layout import TILE_K

__all__ = [
    "GEMM_AUTO_MAX_M",
    "GEMM_KERNELS",
    "GEMM_MMA_FILL_MAX_M",
    "GEMM_MMA_MIN_FILL",
    "GEMM_STREAM_CTAS_PER_SM",
    "GEMM_STREAM_MAX_ROUNDS",
    "GEMM_VARIANTS",
    "GEMM_VARIANT_MAX_M",
    "GEMM_WIDE_TILE",
    "KERNEL_CAPABILITY",
    "PREP_MAX_THREADS",
    "PREP_NORM_MAX_K",
    "SERVING_X_FRAG",
    "XHAT_FRAGMENT_LIMITS",
    "GemmKernel",
    "auto_variant",
    "describe",
    "gemm_kernel",
    "kernels_for",
    "layer_label",
    "prep_config_holds",
    "prep_norm_config_holds",
    "prep_norm_on_kernel",
    "prep_norm_takes",
    "prep_on_kernel",
    "prep_silu_mul_on_kernel",
    "prep_takes",
    "prep_values",
    "serving_x_frag",
    "sm_count",
    "wave_fill",
    "weight_on_kernel",
    "xhat_fragment_limit",
    "xhat_fragment_rows",
]

KERNEL_CAPABILITY = (9, 0)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
KERNEL_WEIGHT_BLOCKS = (16, 32)  # the tiled layout's scale blocks (layout.py)
# sharq_kernels.h, kPrepMaxThreads: the preparation kernel's CTA size bound at V chunks of 8
# channels a thread (V = 4: 448, two CTAs an SM); benchmarks and tests skip what a CTA cannot hold
PREP_MAX_THREADS = {1: 1024, 2: 1024, 4: 448, 8: 512}
PREP_MAX_K = 8 * 8 * PREP_MAX_THREADS[8]  # prep.cu: at most 8 chunks of 8 channels for each thread of a CTA
PREP_ACT_SCALES = ("token",)  # the preparation kernel computes per-row tensor scales only
PREP_NORM_MAX_K = 8 * 1024  # sharq_kernels.h, kPrepNormMaxK: the norm + preparation kernel holds a row in one CTA


@dataclass(frozen=True)
class GemmKernel:
    name: str  # torch.ops.sharq_C.gemm_<name>
    max_m: int  # the largest M it serves (the last kernel serves every M)
    what: str


#: gemm_mma's own choice (GemmVariant "auto"; ``sharq::GemmAutoMaxM`` and
#: ``sharq::kGemmStreamMaxRounds``, mirrored and checked like GEMM_VARIANTS; the sweeps behind the
#: bounds: sharq_vllm/csrc/gemm.cu and gemm_wgmma.cu): the stream kernel up to "streamwide" rows,
#: and up to "stream" rows for layers of at most GEMM_STREAM_MAX_ROUNDS rounds of 16-row strips over
#: its GEMM_STREAM_CTAS_PER_SM CTAs an SM; the wgmma kernels above (decoder warps up to "wgmmadec", token-wide above).
#: :func:`auto_variant` is the same rule in Python (tests, describe).
GEMM_AUTO_MAX_M = {"streamwide": 16, "stream": 32, "wgmmadec": 128}
GEMM_STREAM_MAX_ROUNDS = 4
GEMM_STREAM_CTAS_PER_SM = 2  # gemm.cu, kStreamCtasPerSm: the stream kernel's resident CTAs an SM
#: weight rows of a decoder-warp wgmma tile (sharq::kGemmDecTileRows): at 17..32 rows a layer of
#: more than GEMM_STREAM_MAX_ROUNDS rounds of strips takes that kernel only where these tiles fit one
#: wave of the SMs (Llama-3.1-8B gate_up: 112 tiles on 132); wider layers (Qwen2.5-7B gate_up, 148)
#: stay on the stream kernel (kernels-H200-Qwen2.5-7B.json)
GEMM_DEC_TILE_ROWS = 256

# The first kernel whose max_m >= M runs, except just above the first bound (below). "mma"
# (sharq_vllm/csrc/gemm.cu, gemm_mma) picks by M itself (auto_variant): the persistent register
# stream kernel (M <= 32; M <= 16 for layers of many strips) and the wgmma kernels (gemm_wgmma.cu:
# decoder warps up to M = 128, token-wide above); "dequant_mm" dequantizes the weight to 16 bits in a bounded
# workspace and runs cuBLAS. The bound came from benchmarks/kernels/bench_kernels.py's sharq_mma /
# sharq_dqmm rows (both paths forced at every M, "mma_over_dqmm_time"): on the H200
# (benchmarks/results/kernels-H200.json) 224.3 vs 334.9 us at M = 256, 405.3 vs 449.2 at 512 (git
# show 8c3cb0a:benchmarks/results/kernels-H200.json); per layer, kernels-H200-gemm-bound.json.
GEMM_KERNELS: tuple[GemmKernel, ...] = (
    GemmKernel(
        "mma",
        512,
        f"stream kernel M<={GEMM_AUTO_MAX_M['stream']} (M<={GEMM_AUTO_MAX_M['streamwide']} for layers of more "
        f"than {GEMM_STREAM_MAX_ROUNDS} rounds of strips whose {GEMM_DEC_TILE_ROWS}-row wgmma tiles fit one wave), "
        f"wgmma + TMA above (decoder warps "
        f"M<={GEMM_AUTO_MAX_M['wgmmadec']}, token-wide above)",
    ),
    GemmKernel("dequant_mm", sys.maxsize, "dequantize to 16 bits + cuBLAS"),
)
assert GEMM_KERNELS[-1].max_m == sys.maxsize

#: Above the "mma" bound and up to GEMM_MMA_FILL_MAX_M rows, "mma" still runs a layer whose
#: token-wide wgmma tiles (GEMM_WIDE_TILE: tokens x weight rows a CTA, one CTA an SM) fill their
#: waves of SMs to at least GEMM_MMA_MIN_FILL: it beats dequantize + cuBLAS while every SM has a
#: tile, and loses when a wave runs part-empty. H200, both paths forced per Llama-3.1-8B layer
#: (kernels-H200-gemm-bound.json), us, mma / dequant_mm (fill): M = 768: qkv 102.6 / 68.4 (0.55),
#: o 50.8 / 47.4 (0.73), gate_up 304.9 / 316.6 (0.85), down 167.8 / 158.7 (0.73); M = 1024: qkv
#: 103.1 / 85.4 (0.73), o 54.3 / 57.1 (0.97), gate_up 363.1 / 397.0 (0.97), down 175.6 / 194.7
#: (0.97); M = 1536: gate_up 562.4 / 555.8 (0.93), the others lose at 0.73, hence the cap.
GEMM_WIDE_TILE = (256, 128)  # gemm_wgmma.cu, gemm_wgmma_wide_kernel: BM tokens x 8 strips of 16
GEMM_MMA_FILL_MAX_M = 1024
GEMM_MMA_MIN_FILL = 0.8

#: The kernels behind "mma" a benchmark or a test can force (``torch.ops.sharq_C.gemm_mma_cfg``'s
#: variant: the value of ``sharq::GemmVariant`` in sharq_kernels.h, which this mirrors; checked by
#: tests/test_options.py) and the largest M a forced kernel takes (absent: any M).
GEMM_VARIANTS = {"auto": 0, "stream": 1, "tile": 2, "wgmma": 3, "wgmmars": 4}
GEMM_VARIANT_MAX_M = {"stream": 32, "wgmmars": 64}  # sharq::GemmVariantMaxM: MT <= 4; RS token columns
#: x_hat in fragment order (layout.xhat_to_fragments): the preparation kernels write it and the
#: stream GEMM reads it with half the L1 wavefronts of row-major x_hat. ``x_frag``, what a caller
#: asks for, is the most rows stored so, in whole 8-row groups (:func:`xhat_fragment_rows`): 0
#: (never), GEMM_AUTO_MAX_M["streamwide"] (8 and 16 rows, where every layer takes the stream
#: kernel) or GEMM_AUTO_MAX_M["stream"] (24 and 32 too, for a layer whose GEMM takes the stream
#: kernel there: :func:`xhat_fragment_limit`). Mirrors ``sharq::XhatFragment`` (sharq_kernels.h;
#: tests/test_options.py); the A/Bs behind it: benchmarks/results/kernels-H200-xhat-frag.json.
XHAT_FRAGMENT_LIMITS = (0, GEMM_AUTO_MAX_M["streamwide"], GEMM_AUTO_MAX_M["stream"])
#: Whether the vLLM plugin asks for fragment order (each layer: :func:`serving_x_frag`, passed to
#: its producer and its GEMM alike); the kernel benchmark's "sharq" / "sharq_gemm" rows time the same.
SERVING_X_FRAG = True

_lock = threading.Lock()
_status: dict[tuple[str, int], tuple[bool, str]] = {}


def xhat_fragment_rows(m: int, x_frag: int) -> bool:
    """Whether x_hat of ``m`` rows asked for with ``x_frag`` (XHAT_FRAGMENT_LIMITS) is stored in
    fragment order: whole 8-row groups up to ``x_frag`` rows."""
    if x_frag not in XHAT_FRAGMENT_LIMITS or isinstance(x_frag, bool):
        raise ValueError(f"sharq: x_frag is the most rows of x_hat in fragment order, one of "
                         f"{XHAT_FRAGMENT_LIMITS}; got {x_frag!r}")
    return x_frag > 0 and m >= 8 and m % 8 == 0 and m <= x_frag


def xhat_fragment_limit(n: int, sms: int) -> int:
    """The ``x_frag`` a layer of N (padded) weight rows on ``sms`` SMs asks for: up to
    GEMM_AUTO_MAX_M["stream"] rows where its GEMM takes the stream kernel that far (auto_variant),
    else GEMM_AUTO_MAX_M["streamwide"]."""
    top = GEMM_AUTO_MAX_M["stream"]
    return top if auto_variant(top, n, sms) == "stream" else GEMM_AUTO_MAX_M["streamwide"]


def serving_x_frag(n: int | None = None, device: torch.device | None = None) -> int:
    """The ``x_frag`` the vLLM plugin asks for (0 unless SERVING_X_FRAG): for a weight of N
    (padded) rows on a CUDA ``device``, its :func:`xhat_fragment_limit`; otherwise (no weight
    packed for the kernels, or no CUDA device) GEMM_AUTO_MAX_M["streamwide"], what every GEMM reads."""
    if not SERVING_X_FRAG:
        return 0
    if n is None or device is None or device.type != "cuda":
        return GEMM_AUTO_MAX_M["streamwide"]
    return xhat_fragment_limit(n, sm_count(device))


def auto_variant(m: int, n: int, sms: int) -> str:
    """The kernel ``gemm_mma`` runs by itself for M rows and N (padded) weight rows on ``sms`` SMs:
    "stream" or "wgmma" (GEMM_AUTO_MAX_M, GEMM_STREAM_MAX_ROUNDS, GEMM_DEC_TILE_ROWS:
    sharq_vllm/csrc/gemm.cu)."""
    wgmma_one_wave = (n // 16 > GEMM_STREAM_MAX_ROUNDS * GEMM_STREAM_CTAS_PER_SM * sms
                      and -(-n // GEMM_DEC_TILE_ROWS) <= sms)
    if m <= GEMM_AUTO_MAX_M["streamwide"] or (m <= GEMM_AUTO_MAX_M["stream"] and not wgmma_one_wave):
        return "stream"
    return "wgmma"


def wave_fill(m: int, n: int, sms: int) -> float:
    """The share of SM slots the token-wide wgmma kernel's tiles use over its waves at M rows and
    N (padded) weight rows on ``sms`` SMs (1.0: every wave full)."""
    tiles = -(-m // GEMM_WIDE_TILE[0]) * -(-n // GEMM_WIDE_TILE[1])
    return tiles / (-(-tiles // sms) * sms)


def gemm_kernel(m: int, n: int | None = None, sms: int | None = None) -> GemmKernel:
    """The GEMM kernel for M rows (a pure function of M, and above the first bound of N and the
    SM count when given: GEMM_MMA_MIN_FILL)."""
    for kernel in GEMM_KERNELS:
        if m <= kernel.max_m:
            return kernel
        if (kernel is GEMM_KERNELS[0] and n is not None and sms and m <= GEMM_MMA_FILL_MAX_M
                and wave_fill(m, n, sms) >= GEMM_MMA_MIN_FILL):
            return kernel
    return GEMM_KERNELS[-1]


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (asked once per device: every GEMM call passes it)."""
    return _sm_count(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check(dev: torch.device) -> tuple[bool, str]:
    if dev.type != "cuda":
        return False, f"device {dev} has no SharQ kernels (PyTorch reference)"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(dev)
    if (major, minor) != KERNEL_CAPABILITY:
        want = ".".join(map(str, KERNEL_CAPABILITY))
        return False, (f"compute capability {major}.{minor}: the kernels are built for sm_{build.ARCH.replace('.', '')} "
                       f"(Hopper, capability {want}) only")
    ok, how = build.load_extension()
    if not ok:
        return False, f"extension not loaded: {how}"
    return True, f"{how}; sm_{major}{minor}"


def kernels_for(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(True, how the extension was loaded) when the CUDA kernels serve ``device``; (False,
    why not) otherwise. Decided once per device; a CUDA device without them logs one warning."""
    dev = _device(device)
    index = dev.index if dev.index is not None else (
        torch.cuda.current_device() if dev.type == "cuda" and torch.cuda.is_available() else 0)
    key = (dev.type, index)
    with _lock:
        if key not in _status:
            _status[key] = _check(dev)
            if dev.type == "cuda" and not _status[key][0]:
                log.warning("sharq: no SharQ kernels for %s (%s); using the PyTorch reference path",
                            f"cuda:{index}", _status[key][1])
        return _status[key]


def prep_takes(k: int, dtype: torch.dtype, fmt: str, pattern: str, act_scale: str = "token") -> bool:
    """Whether the preparation kernel takes rows of ``k`` channels of ``dtype`` (shapes only: the
    compile pass asks before any tensor exists)."""
    return (
        act_scale in PREP_ACT_SCALES
        and dtype in KERNEL_DTYPES
        and 0 < k <= PREP_MAX_K
        and k % required_multiple(fmt, pattern) == 0
    )


def prep_norm_takes(
    k: int, dtype: torch.dtype, weight_dtype: torch.dtype, fmt: str, pattern: str, act_scale: str = "token"
) -> bool:
    """Whether the RMSNorm + preparation kernel takes such rows (one CTA a row: k <= PREP_NORM_MAX_K)."""
    return k <= PREP_NORM_MAX_K and weight_dtype == dtype and prep_takes(k, dtype, fmt, pattern, act_scale)


def prep_on_kernel(x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token") -> bool:
    """Whether the preparation kernel takes ``x`` (else the reference preparation runs)."""
    return prep_takes(x.shape[-1], x.dtype, fmt, pattern, act_scale) and kernels_for(x.device)[0]


def prep_norm_on_kernel(x: torch.Tensor, weight: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token") -> bool:
    """Whether the RMSNorm + preparation kernel takes ``x`` with norm ``weight`` (else the
    reference norm runs first, then the preparation: the same bits, sharq_vllm/producers.py)."""
    return (prep_norm_takes(x.shape[-1], x.dtype, weight.dtype, fmt, pattern, act_scale)
            and kernels_for(x.device)[0])


def prep_silu_mul_on_kernel(x: torch.Tensor, fmt: str, pattern: str, act_scale: str = "token") -> bool:
    """Whether the SiLU * mul + preparation kernel takes ``x`` ([..., 2K]: gate | up); else
    producers.silu_and_mul, then the preparation (the same bits on the GPU)."""
    k2 = x.shape[-1]
    return k2 % 2 == 0 and prep_takes(k2 // 2, x.dtype, fmt, pattern, act_scale) and kernels_for(x.device)[0]


def prep_config_holds(k: int, v: int, cl: int) -> bool:
    """Whether a forced preparation configuration (``v`` chunks of 8 channels a thread, rows over
    clusters of ``cl`` CTAs: ``sharq_C.prep_cfg``) holds rows of ``k`` channels: prep.cu's
    launch_prep_t refuses a cluster that does not split K into whole 64-channel pieces and a CTA
    over its V's thread bound (PREP_MAX_THREADS)."""
    if cl < 1 or cl > 8 or (cl > 1 and k % (64 * cl)):
        return False
    return -(-(k // 8 // cl) // v) <= PREP_MAX_THREADS[v]


def prep_norm_config_holds(k: int, v: int, cl: int) -> bool:
    """Whether a forced configuration of the RMSNorm + preparation kernel (``sharq_C.prep_norm``)
    holds rows of ``k`` channels (``k`` <= PREP_NORM_MAX_K): prep.cu's prep_norm_cluster_holds.
    A row over a cluster only at one chunk a thread, each CTA's chunk count a power of two (an
    aligned subtree of the norm's summation tree) and whole 64-channel pieces; one CTA a row at
    two chunks a thread needs at least a warp (half the padded chunk count >= 32)."""
    if k > PREP_NORM_MAX_K or v not in (1, 2) or cl < 1 or cl > 8:
        return False
    if v == 2:
        return cl == 1 and 1 << max(0, (k // 8 - 1).bit_length() - 1) >= 32
    n = k // 8 // cl
    return cl == 1 or (k % (64 * cl) == 0 and n & (n - 1) == 0)


def prep_values(fmt: str, pattern: str) -> tuple[int, int, int, int]:
    """The preparation kernel's (format, pattern, backbone block, residual block) arguments: the
    codes of sharq_vllm/csrc/sharq_kernels.h and the blocks reference.py defines."""
    return int(FORMAT_CODES[fmt]), int(PATTERN_CODES[pattern]), backbone_block(fmt, pattern), residual_block(fmt)


def weight_on_kernel(device: torch.device | str, k: int, block: int, act_dtype: torch.dtype | None = None) -> bool:
    """Whether a [N, K] weight with ``block`` scales is packed for the CUDA GEMMs (tiled) on
    ``device``; else it keeps the canonical layout and the reference GEMM runs. ``act_dtype``:
    the activations' dtype when known at load (a float32 model never reaches the kernels)."""
    dev = torch.device(device)
    return (
        dev.type == "cuda"
        and k % TILE_K == 0
        and block in KERNEL_WEIGHT_BLOCKS
        and (act_dtype is None or act_dtype in KERNEL_DTYPES)
        and kernels_for(dev)[0]
    )


def gemm_on_kernel(x_hat: torch.Tensor, tiled: bool) -> bool:
    """Whether the GEMM kernels take ``x_hat`` against a weight (tiled: packed for them)."""
    return tiled and x_hat.dtype in KERNEL_DTYPES


def _gemm_table(short: bool = False) -> str:
    parts, low = [], 1
    for kernel in GEMM_KERNELS:
        if kernel.max_m == sys.maxsize:
            rows = f"M>{low - 1}" if low > 1 else "any M"
        else:
            rows = f"M<={kernel.max_m}" if low == 1 else f"{low}<=M<={kernel.max_m}"
        if kernel is GEMM_KERNELS[0] and len(GEMM_KERNELS) > 1:
            rows += f" (M<={GEMM_MMA_FILL_MAX_M} where its tiles fill {GEMM_MMA_MIN_FILL:.0%} of the SM waves)"
        parts.append(f"{kernel.name} kernel {rows}" if short else f"{rows}: {kernel.what}")
        low = kernel.max_m + 1
    return ", ".join(parts) if short else "; ".join(parts)


def _prep_text(act_scale: str, short: bool = False) -> str:
    if act_scale in PREP_ACT_SCALES:
        return "prep" if short else "fused prep (CUDA)"
    return f"PyTorch prep (act_scale={act_scale}: the prep kernel has per-token scales only)"


def describe(device: torch.device | str | None = None, act_scale: str = "token") -> str:
    """One line for the startup log and the benchmark: which paths serve which M."""
    ok, why = kernels_for(device)
    if not ok:
        return f"sharq kernels: reference PyTorch path ({why})"
    return f"sharq kernels: {_prep_text(act_scale)} + GEMM [{_gemm_table()}] ({why})"


def layer_label(
    tiled: bool, device: torch.device, act_scale: str = "token", act_dtype: torch.dtype | None = None
) -> str:
    """The end of a layer's load-log line: ``kernel=cuda ...`` or ``kernel=reference (why)``."""
    if tiled:
        return f"kernel=cuda {_prep_text(act_scale, short=True)} + GEMM ({_gemm_table(short=True)})"
    if device.type != "cuda":
        return f"kernel=reference ({device.type})"
    ok, why = kernels_for(device)
    if ok and act_dtype is not None and act_dtype not in KERNEL_DTYPES:
        why = f"{act_dtype} activations: the kernels take bfloat16 / float16"
    elif ok:
        why = f"K not a multiple of {TILE_K} or weight block not 16/32"
    return f"kernel=reference ({why})"
