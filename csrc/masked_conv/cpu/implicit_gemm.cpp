// AVX-512 implementation of the implicit-GEMM tile (see implicit_gemm.h).
//
// setup.py compiles for the baseline x86-64 ISA, so the kernel is compiled for AVX-512F through a
// function attribute and only called after a run-time CPU check. Register blocking: R pixels x
// NV vectors of 16 output channels stay in registers for the whole reduction (taps x channels);
// per input channel the kernel loads NV weight vectors and broadcasts one input value per pixel,
// i.e. R*NV FMAs for NV + R loads, so it is FMA-bound with the panel streaming from L2.
#include "masked_conv/cpu/implicit_gemm.h"

#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define DL_LIB_HAVE_AVX512_KERNEL 1
#else
#define DL_LIB_HAVE_AVX512_KERNEL 0
#endif

namespace dl_lib {
namespace ops {
namespace cpu {

#if DL_LIB_HAVE_AVX512_KERNEL

namespace {

template <int NV, int R>
__attribute__((target("avx512f"))) void tile_nv(const float* const* a, int64_t taps, int64_t cg,
                                                const float* panel, const float* bias,
                                                int64_t ncols, float* const* dst,
                                                int64_t dst_cstride, const float* const* next) {
  static_assert(R * NV <= 24 && R <= kMaxTileRows, "accumulators must fit in registers");
  constexpr int64_t ld = 16 * NV;  // panel row length
  __m512 acc[R][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const __m512 b = _mm512_loadu_ps(bias + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const float* ar[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) ar[r] = a[r * taps + t];
    const float* w = panel + t * cg * ld;
    if (next != nullptr) {
      // The taps of scattered active pixels are short runs at unrelated addresses that the
      // hardware prefetchers do not follow; fetch the next tile's tap t while this one computes.
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const char* p = reinterpret_cast<const char*>(next[r * taps + t]);
        for (int64_t off = 0; off < cg * 4; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
      }
    }
    for (int64_t c = 0; c < cg; ++c, w += ld) {
      __m512 wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
      // One broadcast at a time, consumed at once: broadcasting all R inputs first (as an
      // earlier version did) needs R + NV + R*NV > 32 live registers for R=6, NV=4, and GCC
      // then kept two accumulators on the stack (an FMA with a memory operand and a store per
      // iteration), running at about half of the FMA peak.
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 x = _mm512_set1_ps(ar[r][c]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(x, wv[v], acc[r][v]);
      }
    }
  }
  // Lanes of the last vector that hold real output channels.
  const int64_t tail = ncols - 16 * (NV - 1);
  const __mmask16 last = static_cast<__mmask16>((1u << tail) - 1u);
  if (dst_cstride == 1) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (dst[r] == nullptr) continue;
#pragma GCC unroll 4
      for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(dst[r] + 16 * v, acc[r][v]);
      _mm512_mask_storeu_ps(dst[r] + 16 * (NV - 1), last, acc[r][NV - 1]);
    }
  } else {
    // NCHW output: channels are Ho*Wo apart, so spill the tile and store element-wise.
    alignas(64) float tmp[R][ld];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm512_store_ps(&tmp[r][16 * v], acc[r][v]);
    }
    for (int r = 0; r < R; ++r) {
      if (dst[r] == nullptr) continue;
      for (int64_t o = 0; o < ncols; ++o) dst[r][o * dst_cstride] = tmp[r][o];
    }
  }
}

}  // namespace

// Written with intrinsics: GCC's auto-vectorised version of this loop (a generic 16-lane
// accumulator array) came out as scalar moves through the stack and ran ~5x slower.
// 64 channels (4 independent accumulators) per pass over the taps: with one 16-lane accumulator
// the taps form a chain of dependent FMAs (4 cycles each) that bounded the loop by latency.
__attribute__((target("avx512f"))) void depthwise_pixel(float* dst, int64_t dst_cstride,
                                                        const float* const* src, const float* w,
                                                        const float* bias, int64_t taps,
                                                        int64_t C) {
  int64_t c0 = 0;
  if (dst_cstride == 1) {
    for (; c0 + 64 <= C; c0 += 64) {
      __m512 acc[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        acc[v] = bias ? _mm512_loadu_ps(bias + c0 + 16 * v) : _mm512_setzero_ps();
      }
      for (int64_t t = 0; t < taps; ++t) {
        const float* s = src[t];
        if (s == nullptr) continue;
        const float* wt = w + t * C + c0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
          acc[v] = _mm512_fmadd_ps(_mm512_loadu_ps(s + c0 + 16 * v), _mm512_loadu_ps(wt + 16 * v),
                                   acc[v]);
        }
      }
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) _mm512_storeu_ps(dst + c0 + 16 * v, acc[v]);
    }
  }
  for (; c0 < C; c0 += 16) {
    const int64_t nc = C - c0 < 16 ? C - c0 : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << nc) - 1u);
    __m512 acc = bias ? _mm512_maskz_loadu_ps(m, bias + c0) : _mm512_setzero_ps();
    for (int64_t t = 0; t < taps; ++t) {
      if (src[t] == nullptr) continue;
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, src[t] + c0),
                            _mm512_maskz_loadu_ps(m, w + t * C + c0), acc);
    }
    if (dst_cstride == 1) {
      _mm512_mask_storeu_ps(dst + c0, m, acc);
    } else {
      alignas(64) float tmp[16];
      _mm512_store_ps(tmp, acc);
      for (int64_t j = 0; j < nc; ++j) dst[(c0 + j) * dst_cstride] = tmp[j];
    }
  }
}

