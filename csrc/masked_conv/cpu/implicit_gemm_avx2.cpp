// AVX2 + FMA implementation of the implicit-GEMM tile and the depthwise kernel (see
// implicit_gemm.h), for x86-64 CPUs without AVX-512 (e.g. AMD Zen 2/3), where the portable
// gather + GEMM path broke even with oneDNN's dense convolution at only 25-66 % computed pixels.
//
// Compiled for AVX2 + FMA through function attributes (setup.py builds for baseline x86-64) and
// only called after the run-time check in kernel_isa(). 16 ymm registers of 8 lanes, so the
// blocking differs from the AVX-512 kernel's:
//   tile: R pixels x NV vectors of 8 output channels in registers, 6 x 2 (a 16-channel panel
//         block: 12 accumulators + 2 weight vectors + 1 broadcast = 15 registers) or 8 x 1 for
//         blocks of <= 8 channels; per input channel NV weight loads + R broadcasts feed R * NV
//         FMAs, so it is FMA-bound with the panel in L1/L2.
//   depthwise: blocks of 16 channels (one 64-byte line: two ymm vectors), two pixels at a time.
#include <cstdint>

#include "masked_conv/cpu/implicit_gemm.h"
#include "masked_conv/cpu/implicit_gemm_isa.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define DL_LIB_HAVE_AVX2_KERNEL 1
#else
#define DL_LIB_HAVE_AVX2_KERNEL 0
#endif

namespace dl_lib {
namespace ops {
namespace cpu {
namespace avx2 {

#if DL_LIB_HAVE_AVX2_KERNEL

namespace {

#define DL_LIB_AVX2 __attribute__((target("avx2,fma")))

// Lane mask selecting the first n (0..8) lanes, for vmaskmovps loads.
DL_LIB_AVX2 inline __m256i prefix_mask(int64_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane);
}

// Stores the first n (1..8) lanes of v at p (contiguous). A full vector is one store; a partial
// one at most three (4, 2, 1 lanes): vmaskmovps stores are microcoded and slow on AMD cores, and
// a memcpy of the lanes was a library call per pixel.
DL_LIB_AVX2 inline void store_prefix(float* p, __m256 v, int64_t n) {
  if (n == 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  __m128 q = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(p, q);
    q = _mm256_extractf128_ps(v, 1);
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), q);
    q = _mm_movehl_ps(q, q);
    p += 2;
    n -= 2;
  }
  if (n == 1) _mm_store_ss(p, q);
}

template <int NV, int R>
DL_LIB_AVX2 void tile_nv(const float* const* a, int64_t taps, int64_t cg, const float* panel,
                         const float* bias, int64_t ncols, float* const* dst,
                         int64_t dst_cstride, const float* const* next, bool stream) {
  static_assert(R * NV <= 12 && R <= kMaxTileRows, "accumulators must fit in registers");
  constexpr int64_t ld = 8 * NV;  // panel row length (panel_width of the block)
  __m256 acc[R][NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const __m256 b = _mm256_loadu_ps(bias + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const float* ar[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) ar[r] = a[r * taps + t];
    const float* w = panel + t * cg * ld;
    if (next != nullptr) {
      // Scattered pixels' taps are short runs the hardware prefetchers do not follow: fetch the
      // next tile's tap t while this one computes (see the AVX-512 kernel).
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const char* p = reinterpret_cast<const char*>(next[r * taps + t]);
        for (int64_t off = 0; off < cg * 4; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
      }
    }
    for (int64_t c = 0; c < cg; ++c, w += ld) {
      __m256 wv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) wv[v] = _mm256_loadu_ps(w + 8 * v);
      // One broadcast at a time, consumed at once (12 + 2 + 1 live registers for 6 x 2).
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 x = _mm256_broadcast_ss(ar[r] + c);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(x, wv[v], acc[r][v]);
      }
    }
  }
  // Lanes of the last vector that hold real output channels (1..8).
  const int64_t tail = ncols - 8 * (NV - 1);
  if (dst_cstride == 1) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (dst[r] == nullptr) continue;
      // Non-temporal stores only for whole, aligned 64-byte lines (a 16-channel block): a half
      // line would leave a partly filled write-combining buffer.
      if (NV == 2 && stream && tail == 8 && (reinterpret_cast<uintptr_t>(dst[r]) & 63) == 0) {
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) _mm256_stream_ps(dst[r] + 8 * v, acc[r][v]);
        continue;
      }
#pragma GCC unroll 2
      for (int v = 0; v < NV - 1; ++v) _mm256_storeu_ps(dst[r] + 8 * v, acc[r][v]);
      store_prefix(dst[r] + 8 * (NV - 1), acc[r][NV - 1], tail);
    }
  } else {
    // NCHW output: channels are Ho*Wo apart, so spill the tile and store element-wise.
    alignas(32) float tmp[R][ld];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) _mm256_store_ps(&tmp[r][8 * v], acc[r][v]);
    }
    for (int r = 0; r < R; ++r) {
      if (dst[r] == nullptr) continue;
      for (int64_t o = 0; o < ncols; ++o) dst[r][o * dst_cstride] = tmp[r][o];
    }
  }
}

