// Batch-1 NF4 matrix-vector products for the decode step, in CUDA C++: two weights per shared-memory load.
//
// Why not Triton (magistral_kit/model/nf4_kernel.py holds the Triton GEMV; the decode step uses this kernel where
// the bench measured it faster: the large gate|up and down launches): that kernel is bound by the SM's L1 data
// pipe, three quarters of whose work is its one-shuffle-per-weight NF4 lookup (bench/GPU.md, bench/nf4_ncu.py).
// Triton cannot lay out a shared-memory table; this kernel does:
//  * the table holds, for each of the 256 byte values, the two NF4 values it encodes as half2, once per
//    shared-memory bank (entry of byte b for lane l at byte b * 256 + l * 4): a warp's 32 lookups never conflict,
//    and one load decodes two weights;
//  * one byte permute (__byte_perm, an intrinsic; there is no inline assembly here) builds the load offset from
//    the packed weight byte and lane * 4;
//  * each lane's 16 pairs per row and 1,024-element step are summed by HFMA2 in half precision (two
//    accumulators, even and odd bytes), then scaled by the double-quantized absmax and added in float32.
// magistral_kit/model/nf4_cuda.py compiles this file (NVRTC), launches it, and holds `reference_gemv` /
// `reference_gate_up`, the same arithmetic in numpy, operation for operation, which CI checks on the CPU; the GPU
// tests check this kernel against it bit for bit. The float32 steps use __fmul_rn / __fadd_rn so that no
// multiply-add is contracted into an FMA the reference would have to guess.
//
// Half precision has a smaller range than the bf16 activations: each warp first finds max |x| over the K range
// it reads and, when that is 2^XMAX_EXP or more, scales x down by a power of two (exact) before converting it to
// half, folding the power back into the float32 absmax scale. Partial sums then stay below 8 * 2^XMAX_EXP.
//
// Layout read (bitsandbytes' own, nothing converted): packed NF4, high nibble first; uint8 absmax per 64
// weights with float32 second-level scales per 256 blocks, a dynamic-map code2 and an offset. x is bf16 in
// lane order (nf4_kernel.lane_order): lane t's 32 elements of a 1,024-element step arrive as four 16-byte loads,
// each a contiguous 512-byte read of the whole warp. Lane t owns the 16 packed bytes (32 weights, half an absmax
// block) at t * 16 of each row's step. R rows per warp, 8 warps per block, row groups in a grid-stride loop,
// blockIdx.y is the K split.
#include <cuda_fp16.h>

#define XMAX_EXP 12
#define WARPS 8

__constant__ float NF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
  -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f,
  0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
  0.7229568362236023f, 1.0f};

struct Args {                      // mirrored by nf4_cuda._Args (ctypes): keep the order
  const uint4* w[3];               // packed NF4 of up to three weights that share x (q, k, v), as 16-byte words
  const unsigned char* a[3];       // uint8 absmax, one per 64 weights
  const float* s2[3];              // float32 second-level scale, one per 256 absmax entries
  const float* off[3];             // float32 offset (a scalar on the device)
  int n[3];                        // rows of each weight (0 for an unused slot)
  const float* code2;              // the 256-entry dynamic map of the absmax
  const uint4* x;                  // bf16 x in lane order
  void* out;                       // gemv: float32 [splits, n_total]; gate_up: bf16 [n]
  int k, k_split, n_total, lane_out;
};

__device__ __forceinline__ void fill_table(__half2* tab) {
  // entry of byte value b for lane l at byte offset b * 256 + l * 4 (the upper 128 bytes of each 256 are unused:
  // the permute puts b at bits 8..15); .x = element 2j (high nibble), .y = 2j + 1
  for (int i = threadIdx.x; i < 256 * 32; i += blockDim.x) {
    const int b = i >> 5, l = i & 31;
    tab[b * 64 + l] = __floats2half2_rn(NF4[b >> 4], NF4[b & 15]);
  }
  __syncthreads();
}

