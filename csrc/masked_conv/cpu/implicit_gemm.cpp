// AVX-512 implementation of the implicit-GEMM tile (see implicit_gemm.h), and the run-time choice
// between it, the AVX2 one (implicit_gemm_avx2.cpp) and none (the portable paths).
//
// setup.py compiles for the baseline x86-64 ISA, so the kernel is compiled for AVX-512F through a
// function attribute and only called after a run-time CPU check. Register blocking: R pixels x
// NV vectors of 16 output channels stay in registers for the whole reduction (taps x channels);
// per input channel the kernel loads NV weight vectors and broadcasts one input value per pixel,
// i.e. R*NV FMAs for NV + R loads, so it is FMA-bound with the panel streaming from L2.
#include "masked_conv/cpu/implicit_gemm.h"

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "masked_conv/cpu/implicit_gemm_isa.h"

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
                                                int64_t dst_cstride, const float* const* next,
                                                bool stream) {
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
      if (stream && tail == 16 && (reinterpret_cast<uintptr_t>(dst[r]) & 63) == 0) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) _mm512_stream_ps(dst[r] + 16 * v, acc[r][v]);
        continue;
      }
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
namespace {

// Prefetches, for each tap s[t] of a pixel, the `lines` 64-byte lines from channel c that the
// next channel block will read: a block's loads all miss otherwise, since every block reads new
// lines of scattered pixels that no hardware prefetcher predicts. Taps that the previous pixel
// of the chunk (`prev`, or nullptr) already prefetched are skipped: tap t of a pixel is tap t + 1
// of its left neighbour, so a run of neighbours prefetches one kernel column per pixel instead of
// all taps (prefetches share the load ports with the FMAs' operands).
template <int T>
__attribute__((target("avx512f"))) inline void prefetch_taps(const float* const* s,
                                                             const float* const* prev,
                                                             int64_t taps, int64_t c,
                                                             int64_t lines) {
  const int64_t n = T > 0 ? T : taps;
  for (int64_t t = 0; t < n; ++t) {
    if (prev && t + 1 < n && s[t] == prev[t + 1]) continue;
    for (int64_t l = 0; l < lines; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(s[t] + c + 16 * l), _MM_HINT_T0);
    }
  }
}

// Stores the channels of `a` selected by mask `mv` (a prefix) at o[j * cstride]: non-temporal
// when asked and the 16 channels fill an aligned line.
__attribute__((target("avx512f"))) inline void store_channels(float* o, int64_t cstride,
                                                              __m512 a, __mmask16 mv,
                                                              bool stream) {
  if (cstride == 1) {
    if (stream && mv == 0xffff && (reinterpret_cast<uintptr_t>(o) & 63) == 0) {
      _mm512_stream_ps(o, a);
    } else {
      _mm512_mask_storeu_ps(o, mv, a);
    }
    return;
  }
  alignas(64) float tmp[16];
  _mm512_store_ps(tmp, a);
  const int nc = __builtin_popcount(mv);
  for (int j = 0; j < nc; ++j) o[j * cstride] = tmp[j];
}