// Loads a whole vector at p (full), or lanes [0, n) of it for the lane mask m of n (the other
// lanes read as zeros, and their memory is not touched). `full` is a constant once the callers'
// vector loops are unrolled.
DL_LIB_AVX2 inline __m256 load_vec(bool full, const float* p, __m256i m) {
  return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}

// Prefetches, for each tap s[t] of a pixel, the 64-byte line from channel c that the next channel
// block reads; taps the previous pixel of the chunk (`prev`) already prefetched are skipped (tap
// t of a pixel is tap t + 1 of its left neighbour). See the AVX-512 kernel.
template <int T>
DL_LIB_AVX2 inline void prefetch_taps(const float* const* s, const float* const* prev,
                                      int64_t taps, int64_t c) {
  const int64_t n = T > 0 ? T : taps;
  for (int64_t t = 0; t < n; ++t) {
    if (prev && t + 1 < n && s[t] == prev[t + 1]) continue;
    _mm_prefetch(reinterpret_cast<const char*>(s[t] + c), _MM_HINT_T0);
  }
}

// Stores n lanes (1..8) of a at o[j * cstride].
DL_LIB_AVX2 inline void store_dw(float* o, int64_t cstride, __m256 a, int64_t n) {
  if (cstride == 1) {
    store_prefix(o, a, n);
    return;
  }
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, a);
  for (int64_t j = 0; j < n; ++j) o[j * cstride] = tmp[j];
}

// Stores the V vectors of one pixel's block at o (its first channel); `last` lanes (1..8) of the
// last vector are real channels.
template <int V>
DL_LIB_AVX2 inline void store_block(float* o, int64_t cstride, const __m256* acc, int64_t last,
                                    bool stream) {
  if (cstride == 1 && V == 2 && stream && last == 8 &&
      (reinterpret_cast<uintptr_t>(o) & 63) == 0) {
    _mm256_stream_ps(o, acc[0]);
    _mm256_stream_ps(o + 8, acc[1]);
    return;
  }
  for (int v = 0; v < V; ++v) {
    store_dw(o + 8 * v * cstride, cstride, acc[v], v + 1 == V ? last : 8);
  }
}

// One channel block of depthwise_pixels: V (1 or 2) vectors of 8 channels from c0, the last one
// holding `last` (1..8) channels (FullLast: 8, no masked loads), every pixel of the chunk.
// T = taps when known at compile time (3x3: the 9 x V weight vectors are loop invariants; GCC
// keeps what fits of them in registers and reads the rest from the stack as FMA operands), 0 for
// any count (weights read from L1).
template <int T, int V, bool FullLast>
DL_LIB_AVX2 void depthwise_block(float* const* dst, int64_t dst_cstride, const float* const* src,
                                 int64_t count, int64_t taps, const float* w, const float* bias,
                                 int64_t C, int64_t c0, int64_t last, bool prefetch_next,
                                 bool stream) {
  constexpr int TR = T > 0 ? T : 1;
  const int64_t nt = T > 0 ? T : taps;
  const int64_t stride = nt;
  const __m256i m = prefix_mask(last);
  // Vector v loads in full unless it is the last one of a partial block. (A helper function, not
  // a lambda: lambdas do not inherit the target attribute, so AVX intrinsics in them fail.)
#define DL_LIB_LOAD(v, p) load_vec(FullLast || (v) + 1 < V, (p), m)
  __m256 wr[V][TR];
  if constexpr (T > 0) {
#pragma GCC unroll 9
    for (int t = 0; t < T; ++t) {
      for (int v = 0; v < V; ++v) wr[v][t] = DL_LIB_LOAD(v, w + t * C + c0 + 8 * v);
    }
  }
  __m256 b[V];
  for (int v = 0; v < V; ++v) {
    b[v] = bias ? DL_LIB_LOAD(v, bias + c0 + 8 * v) : _mm256_setzero_ps();
  }
  // The next block's first line (c0 + 16): fetched while this block computes.
  const int64_t next_c = c0 + 8 * V;
  int64_t p = 0;
  if constexpr (T > 0) {
    // Two pixels at a time: 2 * V independent chains of T dependent FMAs in flight.
    constexpr int kPixels = 2;
    for (; p + kPixels <= count; p += kPixels) {
      const float* const* s = src + p * stride;
      if (prefetch_next) {
        for (int q = 0; q < kPixels; ++q) {
          prefetch_taps<T>(s + q * stride, p + q > 0 ? s + (q - 1) * stride : nullptr, nt,
                           next_c);
        }
      }
      __m256 acc[kPixels][V];
      for (int q = 0; q < kPixels; ++q) {
        for (int v = 0; v < V; ++v) acc[q][v] = b[v];
      }
#pragma GCC unroll 9
      for (int t = 0; t < T; ++t) {
        for (int q = 0; q < kPixels; ++q) {
          for (int v = 0; v < V; ++v) {
            const __m256 x = DL_LIB_LOAD(v, s[q * stride + t] + c0 + 8 * v);
            acc[q][v] = _mm256_fmadd_ps(x, wr[v][t], acc[q][v]);
          }
        }
      }
      for (int q = 0; q < kPixels; ++q) {
        store_block<V>(dst[p + q] + c0 * dst_cstride, dst_cstride, acc[q],
                       FullLast ? 8 : last, stream);
      }
    }
  }
  for (; p < count; ++p) {
    const float* const* s = src + p * stride;
    if (prefetch_next) prefetch_taps<T>(s, p > 0 ? s - stride : nullptr, nt, next_c);
    __m256 acc[V];
    for (int v = 0; v < V; ++v) acc[v] = b[v];
#pragma GCC unroll 9
    for (int64_t t = 0; t < nt; ++t) {
      for (int v = 0; v < V; ++v) {
        const __m256 x = DL_LIB_LOAD(v, s[t] + c0 + 8 * v);
        const __m256 wt =
            T > 0 ? wr[v][T > 0 ? t : 0] : DL_LIB_LOAD(v, w + t * C + c0 + 8 * v);
        acc[v] = _mm256_fmadd_ps(x, wt, acc[v]);
      }
    }
    store_block<V>(dst[p] + c0 * dst_cstride, dst_cstride, acc, FullLast ? 8 : last, stream);
  }
#undef DL_LIB_LOAD
}

