// Register-blocked float32 micro-kernel of the CPU masked convolution ("implicit GEMM").
//
// A tile of tile_rows(ncols) active output pixels x up to block_cols() output channels of one group
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

// The kernels exist for two ISAs, chosen once at run time (kernel_isa()): AVX-512F (16-lane
// zmm vectors, 32 registers) and AVX2 + FMA (8-lane ymm vectors, 16 registers). The register
// blocking, the panel block width and the panel padding differ between them, so the weight
// packing and the tiling ask these functions instead of assuming one ISA.
enum class KernelIsa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The ISA of the kernels in use: the best this CPU supports, or a lower one named by the
// environment variable DL_LIB_MASKED_CONV_CPU_KERNEL ("portable", "avx2" or "avx512"; read once,
// so benchmarks can time the portable path on a CPU that has the fast one). A name the CPU
// cannot run, or an unknown name, throws an error saying which values are valid.
KernelIsa kernel_isa();
const char* kernel_isa_name(KernelIsa isa);

// True when implicit_gemm_tile, depthwise_pixels and zero_stream may be called.
inline bool implicit_gemm_available() { return kernel_isa() != KernelIsa::kPortable; }

constexpr int kMaxBlockCols = 64;  // the widest block of output channels (AVX-512)
constexpr int kMaxTileRows = 8;    // the most pixels one tile computes (see tile_rows)

// Output channels per weight panel block: 64 (4 zmm vectors) on AVX-512, 16 (2 ymm vectors) on
// AVX2, i.e. the channels one tile keeps in registers.
inline int64_t block_cols() { return kernel_isa() == KernelIsa::kAvx512 ? 64 : 16; }

// Pixels per tile for a block of `ncols` output channels.
// AVX-512: 6 x 4 vectors of 16 lanes (64 channels) or 8 x 3 / 8 x 2 / 8 x 1 vectors keep <= 24
// accumulators, leaving the other 8 of the 32 zmm registers for the weight vectors and the
// broadcast input (more rows made GCC spill accumulators to the stack, which halved the
// throughput). 8 rows is also the most row pointers that stay in general-purpose registers next
// to the loop's own.
// AVX2: 6 x 2 vectors of 8 lanes (16 channels; 12 accumulators + 2 weight vectors + 1 broadcast
// = 15 of the 16 ymm registers, the layout of the classic Haswell SGEMM micro-kernel), or 8 x 1
// for a block of <= 8 channels.
inline int tile_rows(int64_t ncols) {
  if (kernel_isa() == KernelIsa::kAvx512) return ncols > 48 ? 6 : 8;
  return ncols > 8 ? 6 : 8;
}

// Columns of the packed panel for a block holding `ncols` (<= block_cols()) output channels: the
// block is zero-padded to whole vectors (16 lanes on AVX-512, 8 on AVX2).
inline int64_t panel_width(int64_t ncols) {
  const int64_t lanes = kernel_isa() == KernelIsa::kAvx512 ? 16 : 8;
  return (ncols + lanes - 1) / lanes * lanes;
}

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
// (AVX2: blocks of 16 channels, two ymm vectors, two pixels at a time; implicit_gemm_avx2.cpp.)
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