// One channel block of depthwise_pixels: V (1 or 2) vectors of 16 channels from c0 (the last
// vector masked by m), every pixel of the chunk. T = taps when known at compile time (the
// weights then stay in registers: 9 x 2 vectors for 3x3), 0 for any count (read from L1).
template <int T, int V>
__attribute__((target("avx512f"))) void depthwise_block(float* const* dst, int64_t dst_cstride,
                                                        const float* const* src, int64_t count,
                                                        int64_t taps, const float* w,
                                                        const float* bias, int64_t C, int64_t c0,
                                                        __mmask16 m, int64_t next_lines,
                                                        bool stream) {
  constexpr int TR = T > 0 ? T : 1;  // weight registers per vector
  const int64_t nt = T > 0 ? T : taps;
  const int64_t stride = nt;
  __m512 wr[V][TR];
  if constexpr (T > 0) {
#pragma GCC unroll 9
    for (int t = 0; t < T; ++t) {
      for (int v = 0; v < V; ++v) {
        wr[v][t] = _mm512_maskz_loadu_ps(v + 1 == V ? m : 0xffff, w + t * C + c0 + 16 * v);
      }
    }
  }
  __m512 b[V];
  for (int v = 0; v < V; ++v) {
    b[v] = bias ? _mm512_maskz_loadu_ps(v + 1 == V ? m : 0xffff, bias + c0 + 16 * v)
                : _mm512_setzero_ps();
  }
  int64_t p = 0;
  if constexpr (T > 0) {
    // Two pixels at a time: their 2 * V accumulators are independent chains of T dependent FMAs
    // (4 cycles each), twice as many in flight as one pixel's. Single-threaded, on an
    // L2-resident 128-channel layer at d = 1: 49 ns per pixel, against 58 for one pixel at a
    // time and 64 for four (which spill: T * V weights + 4 * V accumulators > 32 registers).
    constexpr int kPixels = 2;
    for (; p + kPixels <= count; p += kPixels) {
      const float* const* s = src + p * stride;
      if (next_lines > 0) {
        for (int q = 0; q < kPixels; ++q) {
          prefetch_taps<T>(s + q * stride, p + q > 0 ? s + (q - 1) * stride : nullptr, nt,
                           c0 + 16 * V, next_lines);
        }
      }
      __m512 acc[kPixels][V];
      for (int q = 0; q < kPixels; ++q) {
        for (int v = 0; v < V; ++v) acc[q][v] = b[v];
      }
#pragma GCC unroll 9
      for (int t = 0; t < T; ++t) {
        for (int q = 0; q < kPixels; ++q) {
          for (int v = 0; v < V; ++v) {
            const __mmask16 mv = v + 1 == V ? m : 0xffff;
            const __m512 x = _mm512_maskz_loadu_ps(mv, s[q * stride + t] + c0 + 16 * v);
            acc[q][v] = _mm512_fmadd_ps(x, wr[v][t], acc[q][v]);
          }
        }
      }
      for (int q = 0; q < kPixels; ++q) {
        for (int v = 0; v < V; ++v) {
          store_channels(dst[p + q] + (c0 + 16 * v) * dst_cstride, dst_cstride, acc[q][v],
                         v + 1 == V ? m : 0xffff, stream);
        }
      }
    }
  }
  for (; p < count; ++p) {
    const float* const* s = src + p * stride;
    if (next_lines > 0) {
      prefetch_taps<T>(s, p > 0 ? s - stride : nullptr, nt, c0 + 16 * V, next_lines);
    }
    __m512 acc[V];
    for (int v = 0; v < V; ++v) acc[v] = b[v];
#pragma GCC unroll 9
    for (int64_t t = 0; t < nt; ++t) {
      for (int v = 0; v < V; ++v) {
        const __mmask16 mv = v + 1 == V ? m : 0xffff;
        const __m512 x = _mm512_maskz_loadu_ps(mv, s[t] + c0 + 16 * v);
        const __m512 wt = T > 0 ? wr[v][T > 0 ? t : 0]
                                : _mm512_maskz_loadu_ps(mv, w + t * C + c0 + 16 * v);
        acc[v] = _mm512_fmadd_ps(x, wt, acc[v]);
      }
    }
    for (int v = 0; v < V; ++v) {
      store_channels(dst[p] + (c0 + 16 * v) * dst_cstride, dst_cstride, acc[v],
                     v + 1 == V ? m : 0xffff, stream);
    }
  }
}

template <int T>
__attribute__((target("avx512f"))) void depthwise_blocks(float* const* dst, int64_t dst_cstride,
                                                         const float* const* src, int64_t count,
                                                         int64_t taps, const float* w,
                                                         const float* bias, int64_t C,
                                                         bool stream) {
  for (int64_t c0 = 0; c0 < C;) {
    const int64_t left = C - c0;
    if (left >= 32) {
      // Lines of the next block: two when it is a full one, one for a 16-or-fewer tail.
      const int64_t next_lines = left - 32 >= 32 ? 2 : (left - 32 > 0 ? 1 : 0);
      depthwise_block<T, 2>(dst, dst_cstride, src, count, taps, w, bias, C, c0, 0xffff,
                            next_lines, stream);
      c0 += 32;
    } else {
      const int64_t nc = left < 16 ? left : 16;
      const __mmask16 m = static_cast<__mmask16>((1u << nc) - 1u);
      depthwise_block<T, 1>(dst, dst_cstride, src, count, taps, w, bias, C, c0, m,
                            left > 16 ? 1 : 0, stream);
      c0 += 16;
    }
  }
}

}  // namespace

__attribute__((target("avx512f"))) void avx512_depthwise_pixels(
    float* const* dst, int64_t dst_cstride, const float* const* src, int64_t count, int64_t taps,
    const float* w, const float* bias, int64_t C, bool stream) {
  if (taps == 9) {
    depthwise_blocks<9>(dst, dst_cstride, src, count, taps, w, bias, C, stream);
  } else {
    depthwise_blocks<0>(dst, dst_cstride, src, count, taps, w, bias, C, stream);
  }
}

