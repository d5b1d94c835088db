// AVX-512 implementation of the implicit-GEMM tile (see implicit_gemm.h).
//
// setup.py compiles for the baseline x86-64 ISA, so the kernel is compiled for AVX-512F through a
// function attribute and only called after a run-time CPU check. Register blocking: 6 pixels x
// NV vectors of 16 output channels stay in registers for the whole reduction (taps x channels);
// per input channel the kernel loads NV weight vectors and broadcasts one input value per pixel,
// i.e. 6*NV FMAs for NV + 6 loads, so for NV = 4 it is FMA-bound with the panel streaming from L2.
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

template <int NV>
__attribute__((target("avx512f"))) void tile_nv(const float* const* a, int64_t taps, int64_t cg,
                                                const float* panel, const float* bias,
                                                int64_t ncols, float* const* dst,
                                                int64_t dst_cstride, const float* const* next) {
  constexpr int R = kTileRows;
  constexpr int64_t ld = 16 * NV;  // panel row length
  __m512 acc[R][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const __m512 b = _mm512_loadu_ps(bias + 16 * v);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const float* a0 = a[0 * taps + t];
    const float* a1 = a[1 * taps + t];
    const float* a2 = a[2 * taps + t];
    const float* a3 = a[3 * taps + t];
    const float* a4 = a[4 * taps + t];
    const float* a5 = a[5 * taps + t];
    const float* w = panel + t * cg * ld;
    if (next != nullptr) {
      // The taps of scattered active pixels are short runs at unrelated addresses that the
      // hardware prefetchers do not follow; fetch the next tile's tap t while this one computes.
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const char* p = reinterpret_cast<const char*>(next[r * taps + t]);
        for (int64_t off = 0; off < cg * 4; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
      }
    }
    for (int64_t c = 0; c < cg; ++c, w += ld) {
      __m512 wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
      const __m512 x0 = _mm512_set1_ps(a0[c]);
      const __m512 x1 = _mm512_set1_ps(a1[c]);
      const __m512 x2 = _mm512_set1_ps(a2[c]);
      const __m512 x3 = _mm512_set1_ps(a3[c]);
      const __m512 x4 = _mm512_set1_ps(a4[c]);
      const __m512 x5 = _mm512_set1_ps(a5[c]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[0][v] = _mm512_fmadd_ps(x0, wv[v], acc[0][v]);
        acc[1][v] = _mm512_fmadd_ps(x1, wv[v], acc[1][v]);
        acc[2][v] = _mm512_fmadd_ps(x2, wv[v], acc[2][v]);
        acc[3][v] = _mm512_fmadd_ps(x3, wv[v], acc[3][v]);
        acc[4][v] = _mm512_fmadd_ps(x4, wv[v], acc[4][v]);
        acc[5][v] = _mm512_fmadd_ps(x5, wv[v], acc[5][v]);
      }
    }
  }
  // Lanes of the last vector that hold real output channels.
  const int64_t tail = ncols - 16 * (NV - 1);
  const __mmask16 last = static_cast<__mmask16>((1u << tail) - 1u);
  if (dst_cstride == 1) {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      if (dst[r] == nullptr) continue;
#pragma GCC unroll 4
      for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(dst[r] + 16 * v, acc[r][v]);
      _mm512_mask_storeu_ps(dst[r] + 16 * (NV - 1), last, acc[r][NV - 1]);
    }
  } else {
    // NCHW output: channels are Ho*Wo apart, so spill the tile and store element-wise.
    alignas(64) float tmp[R][ld];
#pragma GCC unroll 6
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
__attribute__((target("avx512f"))) void depthwise_pixel(float* dst, int64_t dst_cstride,
                                                        const float* const* src, const float* w,
                                                        const float* bias, int64_t taps,
                                                        int64_t C) {
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
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
  switch ((ncols + 15) / 16) {
    case 1:
      return tile_nv<1>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
    case 2:
      return tile_nv<2>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
    case 3:
      return tile_nv<3>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
    default:
      return tile_nv<4>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next);
  }
}

#else  // no AVX-512 kernel on this compiler/architecture

bool implicit_gemm_available() { return false; }

void depthwise_pixel(float*, int64_t, const float* const*, const float*, const float*, int64_t,
                     int64_t) {}

void zero_stream(float*, int64_t) {}

void stream_fence() {}

void implicit_gemm_tile(const float* const*, int64_t, int64_t, const float*, const float*,
                        int64_t, float* const*, int64_t, const float* const*) {}

#endif

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