template <int T>
DL_LIB_AVX2 void depthwise_blocks(float* const* dst, int64_t dst_cstride,
                                  const float* const* src, int64_t count, int64_t taps,
                                  const float* w, const float* bias, int64_t C, bool stream) {
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const int64_t left = C - c0;
    const bool more = left > 16;  // a next block whose first line to prefetch
    if (left >= 16) {
      depthwise_block<T, 2, true>(dst, dst_cstride, src, count, taps, w, bias, C, c0, 8, more,
                                  stream);
    } else if (left > 8) {
      depthwise_block<T, 2, false>(dst, dst_cstride, src, count, taps, w, bias, C, c0, left - 8,
                                   false, stream);
    } else if (left == 8) {
      depthwise_block<T, 1, true>(dst, dst_cstride, src, count, taps, w, bias, C, c0, 8, false,
                                  stream);
    } else {
      depthwise_block<T, 1, false>(dst, dst_cstride, src, count, taps, w, bias, C, c0, left,
                                   false, stream);
    }
  }
}

}  // namespace

void tile(const float* const* a, int64_t taps, int64_t cg, const float* panel, const float* bias,
          int64_t ncols, float* const* dst, int64_t dst_cstride, const float* const* next,
          bool stream) {
  // The row counts must match tile_rows(ncols) in implicit_gemm.h.
  if (ncols > 8) {
    tile_nv<2, 6>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
  } else {
    tile_nv<1, 8>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
  }
}

DL_LIB_AVX2 void depthwise_pixels(float* const* dst, int64_t dst_cstride, const float* const* src,
                                  int64_t count, int64_t taps, const float* w, const float* bias,
                                  int64_t C, bool stream) {
  if (taps == 9) {
    depthwise_blocks<9>(dst, dst_cstride, src, count, taps, w, bias, C, stream);
  } else {
    depthwise_blocks<0>(dst, dst_cstride, src, count, taps, w, bias, C, stream);
  }
}

// Zeros with non-temporal stores (no read-for-ownership of the written lines).
DL_LIB_AVX2 void zero_stream(float* p, int64_t n) {
  const __m256 z = _mm256_setzero_ps();
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 63) != 0) {
    *p++ = 0.f;
    --n;
  }
  for (; n >= 16; n -= 16, p += 16) {
    _mm256_stream_ps(p, z);
    _mm256_stream_ps(p + 8, z);
  }
  for (; n > 0; --n) *p++ = 0.f;
}

#undef DL_LIB_AVX2

#else  // not x86-64 / GCC: never called (kernel_isa() is portable)

void tile(const float* const*, int64_t, int64_t, const float*, const float*, int64_t,
          float* const*, int64_t, const float* const*, bool) {}
void depthwise_pixels(float* const*, int64_t, const float* const*, int64_t, int64_t,
                      const float*, const float*, int64_t, bool) {}
void zero_stream(float*, int64_t) {}

#endif

}  // namespace avx2
}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
