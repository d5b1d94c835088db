// Register-blocked float32 micro-kernel of the CPU masked convolution ("implicit GEMM").
//
// A tile of tile_rows(ncols) active output pixels x up to kBlockCols output channels of one group
// is
//   out[r][o] = bias[o] + sum_{t < taps} sum_{c < cg} a[r * taps + t][c] * panel[t * cg + c][o]
// where a[r * taps + t] points straight at the cg input channels that tap t of pixel r reads in
// the NHWC input (or at a buffer of zeros for taps in the padding). Reading the taps in place
// removes the im2col buffer of the gather + GEMM dataflow, and the kernel never calls a BLAS, so
// it can run inside at::parallel_for without nesting OpenMP teams (MKL's sgemm opens a nested
// team of its own inside a parallel region, since PyTorch turns MKL's dynamic threading off; on
// a loaded machine those spinning teams made the kernel 10-50x slower).
#pragma once

#include <cstdint>

namespace dl_lib {
namespace ops {
namespace cpu {

constexpr int kBlockCols = 64;  // output channels per weight panel block
constexpr int kMaxTileRows = 8;  // the most pixels one tile computes (see tile_rows)

// Pixels per tile for a block of `ncols` output channels: 6 x 4 vectors of 16 lanes (64 channels)
// or 8 x 3 / 8 x 2 / 8 x 1 vectors keep <= 24 accumulators, leaving the other 8 of the 32 zmm
// registers for the weight vectors and the broadcast input (more rows made GCC spill
// accumulators to the stack, which halved the throughput). 8 rows is also the most row pointers
// that stay in general-purpose registers next to the loop's own.
inline int tile_rows(int64_t ncols) { return ncols > 48 ? 6 : 8; }

// True when this CPU can run implicit_gemm_tile (AVX-512F, checked once at run time).
bool implicit_gemm_available();

// Columns of the packed panel for a block holding `ncols` (<= kBlockCols) output channels: the
// block is zero-padded to whole 16-lane vectors.
inline int64_t panel_width(int64_t ncols) { return (ncols + 15) / 16 * 16; }

// One tile (see above).
//   a:       tile_rows(ncols) * taps pointers (row-major [r][t]), each to cg contiguous floats
//   panel:   [taps * cg, panel_width(ncols)] row-major packed weights of this block
//   bias:    panel_width(ncols) floats (zeros where there is no bias)
//   dst:     tile_rows(ncols) pointers to the first output channel of the block for each pixel, or
//            nullptr for a padding row whose result is dropped
//   dst_cstride: distance between consecutive output channels (1 for NHWC, Ho*Wo for NCHW)
//   next:    the `a` of the tile computed next (prefetched into L1 meanwhile), or nullptr
//   stream:  write whole, aligned output lines with non-temporal stores (see kStreamOutputBytes)
void implicit_gemm_tile(const float* const* a, int64_t taps, int64_t cg, const float* panel,
                        const float* bias, int64_t ncols, float* const* dst, int64_t dst_cstride,
                        const float* const* next, bool stream);

// Depthwise, a chunk of active pixels (same CPU requirement as implicit_gemm_tile):
//   dst[p][c * dst_cstride] = bias[c] + sum_{t < taps} w[t * C + c] * src[p * taps + t][c]
// src: count * taps pointers (row-major [p][t]) to the C input channels each tap reads, a row of
// zeros for taps in the padding (no branches in the tap loop); bias may be nullptr.
// The channel block is the outer loop: a 3x3 block's 9 x 32 weights stay in registers while
// every pixel of the chunk is computed, so each FMA needs one load (the input) instead of two,
// and the next block's input lines are prefetched meanwhile. (It replaced a pixel-outer kernel
// that read the weights from L1 and shared loads between runs of 4 neighbours: 4-10 % faster at
// density 0.25 when each is timed right after a dense layer, as in the benchmark.) Where the
// layer's tensors sit in L2/L3 this loop and the tap pointers are the cost: oneDNN's dense
// depthwise was 2x faster per pixel there, ~1.2x since two pixels share a pass, prefetches skip
// the taps a neighbour already fetched and interior pixels skip the bounds checks. Right after a
// dense layer of Cityscapes size, memory traffic is the cost.
void depthwise_pixels(float* const* dst, int64_t dst_cstride, const float* const* src,
                      int64_t count, int64_t taps, const float* w, const float* bias, int64_t C,
                      bool stream);

// Outputs of at least this size are written with non-temporal stores (zeros and computed pixels
// alike; callers fence with stream_fence() before the result is read). They do not fit in a
// core's L2, so the lines would be evicted before the next layer reads them anyway, and a plain
// store first reads every line it writes (write allocate): streaming the computed pixels made
// the sparse layers faster at d = 0.1-0.25 in interleaved A/B runs, each timed right after a
// dense layer: depthwise 3x3 by 16-25 %, 1x1 by about 10 %, 3x3 by about 2 %.
constexpr int64_t kStreamOutputBytes = 1 << 20;

// Writes n zeros at p with non-temporal stores (no read-for-ownership of the lines); call
// stream_fence() before other threads may read them.
void zero_stream(float* p, int64_t n);
void stream_fence();

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