__attribute__((target("avx512f"))) void depthwise_run3x3(float* dst, int64_t dst_pstride,
                                                         const float* const* rows,
                                                         int64_t src_pstride, const float* w,
                                                         const float* bias, int64_t C) {
  constexpr int P = kDepthwiseRun;
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const int64_t nc = C - c0 < 16 ? C - c0 : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << nc) - 1u);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + c0) : _mm512_setzero_ps();
    __m512 acc[P];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) acc[p] = b;
    for (int ky = 0; ky < 3; ++ky) {
      const float* row = rows[ky];
      if (row == nullptr) continue;
      const float* wr = w + ky * 3 * C + c0;
      const __m512 w0 = _mm512_maskz_loadu_ps(m, wr);
      const __m512 w1 = _mm512_maskz_loadu_ps(m, wr + C);
      const __m512 w2 = _mm512_maskz_loadu_ps(m, wr + 2 * C);
      // Input column j feeds pixel p through tap kx = j - p.
#pragma GCC unroll 6
      for (int j = 0; j < P + 2; ++j) {
        const __m512 x = _mm512_maskz_loadu_ps(m, row + j * src_pstride + c0);
        if (j < P) acc[j] = _mm512_fmadd_ps(x, w0, acc[j]);
        if (j >= 1 && j - 1 < P) acc[j - 1] = _mm512_fmadd_ps(x, w1, acc[j - 1]);
        if (j >= 2) acc[j - 2] = _mm512_fmadd_ps(x, w2, acc[j - 2]);
      }
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) _mm512_mask_storeu_ps(dst + p * dst_pstride + c0, m, acc[p]);
  }
}

// Most of a sparse layer's output is zeros; plain stores would first read every line in (write
// allocate), doubling the memory traffic of what is the dominant cost of depthwise/1x1 layers.
__attribute__((target("avx512f"))) void zero_stream(float* p, int64_t n) {
  const __m512 z = _mm512_setzero_ps();
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 63) != 0) {
    *p++ = 0.f;
    --n;
  }
  for (; n >= 16; n -= 16, p += 16) _mm512_stream_ps(p, z);
  for (; n > 0; --n) *p++ = 0.f;
}

void stream_fence() { _mm_sfence(); }

bool implicit_gemm_available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

void implicit_gemm_tile(const float* const* a, int64_t taps, int64_t cg, const float* panel,
                        const float* bias, int64_t ncols, float* const* dst,
                        int64_t dst_cstride, const float* const* next) {
  // The row counts must match tile_rows(ncols) in implicit_gemm.h.
  switch ((ncols + 15) / 16) {
    case 1:
      return tile_nv<1, 8>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
    case 2:
      return tile_nv<2, 8>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
    case 3:
      return tile_nv<3, 8>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
    default:
      return tile_nv<4, 6>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
  }
}

#else  // no AVX-512 kernel on this compiler/architecture

bool implicit_gemm_available() { return false; }

void depthwise_pixel(float*, int64_t, const float* const*, const float*, const float*, int64_t,
                     int64_t) {}

void depthwise_run3x3(float*, int64_t, const float* const*, int64_t, const float*, const float*,
                      int64_t) {}

void zero_stream(float*, int64_t) {}

void stream_fence() {}

void implicit_gemm_tile(const float* const*, int64_t, int64_t, const float*, const float*,
                        int64_t, float* const*, int64_t, const float* const*) {}

#endif

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
