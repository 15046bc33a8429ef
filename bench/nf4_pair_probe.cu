// Probe, not product code: an NF4 matrix-vector product in CUDA C++ that decodes two weights per shared-memory
// load, run by bench/nf4_pair_probe.py against the kit's Triton GEMV (magistral_kit/model/nf4_kernel.py).
//
// Why: Nsight Compute shows the Triton GEMV bound by the SM's L1 data pipe, three quarters of whose work is the
// one-shuffle-per-weight NF4 lookup (bench/GPU.md). Triton cannot lay out a shared-memory table, so this probe
// asks whether a table the kernel lays out itself lifts that ceiling:
//  * the table holds, for each of the 256 byte values, the pair of NF4 values it encodes as half2, once per
//    shared-memory bank (entry of byte b for lane l at byte b * 256 + l * 4): a warp's 32 lookups never conflict,
//    and one load decodes two weights;
//  * one byte permute (__byte_perm, a CUDA intrinsic) builds the whole load offset from the packed weight byte
//    and lane * 4;
//  * each lane's 16 pairs per row and 1,024-element step are summed by HFMA2 in half precision (two
//    accumulators), then scaled by the double-quantized absmax and added in float32.
// Same bitsandbytes layout as the Triton kernel: packed NF4, high nibble first; uint8 absmax per 64 weights with
// float32 second-level scales per 256 blocks and an offset. x is bf16 in natural order. R rows per warp,
// 8 warps per block, rows in a grid-stride loop; no K split (one warp reads a whole row).
#include <cuda_fp16.h>
__constant__ float NF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
  -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f,
  0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
  0.7229568362236023f, 1.0f};

template <int R>
__device__ __forceinline__ void body(const uint4* __restrict__ W, const unsigned char* __restrict__ A,
    const float* __restrict__ code2, const float* __restrict__ S2, const float* __restrict__ offp,
    const uint4* __restrict__ X, float* __restrict__ out, int N, int K) {
  extern __shared__ __half2 tab[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // entry of byte value b for lane l at byte offset b * 256 + l * 4 (bank l: a warp's lookups never conflict)
  for (int i = tid; i < 256 * 32; i += blockDim.x) {
    int b = i >> 5, l = i & 31;
    tab[b * 64 + l] = __floats2half2_rn(NF4[b >> 4], NF4[b & 15]);  // .x = element 2j (high nibble), .y = 2j+1
  }
  __syncthreads();
  const float off = *offp;
  const unsigned lane4 = lane * 4;
  const char* tb = reinterpret_cast<const char*>(tab);
  const int kw16 = K / 32;
  const int nwarps = blockDim.x >> 5;
  for (int row0 = (blockIdx.x * nwarps + warp) * R; row0 < N; row0 += gridDim.x * nwarps * R) {
    float acc[R];
    const uint4* wp[R];
    int bi0[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
      acc[r] = 0.f;
      const int row = min(row0 + r, N - 1);
      wp[r] = W + (size_t)row * kw16 + lane;
      bi0[r] = (int)(((size_t)row * K) >> 6) + (lane >> 1);
    }
    const uint4* xp = X + lane * 4;
    for (int k0 = 0; k0 < K; k0 += 1024, xp += 128) {
      __half2 x2[16];
#pragma unroll
      for (int c = 0; c < 4; c++) {
        uint4 v = xp[c];
        unsigned w4[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++)
          x2[c * 4 + j] = __floats2half2_rn(__uint_as_float(w4[j] << 16), __uint_as_float(w4[j] & 0xffff0000u));
      }
      uint4 wv[R];
      float scale[R];
#pragma unroll
      for (int r = 0; r < R; r++) {
        wv[r] = *wp[r];
        wp[r] += 32;
        const int bi = bi0[r] + (k0 >> 6);
        scale[r] = code2[A[bi]] * S2[bi >> 8] + off;
      }
#pragma unroll
      for (int r = 0; r < R; r++) {
        unsigned ww[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
        __half2 s2a = __float2half2_rn(0.f), s2b = __float2half2_rn(0.f);
#pragma unroll
        for (int j = 0; j < 4; j++) {
#pragma unroll
          for (int q = 0; q < 4; q++) {
            // one PRMT builds the whole offset: byte q of the weights in bits 8..15, lane * 4 in bits 0..7
            const unsigned o = __byte_perm(ww[j], lane4, 0x5504u | (q << 4));
            const __half2 p = *reinterpret_cast<const __half2*>(tb + o);
            if (q & 1) s2b = __hfma2(p, x2[j * 4 + q], s2b);
            else s2a = __hfma2(p, x2[j * 4 + q], s2a);
          }
        }
        const float2 fa = __half22float2(s2a), fb = __half22float2(s2b);
        acc[r] = fmaf((fa.x + fa.y) + (fb.x + fb.y), scale[r], acc[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
      float v = acc[r];
#pragma unroll
      for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && row0 + r < N) out[row0 + r] = v;
    }
  }
}

#define DEF(R) extern "C" __global__ void __launch_bounds__(256) nf4_h3_r##R(const uint4* W, \
    const unsigned char* A, const float* code2, const float* S2, const float* offp, const uint4* X, float* out, \
    int N, int K) { body<R>(W, A, code2, S2, offp, X, out, N, K); }
DEF(2)
DEF(4)
DEF(8)
