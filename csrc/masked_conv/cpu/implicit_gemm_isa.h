// Per-ISA implementations behind the dispatchers of implicit_gemm.h (internal to cpu/): each has
// the semantics of the function of the same name there, with that ISA's block width, tile rows
// and panel padding (block_cols(), tile_rows(), panel_width() answer for the ISA in use).
#pragma once

#include <cstdint>

namespace dl_lib {
namespace ops {
namespace cpu {

// AVX-512F (implicit_gemm.cpp).
void avx512_tile(const float* const* a, int64_t taps, int64_t cg, const float* panel,
                 const float* bias, int64_t ncols, float* const* dst, int64_t dst_cstride,
                 const float* const* next, bool stream);
void avx512_depthwise_pixels(float* const* dst, int64_t dst_cstride, const float* const* src,
                             int64_t count, int64_t taps, const float* w, const float* bias,
                             int64_t C, bool stream);
void avx512_zero_stream(float* p, int64_t n);

// AVX2 + FMA (implicit_gemm_avx2.cpp).
namespace avx2 {
void tile(const float* const* a, int64_t taps, int64_t cg, const float* panel, const float* bias,
          int64_t ncols, float* const* dst, int64_t dst_cstride, const float* const* next,
          bool stream);
void depthwise_pixels(float* const* dst, int64_t dst_cstride, const float* const* src,
                      int64_t count, int64_t taps, const float* w, const float* bias, int64_t C,
                      bool stream);
void zero_stream(float* p, int64_t n);
}  // namespace avx2

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