// Most of a sparse layer's output is zeros; plain stores would first read every line in (write
// allocate), doubling the memory traffic of what is the dominant cost of depthwise/1x1 layers.
__attribute__((target("avx512f"))) void avx512_zero_stream(float* p, int64_t n) {
  const __m512 z = _mm512_setzero_ps();
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 63) != 0) {
    *p++ = 0.f;
    --n;
  }
  for (; n >= 16; n -= 16, p += 16) _mm512_stream_ps(p, z);
  for (; n > 0; --n) *p++ = 0.f;
}

void avx512_tile(const float* const* a, int64_t taps, int64_t cg, const float* panel,
                 const float* bias, int64_t ncols, float* const* dst, int64_t dst_cstride,
                 const float* const* next, bool stream) {
  // The row counts must match tile_rows(ncols) in implicit_gemm.h.
  switch ((ncols + 15) / 16) {
    case 1:
      return tile_nv<1, 8>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
    case 2:
      return tile_nv<2, 8>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
    case 3:
      return tile_nv<3, 8>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
    default:
      return tile_nv<4, 6>(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
  }
}

#endif  // DL_LIB_HAVE_AVX512_KERNEL

namespace {

KernelIsa best_isa() {
#if DL_LIB_HAVE_AVX512_KERNEL
  if (__builtin_cpu_supports("avx512f")) return KernelIsa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return KernelIsa::kAvx2;
#endif
  return KernelIsa::kPortable;
}

KernelIsa choose_isa() {
  const KernelIsa best = best_isa();
  const char* env = std::getenv("DL_LIB_MASKED_CONV_CPU_KERNEL");
  if (env == nullptr || *env == '\0') return best;
  const std::string name(env);
  KernelIsa asked;
  if (name == "portable") {
    asked = KernelIsa::kPortable;
  } else if (name == "avx2") {
    asked = KernelIsa::kAvx2;
  } else if (name == "avx512") {
    asked = KernelIsa::kAvx512;
  } else {
    TORCH_CHECK(false, "DL_LIB_MASKED_CONV_CPU_KERNEL=", name,
                " is not a masked-convolution CPU kernel; use portable, avx2 or avx512 (or unset"
                " it for the best this CPU runs: ", kernel_isa_name(best), ")");
  }
  TORCH_CHECK(static_cast<int>(asked) <= static_cast<int>(best),
              "DL_LIB_MASKED_CONV_CPU_KERNEL=", name, " asks for a kernel this CPU cannot run; the",
              " best it runs is ", kernel_isa_name(best), " (unset the variable to use it)");
  return asked;
}

}  // namespace

KernelIsa kernel_isa() {
  static const KernelIsa isa = choose_isa();
  return isa;
}

const char* kernel_isa_name(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAvx512:
      return "avx512";
    case KernelIsa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

// The dispatchers: callers check implicit_gemm_available() first (kernel_isa() != portable).
void implicit_gemm_tile(const float* const* a, int64_t taps, int64_t cg, const float* panel,
                        const float* bias, int64_t ncols, float* const* dst,
                        int64_t dst_cstride, const float* const* next, bool stream) {
#if DL_LIB_HAVE_AVX512_KERNEL
  if (kernel_isa() == KernelIsa::kAvx512) {
    return avx512_tile(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
  }
  avx2::tile(a, taps, cg, panel, bias, ncols, dst, dst_cstride, next, stream);
#endif
}

void depthwise_pixels(float* const* dst, int64_t dst_cstride, const float* const* src,
                      int64_t count, int64_t taps, const float* w, const float* bias, int64_t C,
                      bool stream) {
#if DL_LIB_HAVE_AVX512_KERNEL
  if (kernel_isa() == KernelIsa::kAvx512) {
    return avx512_depthwise_pixels(dst, dst_cstride, src, count, taps, w, bias, C, stream);
  }
  avx2::depthwise_pixels(dst, dst_cstride, src, count, taps, w, bias, C, stream);
#endif
}

void zero_stream(float* p, int64_t n) {
#if DL_LIB_HAVE_AVX512_KERNEL
  if (kernel_isa() == KernelIsa::kAvx512) return avx512_zero_stream(p, n);
  avx2::zero_stream(p, n);
#endif
}

void stream_fence() {
#if DL_LIB_HAVE_AVX512_KERNEL
  _mm_sfence();
#endif
}

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
