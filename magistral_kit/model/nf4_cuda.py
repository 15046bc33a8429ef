"""The decode step's NF4 matrix-vector products in CUDA C++ (``nf4_pair.cu``): two weights per table load.

Why a CUDA kernel beside the Triton ones (nf4_kernel.py): the Triton GEMV is bound by the SM's L1 data pipe,
mostly its one shuffle per weight, and Triton cannot lay out the shared-memory table that decodes two weights
per load (bench/GPU.md has the counters and the side-by-side timings). The kernel source says how it works.

* **Compiled at first use by NVRTC** (the runtime compiler every CUDA build of torch installs), for the GPU's
  own architecture, and launched through the CUDA driver API on torch's current stream, so CUDA graphs capture
  it and ``torch.compile`` sees one custom op (``torch.ops.kit_nf4.pair_gemv`` / ``pair_gate_up``). No build
  system, no nvcc. Where NVRTC or the CUDA headers are missing, ``load`` says so and the decode step keeps the
  Triton GEMV.
* **Checked on the CPU**: ``reference_gemv`` / ``reference_gate_up`` do the kernel's arithmetic in numpy,
  operation for operation (half-precision fused multiply-adds emulated exactly in float64, float32 steps in
  float32, the warp's butterfly sum in its order). CI checks the reference against bitsandbytes on small and odd
  shapes and compiles the kernel with NVRTC (no GPU needed); on a GPU the tests check the kernel against the
  reference bit for bit.

Covers what the decode step needs: x in lane order (``nf4_kernel.lane_order``) and K splits of whole
1,024-element steps. ``supports`` says when a shape is not covered.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from magistral_kit.model.nf4_kernel import NF4_CODE, STEP, NF4Weight, lane_order, natural_order

SOURCE = Path(__file__).with_name("nf4_pair.cu")
XMAX_EXP = 12  # as in nf4_pair.cu: x is scaled down by a power of two when max |x| reaches 2^XMAX_EXP
WARPS = 8  # warps per block, as in nf4_pair.cu
TABLE_BYTES = 65536  # dynamic shared memory per block: 256 byte values x 256 bytes (32 lanes' half2 entries)
GEMV_ROWS = (2, 4)  # rows per warp compiled for the GEMV (8 spills registers at two blocks per SM)
GATE_UP_ROWS = (2, 4)  # rows per warp of gate and of up (twice as many dot products)


@dataclass(frozen=True)
class PairLaunch:
    """Launch shape per linear of the decode step: (rows per warp, K splits, blocks per SM); gate_up: (rows per
    warp, blocks per SM); None: that linear stays on the Triton GEMV. bench/gpu_chat.py times both kernels on the
    GPU and records the faster with its best launch; the defaults are its choice for the Magistral shape on the
    H200 (tests/test_report.py holds them to the recorded run)."""

    qkv: tuple[int, int, int] | None = None
    o: tuple[int, int, int] | None = None
    gate_up: tuple[int, int] | None = (4, 2)
    down: tuple[int, int, int] | None = (4, 8, 2)


DEFAULT_LAUNCH = PairLaunch()


def supports(k: int, split: int) -> str:
    """'' when the kernel covers a product over K = k in ``split`` parts, else why not."""
    if k % STEP or k % split or (k // split) % STEP:
        return f"K {k} in {split} splits is not whole {STEP}-element steps"
    return ""


# ==============================================================================================================
# NVRTC + driver API
# ==============================================================================================================
def _candidates(pattern: str) -> list[str]:
    roots = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    found = [p for r in roots if r for p in glob.glob(os.path.join(r, pattern))]
    for base in sys.path:  # pip's nvidia-* wheels (torch's CUDA dependencies): nvidia/<pkg>/{lib,include}
        found += glob.glob(os.path.join(base, "nvidia", "*", pattern))
    return found


def _nvrtc() -> ctypes.CDLL:
    names = ["libnvrtc.so"] + sorted(_candidates("lib*/libnvrtc.so*"), reverse=True)
    for name in names:
        if "builtins" in name or ".alt." in name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise RuntimeError("NVRTC (libnvrtc.so) was not found: install the CUDA build of torch (it brings "
                       "nvidia-cuda-nvrtc) or set CUDA_HOME to a CUDA toolkit")


def _include_dir() -> str:
    for path in _candidates("include/cuda_fp16.h"):
        return os.path.dirname(path)
    raise RuntimeError("cuda_fp16.h was not found: install nvidia-cuda-runtime (torch's CUDA builds bring it) or "
                       "set CUDA_HOME to a CUDA toolkit")


def compile_cubin(arch: int = 90) -> bytes:
    """nf4_pair.cu compiled by NVRTC for sm_<arch>; works without a GPU. Raises with NVRTC's log on failure."""
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    _ok(lib.nvrtcCreateProgram(ctypes.byref(prog), SOURCE.read_bytes(), b"nf4_pair.cu", 0, None, None),
        "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture=sm_{arch}".encode(), f"-I{_include_dir()}".encode(), b"--std=c++17"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            raise RuntimeError(f"NVRTC could not compile {SOURCE.name} for sm_{arch}:\n{log.value.decode()}")
        _ok(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _ok(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _ok(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} failed with CUDA error {code}")


class _Args(ctypes.Structure):
    """``struct Args`` of nf4_pair.cu, field for field (tests/test_nf4_cuda.py compares the two)."""

    _fields_ = [("w", ctypes.c_void_p * 3), ("a", ctypes.c_void_p * 3), ("s2", ctypes.c_void_p * 3),
                ("off", ctypes.c_void_p * 3), ("n", ctypes.c_int * 3), ("code2", ctypes.c_void_p),
                ("x", ctypes.c_void_p), ("out", ctypes.c_void_p), ("k", ctypes.c_int), ("k_split", ctypes.c_int),
                ("n_total", ctypes.c_int), ("lane_out", ctypes.c_int)]


def _args(x: torch.Tensor, ws: Sequence[NF4Weight], out: torch.Tensor, k_split: int, lane_out: bool) -> _Args:
    a = _Args()
    for i in range(3):
        w = ws[min(i, len(ws) - 1)]
        a.w[i], a.a[i], a.s2[i], a.off[i] = (w.words.data_ptr(), w.absmax.data_ptr(), w.absmax2.data_ptr(),
                                             w.offset.data_ptr())
        a.n[i] = ws[i].n if i < len(ws) else 0
    a.code2, a.x, a.out = ws[0].code2.data_ptr(), x.data_ptr(), out.data_ptr()
    a.k, a.k_split, a.n_total, a.lane_out = ws[0].k, k_split, sum(w.n for w in ws), int(lane_out)
    return a


class PairKernels:
    """nf4_pair.cu loaded on one GPU; ``gemv`` and ``gate_up`` launch it on torch's current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            torch.empty(1, device=self.device)  # torch's primary context, current on this thread
            major, minor = torch.cuda.get_device_capability(self.device)
            self.cubin = compile_cubin(major * 10 + minor)
            self.sms = torch.cuda.get_device_properties(self.device).multi_processor_count
            self._cu = ctypes.CDLL("libcuda.so.1")
            self._cu.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
                ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
            self._image = ctypes.c_char_p(self.cubin)  # kept alive with the module
            module = ctypes.c_void_p()
            _ok(self._cu.cuModuleLoadData(ctypes.byref(module), self._image), "cuModuleLoadData")
            self._fns: dict[str, ctypes.c_void_p] = {}
            for name in [f"nf4_gemv_r{r}" for r in GEMV_ROWS] + [f"nf4_gate_up_r{r}" for r in GATE_UP_ROWS]:
                fn = ctypes.c_void_p()
                _ok(self._cu.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()), f"loading {name}")
                _ok(self._cu.cuFuncSetAttribute(fn, 8, TABLE_BYTES), f"shared memory of {name}")  # max dynamic
                self._fns[name] = fn

    def _launch(self, name: str, grid: tuple[int, int], args: _Args) -> None:
        params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p))
        stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
        _ok(self._cu.cuLaunchKernel(self._fns[name], grid[0], grid[1], 1, WARPS * 32, 1, 1, TABLE_BYTES, stream,
                                    params, None), f"launching {name}")

    def gemv(self, x: torch.Tensor, ws: Sequence[NF4Weight], split: int = 1, rows: int = 4,
             blocks_per_sm: int = 2) -> torch.Tensor:
        """float32 partial sums ``[split, sum of rows]`` of ``x @ W_i^T`` for up to 3 NF4 weights sharing x (bf16,
        lane order)."""
        k = ws[0].k
        if not 1 <= len(ws) <= 3 or rows not in GEMV_ROWS:
            raise ValueError(f"1 to 3 weights and rows per warp in {GEMV_ROWS}, got {len(ws)} and {rows}")
        if supports(k, split):
            raise ValueError(supports(k, split))
        if x.numel() != k or x.dtype != torch.bfloat16 or any(w.k != k for w in ws):
            raise ValueError("x must be a bf16 vector of the weights' common in_features")
        n_total = sum(w.n for w in ws)
        out = torch.empty((split, n_total), dtype=torch.float32, device=x.device)
        groups = -(-n_total // rows)
        blocks = max(1, min(-(-groups // WARPS), self.sms * blocks_per_sm // split))
        self._launch(f"nf4_gemv_r{rows}", (blocks, split), _args(x, ws, out, k // split, False))
        return out

    def gate_up(self, x: torch.Tensor, gate: NF4Weight, up: NF4Weight, rows: int = 4, blocks_per_sm: int = 2,
                lane_out: bool = False) -> torch.Tensor:
        """bf16 ``silu(x @ gate^T) * (x @ up^T)`` (x bf16 in lane order); ``lane_out``: stored in lane order."""
        if rows not in GATE_UP_ROWS:
            raise ValueError(f"rows per warp in {GATE_UP_ROWS}, got {rows}")
        if supports(gate.k, 1):
            raise ValueError(supports(gate.k, 1))
        if lane_out and gate.n % STEP:
            raise ValueError(f"lane order needs {STEP}-element steps, got {gate.n} outputs")
        if (gate.n, gate.k) != (up.n, up.k) or x.numel() != gate.k or x.dtype != torch.bfloat16:
            raise ValueError("gate and up must have one shape and x their in_features (bf16)")
        out = torch.empty((gate.n,), dtype=torch.bfloat16, device=x.device)
        blocks = max(1, min(-(-gate.n // (rows * WARPS)), self.sms * blocks_per_sm))
        self._launch(f"nf4_gate_up_r{rows}", (blocks, 1), _args(x, [gate, up], out, gate.k, lane_out))
        return out


class ReferenceKernels:
    """``PairKernels``' interface computed by ``reference_gemv`` / ``reference_gate_up`` on the CPU: lets CI run
    the whole decode step with the CUDA kernel's arithmetic (``reference_kernels``). Launch shapes do not change
    the arithmetic, so they are accepted and ignored."""

    def gemv(self, x: torch.Tensor, ws: Sequence[NF4Weight], split: int = 1, rows: int = 4,
             blocks_per_sm: int = 2) -> torch.Tensor:
        return torch.from_numpy(reference_gemv(x, ws, split)).to(x.device)

    def gate_up(self, x: torch.Tensor, gate: NF4Weight, up: NF4Weight, rows: int = 4, blocks_per_sm: int = 2,
                lane_out: bool = False) -> torch.Tensor:
        return reference_gate_up(x, gate, up, lane_out).to(x.device)


_LOADED: dict[str, PairKernels | ReferenceKernels] = {}  # by str(device)
_LOCK = threading.Lock()


def reference_kernels() -> ReferenceKernels:
    """The CPU reference registered for tensors on the CPU (the custom ops then compute it there)."""
    _LOADED["cpu"] = ReferenceKernels()
    _register_ops()
    return _LOADED["cpu"]


def load(device: torch.device) -> tuple[PairKernels | None, str]:
    """The kernels on ``device`` (compiled once per process), or (None, why they cannot be used)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, f"the CUDA GEMV needs a CUDA device (got {device.type})"
    key = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    with _LOCK:
        if key not in _LOADED:
            try:
                _LOADED[key] = PairKernels(torch.device(key))
            except (RuntimeError, OSError) as exc:
                return None, f"CUDA GEMV unavailable: {exc}"
    _register_ops()
    return _LOADED[key], ""


_OPS_READY = False


def _register_ops() -> None:
    """``torch.ops.kit_nf4.pair_gemv`` / ``pair_gate_up``: opaque to torch.compile, with shape-only fakes."""
    global _OPS_READY
    if _OPS_READY:
        return
    from torch.library import custom_op

    def weights(words, absmax, absmax2, offsets, code2, rows, k) -> list[NF4Weight]:
        return [NF4Weight(w, a, s, o, code2, n, k) for w, a, s, o, n in zip(words, absmax, absmax2, offsets, rows)]

    @custom_op("kit_nf4::pair_gemv", mutates_args=())
    def pair_gemv(x: torch.Tensor, words: list[torch.Tensor], absmax: list[torch.Tensor],
                  absmax2: list[torch.Tensor], offsets: list[torch.Tensor], code2: torch.Tensor, rows: list[int],
                  k: int, split: int, rows_per_warp: int, blocks_per_sm: int) -> torch.Tensor:
        return _LOADED[str(x.device)].gemv(x, weights(words, absmax, absmax2, offsets, code2, rows, k), split,
                                            rows_per_warp, blocks_per_sm)

    @pair_gemv.register_fake
    def _(x, words, absmax, absmax2, offsets, code2, rows, k, split, rows_per_warp, blocks_per_sm):
        return x.new_empty((split, int(sum(rows))), dtype=torch.float32)

    @custom_op("kit_nf4::pair_gate_up", mutates_args=())
    def pair_gate_up(x: torch.Tensor, words: list[torch.Tensor], absmax: list[torch.Tensor],
                     absmax2: list[torch.Tensor], offsets: list[torch.Tensor], code2: torch.Tensor, n: int, k: int,
                     rows_per_warp: int, blocks_per_sm: int, lane_out: bool) -> torch.Tensor:
        g, u = weights(words, absmax, absmax2, offsets, code2, [n, n], k)
        return _LOADED[str(x.device)].gate_up(x, g, u, rows_per_warp, blocks_per_sm, lane_out)

    @pair_gate_up.register_fake
    def _(x, words, absmax, absmax2, offsets, code2, n, k, rows_per_warp, blocks_per_sm, lane_out):
        return x.new_empty((n,), dtype=torch.bfloat16)

    _OPS_READY = True


# ==============================================================================================================
# the same arithmetic on the CPU (numpy)
# ==============================================================================================================
_NF4_HALF = np.array(NF4_CODE, dtype=np.float32).astype(np.float16)  # the table's values, rounded as the kernel


def _hfma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fp16 a * b + c rounded once, as HFMA2: the product of two halves is exact in float64, and when the float64
    sum is inexact the addend dwarfs the product by far more than half precision resolves, so rounding that sum
    to half gives the once-rounded result."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float16)


def _natural(x_lane: torch.Tensor) -> np.ndarray:
    """bf16 x in lane order -> its bf16 bit patterns (uint32, in the low 16 bits) in natural order."""
    x = natural_order(x_lane.detach().cpu())
    return x.view(torch.int16).numpy().astype(np.uint32) & 0xFFFF


def x_shift(bits: np.ndarray) -> int:
    """The power of two the kernel scales x down by (0 unless max |x| >= 2^XMAX_EXP), from bf16 bit patterns."""
    e = int((bits & 0x7FFF).max()) >> 7
    return min(max(e - 126 - XMAX_EXP, 0), 120)


def _rows_dot(bits: np.ndarray, w: NF4Weight, k_lo: int, k_hi: int) -> np.ndarray:
    """float32 [n]: what one warp computes for each row of w over [k_lo, k_hi) (nf4_pair.cu ``dot_rows``)."""
    n, k = w.n, w.k
    sh = x_shift(bits[k_lo:k_hi])
    xs, unscale = np.float32(2.0 ** -sh), np.float32(2.0 ** sh)
    steps = (k_hi - k_lo) // STEP
    xf = (bits[k_lo:k_hi] << 16).view(np.float32)
    xh = (xf * xs).astype(np.float16).reshape(steps, 32, 16, 2)  # [step, lane, byte, (even, odd) element]
    byte = w.words.detach().cpu().view(torch.uint8).numpy().reshape(n, k // 2)[:, k_lo // 2:k_hi // 2]
    byte = byte.reshape(n, steps, 32, 16)
    hi, lo = _NF4_HALF[byte >> 4], _NF4_HALF[byte & 15]
    zero = np.zeros((n, steps, 32), dtype=np.float16)
    acc2 = [[zero, zero], [zero, zero]]  # [even bytes, odd bytes] x [.x, .y]
    for m in range(16):  # the kernel's order: bytes 0..15 of the lane's 16, alternating accumulators
        s = acc2[m & 1]
        s[0] = _hfma(hi[..., m], xh[None, :, :, m, 0], s[0])
        s[1] = _hfma(lo[..., m], xh[None, :, :, m, 1], s[1])
    f = [[v.astype(np.float32) for v in s] for s in acc2]
    part = (f[0][0] + f[0][1]) + (f[1][0] + f[1][1])  # [n, step, lane] float32
    absmax = w.absmax.detach().cpu().numpy().reshape(n, k // 64)
    block = np.arange(n)[:, None, None] * (k // 64) + (k_lo // 64 + np.arange(steps)[None, :, None] * 16
                                                       + np.arange(32)[None, None, :] // 2)
    code2 = w.code2.detach().cpu().numpy().astype(np.float32)
    s2 = w.absmax2.detach().cpu().numpy().astype(np.float32)
    off = np.float32(w.offset.detach().cpu().item())
    scale = ((code2[absmax.reshape(-1)[block]] * s2[block >> 8]) + off) * unscale
    acc = np.zeros((n, 32), dtype=np.float32)
    for st in range(steps):
        acc = acc + part[:, st] * scale[:, st]
    lanes = np.arange(32)
    for o in (16, 8, 4, 2, 1):  # the warp's butterfly sum
        acc = acc + acc[:, lanes ^ o]
    return acc[:, 0]


def reference_gemv(x_lane: torch.Tensor, ws: Sequence[NF4Weight], split: int = 1) -> np.ndarray:
    """What ``PairKernels.gemv`` returns, computed on the CPU: float32 ``[split, sum of rows]``."""
    k = ws[0].k
    why = supports(k, split)
    if why:
        raise ValueError(why)
    bits = _natural(x_lane)
    per = k // split
    return np.stack([np.concatenate([_rows_dot(bits, w, s * per, (s + 1) * per) for w in ws])
                     for s in range(split)])


def _bf16(v: np.ndarray) -> np.ndarray:
    """float32 -> nearest bf16 (ties to even), as float32 (nf4_pair.cu ``bf16_round``)."""
    b = v.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def reference_gate_up(x_lane: torch.Tensor, gate: NF4Weight, up: NF4Weight, lane_out: bool = False) -> torch.Tensor:
    """What ``PairKernels.gate_up`` returns, computed on the CPU (bf16; expf may differ from numpy's exp in the
    last float32 bit, so the GPU tests allow one bf16 step there)."""
    bits = _natural(x_lane)
    g = _bf16(_rows_dot(bits, gate, 0, gate.k))
    with np.errstate(over="ignore"):  # exp(-g) = inf for very negative g: silu is then -0, as on the GPU
        act = _bf16(g / (np.float32(1.0) + np.exp(-g)))
    y = torch.from_numpy(_bf16(act * _bf16(_rows_dot(bits, up, 0, up.k)))).to(torch.bfloat16)
    return lane_order(y) if lane_out else y