// The power of two this warp scales x down by: 0 unless max |x| over [k_lo, k_hi) is 2^XMAX_EXP or more. The
// loads are unrolled so that they are in flight together (a rolled loop would wait out one latency per load).
__device__ __forceinline__ int x_shift(const uint4* __restrict__ x, int k_lo, int k_hi, int lane) {
  unsigned m = 0;
#pragma unroll 8
  for (int i = k_lo / 8 + lane; i < k_hi / 8; i += 32) {
    const uint4 v = x[i];
    m = __vmaxu2(m, __vmaxu2(__vmaxu2(v.x & 0x7fff7fffu, v.y & 0x7fff7fffu),
                             __vmaxu2(v.z & 0x7fff7fffu, v.w & 0x7fff7fffu)));
  }
  m = __reduce_max_sync(0xffffffffu, max(m & 0xffffu, m >> 16));
  const int e = (int)(m >> 7) - 126;  // max |x| < 2^e (bf16 exponent field; inf and NaN give 129)
  return min(max(e - XMAX_EXP, 0), 120);
}

__device__ __forceinline__ float pow2(int e) { return __int_as_float((127 + e) << 23); }  // |e| <= 126

// One warp's float32 dot products of R rows with x over [k_lo, k_hi) (whole 1,024-element steps). Row r's lane
// words start at wp[r]; ai[r] is the index of the lane's absmax block at k_lo in a[r] (and, >> 8, of its scale in
// s2[r]). x is scaled down by 2^-shift into half range; 2^shift goes into the float32 scale.
template <int R, bool SCALED>
__device__ __forceinline__ void dot_rows(float (&acc)[R], const uint4* const (&wp)[R], const int (&ai)[R],
    const unsigned char* const (&a)[R], const float* const (&s2)[R], const float (&off)[R],
    const float* __restrict__ code2, const uint4* __restrict__ x, int k_lo, int k_hi, int lane, int shift,
    const char* tb) {
  const unsigned lane4 = lane * 4;
  const float xs = pow2(-shift), unscale = pow2(shift);
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  const uint4* xp = x + k_lo / 8 + lane;
  for (int step = 0; step < (k_hi - k_lo) / 1024; step++, xp += 128) {
    __half2 x2[16];
#pragma unroll
    for (int c = 0; c < 4; c++) {
      const uint4 v = xp[c * 32];
      const unsigned w4[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; j++) {  // bf16 pair -> two floats (exact) -> [scaled (exact)] -> half2 (rounded)
        const float lo = __uint_as_float(w4[j] << 16), hi = __uint_as_float(w4[j] & 0xffff0000u);
        x2[c * 4 + j] = SCALED ? __floats2half2_rn(__fmul_rn(lo, xs), __fmul_rn(hi, xs)) : __floats2half2_rn(lo, hi);
      }
    }
    uint4 cur[R];
    float scale[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
      cur[r] = wp[r][step * 32];
      const int bi = ai[r] + step * 16;
      const float sc = __fadd_rn(__fmul_rn(code2[a[r][bi]], s2[r][bi >> 8]), off[r]);
      scale[r] = SCALED ? __fmul_rn(sc, unscale) : sc;
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
      const unsigned ww[4] = {cur[r].x, cur[r].y, cur[r].z, cur[r].w};
      __half2 sa = __float2half2_rn(0.f), sb = __float2half2_rn(0.f);
#pragma unroll
      for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
          // byte q of the word in bits 8..15, lane * 4 in bits 0..7: the entry's offset in one permute
          const unsigned o = __byte_perm(ww[j], lane4, 0x5504u | (q << 4));
          const __half2 p = *reinterpret_cast<const __half2*>(tb + o);
          if (q & 1) sb = __hfma2(p, x2[j * 4 + q], sb);
          else sa = __hfma2(p, x2[j * 4 + q], sa);
        }
      }
      const float2 fa = __half22float2(sa), fb = __half22float2(sb);
      acc[r] = __fadd_rn(acc[r], __fmul_rn(__fadd_rn(__fadd_rn(fa.x, fa.y), __fadd_rn(fb.x, fb.y)), scale[r]));
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
#pragma unroll
    for (int o = 16; o; o >>= 1) acc[r] = __fadd_rn(acc[r], __shfl_xor_sync(0xffffffffu, acc[r], o));
  }
}

// Row `row` (of all weights concatenated) -> its weight slot and its row inside that weight.
__device__ __forceinline__ int slot_of(const Args& p, int& row) {
  if (row < p.n[0]) return 0;
  row -= p.n[0];
  if (row < p.n[1]) return 1;
  row -= p.n[1];
  return 2;
}

// out[blockIdx.y, row] = the sum over this split's K range of row . x, for the rows of up to three weights.
template <int R>
__device__ __forceinline__ void gemv(const Args& p) {
  extern __shared__ __half2 tab[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int k_lo = blockIdx.y * p.k_split, k_hi = min(k_lo + p.k_split, p.k);
  const int sh = x_shift(p.x, k_lo, k_hi, lane);  // its loads overlap the table's stores
  fill_table(tab);
  const char* tb = reinterpret_cast<const char*>(tab);
  float* out = static_cast<float*>(p.out) + (size_t)blockIdx.y * p.n_total;
  for (int row0 = (blockIdx.x * WARPS + warp) * R; row0 < p.n_total; row0 += gridDim.x * WARPS * R) {
    const uint4* wp[R];
    int ai[R];
    const unsigned char* a[R];
    const float* s2[R];
    float off[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
      int row = min(row0 + r, p.n_total - 1);
      const int s = slot_of(p, row);
      wp[r] = p.w[s] + (size_t)row * (p.k / 32) + k_lo / 32 + lane;
      ai[r] = row * (p.k / 64) + k_lo / 64 + lane / 2;
      a[r] = p.a[s];
      s2[r] = p.s2[s];
      off[r] = *p.off[s];
    }
    float acc[R];
    if (sh) dot_rows<R, true>(acc, wp, ai, a, s2, off, p.code2, p.x, k_lo, k_hi, lane, sh, tb);
    else dot_rows<R, false>(acc, wp, ai, a, s2, off, p.code2, p.x, k_lo, k_hi, lane, sh, tb);
#pragma unroll
    for (int r = 0; r < R; r++)
      if (lane == r && row0 + r < p.n_total) out[row0 + r] = acc[r];
  }
}

__device__ __forceinline__ float bf16_round(float v) {  // float32 -> nearest bf16 (ties to even), as float32
  const unsigned b = __float_as_uint(v);
  return __uint_as_float((b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u);
}

// out[row] = bf16 silu(gate . x) * (up . x), rounded where transformers' bf16 module path rounds (as the Triton
// gate_up kernel); weight slot 0 is gate, slot 1 is up. lane_out: stored in lane order for the down GEMV.
template <int R>
__device__ __forceinline__ void gate_up(const Args& p) {
  extern __shared__ __half2 tab[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sh = x_shift(p.x, 0, p.k, lane);
  fill_table(tab);
  const char* tb = reinterpret_cast<const char*>(tab);
  const int n = p.n[0];
  for (int row0 = (blockIdx.x * WARPS + warp) * R; row0 < n; row0 += gridDim.x * WARPS * R) {
    const uint4* wp[2 * R];
    int ai[2 * R];
    const unsigned char* a[2 * R];
    const float* s2[2 * R];
    float off[2 * R];
#pragma unroll
    for (int r = 0; r < 2 * R; r++) {
      const int s = r < R ? 0 : 1;
      const int row = min(row0 + (r % R), n - 1);
      wp[r] = p.w[s] + (size_t)row * (p.k / 32) + lane;
      ai[r] = row * (p.k / 64) + lane / 2;
      a[r] = p.a[s];
      s2[r] = p.s2[s];
      off[r] = *p.off[s];
    }
    float acc[2 * R];
    if (sh) dot_rows<2 * R, true>(acc, wp, ai, a, s2, off, p.code2, p.x, 0, p.k, lane, sh, tb);
    else dot_rows<2 * R, false>(acc, wp, ai, a, s2, off, p.code2, p.x, 0, p.k, lane, sh, tb);
#pragma unroll
    for (int r = 0; r < R; r++) {
      const int row = row0 + r;
      if (lane == r && row < n) {
        const float g = bf16_round(acc[r]);
        const float act = bf16_round(g / (1.0f + expf(-g)));
        const float y = bf16_round(act * bf16_round(acc[R + r]));
        const int e = row % 1024;
        const int pos = p.lane_out ? row - e + (e % 32 / 8) * 256 + (e / 32) * 8 + e % 8 : row;
        static_cast<unsigned short*>(p.out)[pos] = (unsigned short)(__float_as_uint(y) >> 16);
      }
    }
  }
}

#define GEMV(R) extern "C" __global__ void __launch_bounds__(WARPS * 32, 2) nf4_gemv_r##R(const Args p) { gemv<R>(p); }
#define GATE_UP(R) \
  extern "C" __global__ void __launch_bounds__(WARPS * 32, 2) nf4_gate_up_r##R(const Args p) { gate_up<R>(p); }
GEMV(2)
GEMV(4)
GATE_UP(2)
GATE_UP(4)
