// CUDA kernels of dl_lib::masked_conv2d and dl_lib::_masked_conv2d_backward.
//
// Semantics (same as the CPU kernel, see masked_conv/masked_conv.h): the output is conv2d(input,
// weight, bias) at the positions where mask[n, 0, y, x] is true and 0 elsewhere; the backward
// only propagates grad_output at active positions.
//
// Dataflow, chosen so that the forward never synchronises with the host (a torch.nonzero or a
// .item() would stall the launch queue and break CUDA-graph capture):
//   1. Active list: an inclusive at::cumsum of the flattened mask and one compaction kernel give
//      a fixed-capacity index buffer (capacity = N*Ho*Wo, raster order, so neighbouring list
//      entries are neighbouring pixels) and a 1-element device-side count.
//   2. Every kernel is launched over the CAPACITY; a block whose first list entry is at or beyond
//      the device count returns at once, so the cost scales with the active count, not with the
//      launch size. No at::mm is used: cuBLAS needs the row count on the host, which would cost
//      a synchronisation (or a GEMM over the whole capacity, i.e. dense work).
//   3. Cin/groups > 1 (ordinary and grouped convs): a gather implicit-GEMM kernel. A block
//      owns 32 active positions x 64 output channels of one group; the reduction axis
//      k = (ky*kw + kx)*Cin_g + ci (input channel fastest, so loads are coalesced for NHWC
//      inputs) is walked in slices of 16 staged in shared memory; accumulation in fp32 (fp64 for
//      double) via at::opmath_type. No tensor cores: correctness and structure first.
//   4. Cin/groups == 1 (depthwise, any channel multiplier): one thread per (active position,
//      output channel); consecutive threads take consecutive channels (coalesced for NHWC).
//   5. Backward: grad_input = transposed masked conv, computed as a [positions x Cout_g] x
//      [Cout_g x K] tile product per block and scattered with atomicAdd into an fp32/fp64
//      NHWC buffer (then cast); grad_weight = split-K over chunks of active positions, each block
//      adding its partial [K x Cout_g] tile into an fp32/fp64 buffer with atomicAdd (then
//      permuted and cast); grad_bias = per-block channel sums + atomicAdd. Atomics make the
//      backward non-deterministic in the last bits (summation order), like cuDNN's defaults.
//
// Inputs are read through their strides (any memory format, no copy); the output is allocated in
// the input's suggested memory format (channels_last stays channels_last, like F.conv2d) and
// zero-filled by at::zeros (one dense write of the output, the layer's only dense cost);
// dl_lib::masked_conv2d_out runs the same kernels into a caller's tensor without that fill.
//
// Without a GPU, the device code is checked by running it in a CPU emulation
// (emulate_kernels.cpp, driven by tests/test_cuda_compile_check.py): keep every kernel between
// the "Geometry shared by every kernel" and "Host side" markers, free of ATen types.
//
// Lean headers on purpose: torch/extension.h would drag in pybind11 and all of torch's C++ API
// and multiply the compile time of this translation unit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <tuple>

#include "masked_conv/check_args.h"
#include "masked_conv/masked_conv.h"

namespace dl_lib {
namespace ops {
namespace {

// ------------------------------------------------------------------------------------------------
// Geometry shared by every kernel (passed by value; all trivially copyable).

struct Geom {
  int64_t N, C, H, W;  // input
  int64_t O, Ho, Wo;   // output
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int groups, Cg, Og;  // Cin/groups, Cout/groups
  int K;               // Cg*kh*kw: length of the reduction axis of one group
};

struct Strides4 {
  int64_t n, c, h, w;
};

constexpr int kThreads = 256;

// Forward implicit GEMM tile: 32 positions x 64 output channels, reduction slices of 16.
constexpr int kFwdP = 32;
constexpr int kFwdO = 64;
constexpr int kFwdK = 16;
// grad_input tile: 32 positions x 32 reduction columns, Cout slices of 16.
constexpr int kGiP = 32;
constexpr int kGiK = 32;
constexpr int kGiO = 16;
// grad_weight tile: 32 reduction columns x 64 output channels, position stages of 16, and each
// block reduces a chunk of (by default) 512 active positions (split-K).
constexpr int kGwK = 32;
constexpr int kGwO = 64;
constexpr int kGwP = 16;
constexpr int64_t kGwChunk = 512;
// Channel reductions (grad_bias, depthwise grad_weight): blocks of 32 channels x 8 position rows.
constexpr int kRedC = 32;
constexpr int kRedRows = 8;
constexpr int64_t kRedChunk = 256;

constexpr int64_t kMaxGridYZ = 65535;

// Usable on both sides: the grad_weight kernel recovers its tile coordinates with it.
__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Decodes a flat output position (raster order over N x Ho x Wo) into (n, oy, ox).
__device__ __forceinline__ void decode_position(int pos, const Geom& g, int& n, int& oy, int& ox) {
  const int hw = static_cast<int>(g.Ho * g.Wo);
  n = pos / hw;
  const int rem = pos - n * hw;
  oy = rem / static_cast<int>(g.Wo);
  ox = rem - oy * static_cast<int>(g.Wo);
}

// Column k of the im2col row of output position (n, oy, ox) in group channels [cbase, cbase+Cg):
// k runs tap-major, channel-minor. Zero in the padding, past K, and for empty slots (n < 0).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t im2col_value(const scalar_t* __restrict__ x, const Strides4& xs,
                                              const Geom& g, int64_t cbase, int k, int n, int oy,
                                              int ox) {
  if (n < 0 || k >= g.K) {
    return acc_t(0);
  }
  const int tap = k / g.Cg;
  const int ci = k - tap * g.Cg;
  const int ky = tap / g.kw;
  const int kx = tap - ky * g.kw;
  const int iy = oy * g.sh - g.ph + ky * g.dh;
  const int ix = ox * g.sw - g.pw + kx * g.dw;
  if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) {
    return acc_t(0);
  }
  return static_cast<acc_t>(x[n * xs.n + (cbase + ci) * xs.c + static_cast<int64_t>(iy) * xs.h +
                              static_cast<int64_t>(ix) * xs.w]);
}

// Threads 0..tile-1 decode active positions p0 .. p0+tile-1 into the block's shared arrays;
// slots at or past `end` get n = -1 so the tile's tail is skipped. The caller synchronises.
__device__ __forceinline__ void decode_tile_positions(const int* __restrict__ idx, int64_t p0,
                                                      int64_t end, int tile, const Geom& g,
                                                      int* s_n, int* s_oy, int* s_ox) {
  const int tid = threadIdx.x;
  if (tid < tile) {
    const int64_t p = p0 + tid;
    if (p < end) {
      decode_position(idx[p], g, s_n[tid], s_oy[tid], s_ox[tid]);
    } else {
      s_n[tid] = -1;
      s_oy[tid] = 0;
      s_ox[tid] = 0;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Active list: idx[scan[i] - 1] = i for every active i, count = scan[P - 1].

__global__ void compact_active_kernel(
    const bool* __restrict__ mask, const int* __restrict__ inclusive_scan, int64_t P,
    int* __restrict__ idx, int* __restrict__ count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= P) {
    return;
  }
  if (mask[i]) {
    idx[inclusive_scan[i] - 1] = static_cast<int>(i);
  }
  if (i == P - 1) {
    *count = inclusive_scan[i];
  }
}

// ------------------------------------------------------------------------------------------------
// Forward, Cin/groups > 1: gather implicit GEMM.
// grid = (ceil(capacity / 32), ceil(Og / 64), groups), block = 256 threads laid out 16 x 16:
// tx picks output channels o0 + tx + 16*j (j < 4), ty picks positions ty + 16*i (i < 2).
// wp is the weight packed as [groups][K][Og] (k = (ky*kw + kx)*Cg + ci).

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) masked_conv_fwd_gemm_kernel(
    const scalar_t* __restrict__ x, Strides4 xs, const scalar_t* __restrict__ wp,
    const scalar_t* __restrict__ bias, const int* __restrict__ idx,
    const int* __restrict__ count, scalar_t* __restrict__ out, Strides4 os, Geom g) {
  __shared__ acc_t As[kFwdK][kFwdP + 1];  // +1: the gather stores walk k fastest
  __shared__ acc_t Bs[kFwdK][kFwdO];
  __shared__ int s_n[kFwdP], s_oy[kFwdP], s_ox[kFwdP];

  const int cnt = *count;
  const int p0 = blockIdx.x * kFwdP;
  if (p0 >= cnt) {
    return;  // whole block beyond the active count (uniform: before any barrier)
  }
  const int o0 = blockIdx.y * kFwdO;
  const int grp = blockIdx.z;
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;

  decode_tile_positions(idx, p0, cnt, kFwdP, g, s_n, s_oy, s_ox);
  __syncthreads();

  acc_t acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc[i][j] = acc_t(0);
    }
  }

  const int64_t cbase = static_cast<int64_t>(grp) * g.Cg;
  const scalar_t* wg = wp + static_cast<int64_t>(grp) * g.K * g.Og;

  for (int k0 = 0; k0 < g.K; k0 += kFwdK) {
    // Gathered input slice: 32 positions x 16 k = 512 values, 2 per thread.
#pragma unroll
    for (int r = 0; r < (kFwdP * kFwdK) / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int kl = e % kFwdK;
      const int pl = e / kFwdK;
      const int k = k0 + kl;
      const int n = s_n[pl];
      const acc_t v = im2col_value<scalar_t, acc_t>(x, xs, g, cbase, k, n, s_oy[pl], s_ox[pl]);
      As[kl][pl] = v;
    }
    // Weight slice: 16 k x 64 output channels = 1024 values, 4 per thread.
#pragma unroll
    for (int r = 0; r < (kFwdK * kFwdO) / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int ol = e % kFwdO;
      const int kl = e / kFwdO;
      const int k = k0 + kl;
      const int o = o0 + ol;
      Bs[kl][ol] = (k < g.K && o < g.Og)
          ? static_cast<acc_t>(wg[static_cast<int64_t>(k) * g.Og + o])
          : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kl = 0; kl < kFwdK; ++kl) {
      const acc_t a0 = As[kl][ty];
      const acc_t a1 = As[kl][ty + 16];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const acc_t b = Bs[kl][tx + 16 * j];
        acc[0][j] += a0 * b;
        acc[1][j] += a1 * b;
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int pl = ty + 16 * i;
    const int n = s_n[pl];
    if (n < 0) {
      continue;
    }
    const int64_t obase = n * os.n + static_cast<int64_t>(s_oy[pl]) * os.h +
        static_cast<int64_t>(s_ox[pl]) * os.w;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = o0 + tx + 16 * j;
      if (o < g.Og) {
        const int64_t co = static_cast<int64_t>(grp) * g.Og + o;
        acc_t v = acc[i][j];
        if (bias != nullptr) {
          v += static_cast<acc_t>(bias[co]);
        }
        out[obase + co * os.c] = static_cast<scalar_t>(v);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Forward, Cin/groups == 1 (depthwise, channel multiplier mult = Og): one thread per
// (active position, output channel), launched over capacity * O threads.
// w is [O][kh*kw] (the contiguous O x 1 x kh x kw weight).

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) masked_dwconv_fwd_kernel(
    const scalar_t* __restrict__ x, Strides4 xs, const scalar_t* __restrict__ w,
    const scalar_t* __restrict__ bias, const int* __restrict__ idx,
    const int* __restrict__ count, scalar_t* __restrict__ out, Strides4 os, Geom g) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t p = t / g.O;
  if (p >= *count) {
    return;
  }
  const int co = static_cast<int>(t - p * g.O);
  const int ci = co / g.Og;  // input channel of this output channel's group
  int n, oy, ox;
  decode_position(idx[p], g, n, oy, ox);
  const scalar_t* wc = w + static_cast<int64_t>(co) * g.kh * g.kw;
  const scalar_t* xc = x + n * xs.n + ci * xs.c;
  acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[co]) : acc_t(0);
  const int iy0 = oy * g.sh - g.ph;
  const int ix0 = ox * g.sw - g.pw;
  for (int ky = 0; ky < g.kh; ++ky) {
    const int iy = iy0 + ky * g.dh;
    if (iy < 0 || iy >= g.H) {
      continue;
    }
    for (int kx = 0; kx < g.kw; ++kx) {
      const int ix = ix0 + kx * g.dw;
      if (ix < 0 || ix >= g.W) {
        continue;
      }
      acc += static_cast<acc_t>(xc[static_cast<int64_t>(iy) * xs.h + static_cast<int64_t>(ix) * xs.w]) *
          static_cast<acc_t>(wc[ky * g.kw + kx]);
    }
  }
  out[n * os.n + co * os.c + static_cast<int64_t>(oy) * os.h + static_cast<int64_t>(ox) * os.w] =
      static_cast<scalar_t>(acc);
}

// ------------------------------------------------------------------------------------------------
// Backward, grad_input for Cin/groups > 1: per block, a 32-position x 32-column tile of
// grad_out[P x Og] . W[Og x K], scattered with atomicAdd into gin (NHWC, acc_t).
// grid = (ceil(capacity / 32), ceil(K / 32), groups); tx -> columns tx + 16*i (i < 2),
// ty -> positions ty + 16*j (j < 2).

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) masked_conv_bwd_input_gemm_kernel(
    const scalar_t* __restrict__ gout, Strides4 gs, const scalar_t* __restrict__ wp,
    const int* __restrict__ idx, const int* __restrict__ count, acc_t* __restrict__ gin, Geom g) {
  __shared__ acc_t Gs[kGiO][kGiP + 1];
  __shared__ acc_t Ws[kGiO][kGiK + 1];
  __shared__ int s_n[kGiP], s_oy[kGiP], s_ox[kGiP];

  const int cnt = *count;
  const int p0 = blockIdx.x * kGiP;
  if (p0 >= cnt) {
    return;
  }
  const int k0 = blockIdx.y * kGiK;
  const int grp = blockIdx.z;
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;

  decode_tile_positions(idx, p0, cnt, kGiP, g, s_n, s_oy, s_ox);
  __syncthreads();

  acc_t acc[2][2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    acc[j][0] = acc_t(0);
    acc[j][1] = acc_t(0);
  }
  const scalar_t* wg = wp + static_cast<int64_t>(grp) * g.K * g.Og;
  const int64_t obase = static_cast<int64_t>(grp) * g.Og;

  for (int o0 = 0; o0 < g.Og; o0 += kGiO) {
#pragma unroll
    for (int r = 0; r < (kGiO * kGiP) / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int ol = e % kGiO;
      const int pl = e / kGiO;
      const int o = o0 + ol;
      const int n = s_n[pl];
      Gs[ol][pl] = (n >= 0 && o < g.Og)
          ? static_cast<acc_t>(gout[n * gs.n + (obase + o) * gs.c +
                                    static_cast<int64_t>(s_oy[pl]) * gs.h +
                                    static_cast<int64_t>(s_ox[pl]) * gs.w])
          : acc_t(0);
    }
#pragma unroll
    for (int r = 0; r < (kGiO * kGiK) / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int ol = e % kGiO;
      const int kl = e / kGiO;
      const int o = o0 + ol;
      const int k = k0 + kl;
      Ws[ol][kl] = (o < g.Og && k < g.K)
          ? static_cast<acc_t>(wg[static_cast<int64_t>(k) * g.Og + o])
          : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int ol = 0; ol < kGiO; ++ol) {
      const acc_t w0 = Ws[ol][tx];
      const acc_t w1 = Ws[ol][tx + 16];
      const acc_t g0 = Gs[ol][ty];
      const acc_t g1 = Gs[ol][ty + 16];
      acc[0][0] += g0 * w0;
      acc[0][1] += g0 * w1;
      acc[1][0] += g1 * w0;
      acc[1][1] += g1 * w1;
    }
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int pl = ty + 16 * j;
    const int n = s_n[pl];
    if (n < 0) {
      continue;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int k = k0 + tx + 16 * i;
      if (k >= g.K) {
        continue;
      }
      const int tap = k / g.Cg;
      const int ci = k - tap * g.Cg;
      const int ky = tap / g.kw;
      const int kx = tap - ky * g.kw;
      const int iy = s_oy[pl] * g.sh - g.ph + ky * g.dh;
      const int ix = s_ox[pl] * g.sw - g.pw + kx * g.dw;
      if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) {
        atomicAdd(gin + ((n * g.H + iy) * g.W + ix) * g.C + static_cast<int64_t>(grp) * g.Cg + ci,
                  acc[j][i]);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward, grad_weight for Cin/groups > 1: split-K over chunks of active positions.
// grid = (ceil(K / 32), groups * ceil(Og / 64), nchunks); tx -> output channels tx + 16*j
// (j < 4), ty -> columns ty + 16*i (i < 2). gw is [groups][K][Og] in acc_t.

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) masked_conv_bwd_weight_gemm_kernel(
    const scalar_t* __restrict__ gout, Strides4 gs, const scalar_t* __restrict__ x, Strides4 xs,
    const int* __restrict__ idx, const int* __restrict__ count, acc_t* __restrict__ gw, Geom g,
    int64_t chunk) {
  __shared__ acc_t Xs[kGwP][kGwK + 1];
  __shared__ acc_t Gs[kGwP][kGwO];
  __shared__ int s_n[kGwP], s_oy[kGwP], s_ox[kGwP];

  const int cnt = *count;
  const int64_t pstart = blockIdx.z * chunk;
  if (pstart >= cnt) {
    return;
  }
  const int64_t pend = pstart + chunk < cnt ? pstart + chunk : cnt;
  const int k0 = blockIdx.x * kGwK;
  const int otiles = static_cast<int>(ceil_div(g.Og, kGwO));
  const int grp = blockIdx.y / otiles;
  const int o0 = (blockIdx.y - grp * otiles) * kGwO;
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t cbase = static_cast<int64_t>(grp) * g.Cg;
  const int64_t obase = static_cast<int64_t>(grp) * g.Og;

  acc_t acc[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc[i][j] = acc_t(0);
    }
  }

  for (int64_t ps = pstart; ps < pend; ps += kGwP) {
    decode_tile_positions(idx, ps, pend, kGwP, g, s_n, s_oy, s_ox);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < (kGwP * kGwK) / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int kl = e % kGwK;
      const int pl = e / kGwK;
      const int k = k0 + kl;
      const int n = s_n[pl];
      const acc_t v = im2col_value<scalar_t, acc_t>(x, xs, g, cbase, k, n, s_oy[pl], s_ox[pl]);
      Xs[pl][kl] = v;
    }
#pragma unroll
    for (int r = 0; r < (kGwP * kGwO) / kThreads; ++r) {
      const int e = tid + r * kThreads;
      const int ol = e % kGwO;
      const int pl = e / kGwO;
      const int o = o0 + ol;
      const int n = s_n[pl];
      Gs[pl][ol] = (n >= 0 && o < g.Og)
          ? static_cast<acc_t>(gout[n * gs.n + (obase + o) * gs.c +
                                    static_cast<int64_t>(s_oy[pl]) * gs.h +
                                    static_cast<int64_t>(s_ox[pl]) * gs.w])
          : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int pl = 0; pl < kGwP; ++pl) {
      const acc_t x0 = Xs[pl][ty];
      const acc_t x1 = Xs[pl][ty + 16];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const acc_t gv = Gs[pl][tx + 16 * j];
        acc[0][j] += x0 * gv;
        acc[1][j] += x1 * gv;
      }
    }
    __syncthreads();
  }

  acc_t* gwg = gw + static_cast<int64_t>(grp) * g.K * g.Og;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int k = k0 + ty + 16 * i;
    if (k >= g.K) {
      continue;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = o0 + tx + 16 * j;
      if (o < g.Og) {
        atomicAdd(gwg + static_cast<int64_t>(k) * g.Og + o, acc[i][j]);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward, depthwise grad_input: one thread per (active position, output channel).

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) masked_dwconv_bwd_input_kernel(
    const scalar_t* __restrict__ gout, Strides4 gs, const scalar_t* __restrict__ w,
    const int* __restrict__ idx, const int* __restrict__ count, acc_t* __restrict__ gin, Geom g) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t p = t / g.O;
  if (p >= *count) {
    return;
  }
  const int co = static_cast<int>(t - p * g.O);
  const int ci = co / g.Og;
  int n, oy, ox;
  decode_position(idx[p], g, n, oy, ox);
  const acc_t go = static_cast<acc_t>(
      gout[n * gs.n + co * gs.c + static_cast<int64_t>(oy) * gs.h + static_cast<int64_t>(ox) * gs.w]);
  if (go == acc_t(0)) {
    return;  // nothing to scatter (common for padded or masked-out gradients)
  }
  const scalar_t* wc = w + static_cast<int64_t>(co) * g.kh * g.kw;
  const int iy0 = oy * g.sh - g.ph;
  const int ix0 = ox * g.sw - g.pw;
  for (int ky = 0; ky < g.kh; ++ky) {
    const int iy = iy0 + ky * g.dh;
    if (iy < 0 || iy >= g.H) {
      continue;
    }
    for (int kx = 0; kx < g.kw; ++kx) {
      const int ix = ix0 + kx * g.dw;
      if (ix < 0 || ix >= g.W) {
        continue;
      }
      atomicAdd(gin + ((n * g.H + iy) * g.W + ix) * g.C + ci,
                go * static_cast<acc_t>(wc[ky * g.kw + kx]));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Channel reductions over a chunk of active positions, block = (32 channels, 8 rows):
//   with_input == false: red[co]                += sum_p gout[p, co]                (grad_bias)
//   with_input == true:  red[co * kh*kw + tap]  += sum_p gout[p, co] * x[p + tap, co / Og]
//                        (depthwise grad_weight; tap = blockIdx.z)
// grid = (nchunks, ceil(O / 32), with_input ? kh*kw : 1).

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRedC* kRedRows) masked_channel_reduce_kernel(
    const scalar_t* __restrict__ gout, Strides4 gs, const scalar_t* __restrict__ x, Strides4 xs,
    bool with_input, const int* __restrict__ idx, const int* __restrict__ count,
    acc_t* __restrict__ red, Geom g, int64_t chunk) {
  __shared__ acc_t partial[kRedRows][kRedC + 1];
  const int cnt = *count;
  const int64_t pstart = blockIdx.x * chunk;
  if (pstart >= cnt) {
    return;
  }
  const int64_t pend = pstart + chunk < cnt ? pstart + chunk : cnt;
  const int co = blockIdx.y * kRedC + threadIdx.x;
  const int tap = blockIdx.z;
  const int ky = tap / g.kw;
  const int kx = tap - ky * g.kw;

  acc_t sum = acc_t(0);
  if (co < g.O) {
    const int ci = co / g.Og;
    for (int64_t p = pstart + threadIdx.y; p < pend; p += kRedRows) {
      int n, oy, ox;
      decode_position(idx[p], g, n, oy, ox);
      const acc_t go = static_cast<acc_t>(gout[n * gs.n + co * gs.c +
                                               static_cast<int64_t>(oy) * gs.h +
                                               static_cast<int64_t>(ox) * gs.w]);
      if (!with_input) {
        sum += go;
        continue;
      }
      const int iy = oy * g.sh - g.ph + ky * g.dh;
      const int ix = ox * g.sw - g.pw + kx * g.dw;
      if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) {
        sum += go *
            static_cast<acc_t>(x[n * xs.n + static_cast<int64_t>(ci) * xs.c +
                                 static_cast<int64_t>(iy) * xs.h + static_cast<int64_t>(ix) * xs.w]);
      }
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && co < g.O) {
    acc_t total = acc_t(0);
#pragma unroll
    for (int r = 0; r < kRedRows; ++r) {
      total += partial[r][threadIdx.x];
    }
    if (with_input) {
      atomicAdd(red + static_cast<int64_t>(co) * g.kh * g.kw + tap, total);
    } else {
      atomicAdd(red + co, total);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side. Everything above this line is device code only (no ATen types), so it can be
// reviewed and emulated on its own.

Strides4 strides_of(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

struct ActiveList {
  at::Tensor idx;    // int32 [capacity]; entries at or beyond *count are garbage, never read
  at::Tensor count;  // int32 [1], device side
  int64_t capacity;
};

ActiveList build_active_list(const at::Tensor& mask, cudaStream_t stream) {
  const at::Tensor flat = mask.view({-1});
  const int64_t P = flat.numel();
  // at::cumsum accepts bool with an integer result dtype; it runs on the current stream.
  const at::Tensor scan = at::cumsum(flat, 0, at::kInt);
  ActiveList list{
      at::empty({P}, mask.options().dtype(at::kInt)),
      at::empty({1}, mask.options().dtype(at::kInt)), P};
  const int blocks = static_cast<int>(ceil_div(P, kThreads));
  compact_active_kernel<<<blocks, kThreads, 0, stream>>>(
      flat.data_ptr<bool>(), scan.data_ptr<int>(), P, list.idx.data_ptr<int>(),
      list.count.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return list;
}

// Argument checks shared by forward and backward.

Geom check_and_geometry(
    const char* fn, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mask, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t groups) {
  // Device-independent checks first: a CPU input with a CUDA weight lands here and is told to
  // move the weight, not that the input must be on CUDA.
  check_masked_conv_args(fn, input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w,
                         dilation_h, dilation_w, groups);
  TORCH_CHECK(input.is_cuda(), fn, ": `input` must be a CUDA tensor, got device ", input.device());
  TORCH_CHECK(input.dim() == 4, fn, ": `input` must be N x C x H x W, got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, fn, ": `weight` must be O x C/groups x kh x kw, got shape ",
              weight.sizes());
  TORCH_CHECK(weight.device() == input.device(), fn, ": `weight` is on ", weight.device(),
              " but `input` is on ", input.device());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), fn, ": `weight` dtype ",
              weight.scalar_type(), " differs from `input` dtype ", input.scalar_type());
  TORCH_CHECK(mask.device() == input.device(), fn, ": `mask` is on ", mask.device(),
              " but `input` is on ", input.device());
  TORCH_CHECK(mask.scalar_type() == at::kBool, fn, ": `mask` must be bool, got ",
              mask.scalar_type());
  TORCH_CHECK(mask.is_contiguous(), fn, ": `mask` must be contiguous (call .contiguous())");
  TORCH_CHECK(stride_h > 0 && stride_w > 0, fn, ": stride must be positive, got (", stride_h,
              ", ", stride_w, ")");
  TORCH_CHECK(dilation_h > 0 && dilation_w > 0, fn, ": dilation must be positive, got (",
              dilation_h, ", ", dilation_w, ")");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, fn, ": padding must be >= 0, got (", pad_h, ", ", pad_w,
              ")");
  TORCH_CHECK(groups > 0, fn, ": `groups` must be positive, got ", groups);

  Geom g{};
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.O = weight.size(0);
  g.kh = static_cast<int>(weight.size(2));
  g.kw = static_cast<int>(weight.size(3));
  TORCH_CHECK(g.C % groups == 0, fn, ": input channels ", g.C, " not divisible by groups ",
              groups);
  TORCH_CHECK(g.O % groups == 0, fn, ": `weight` has ", g.O,
              " output channels, not divisible by groups ", groups);
  TORCH_CHECK(weight.size(1) * groups == g.C, fn, ": `weight` expects ", weight.size(1) * groups,
              " input channels (", weight.size(1), " x groups ", groups, ") but `input` has ", g.C);
  g.sh = static_cast<int>(stride_h);
  g.sw = static_cast<int>(stride_w);
  g.ph = static_cast<int>(pad_h);
  g.pw = static_cast<int>(pad_w);
  g.dh = static_cast<int>(dilation_h);
  g.dw = static_cast<int>(dilation_w);
  g.groups = static_cast<int>(groups);
  g.Cg = static_cast<int>(g.C / groups);
  g.Og = static_cast<int>(g.O / groups);
  g.K = g.Cg * g.kh * g.kw;
  g.Ho = (g.H + 2 * pad_h - dilation_h * (g.kh - 1) - 1) / stride_h + 1;
  g.Wo = (g.W + 2 * pad_w - dilation_w * (g.kw - 1) - 1) / stride_w + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, fn, ": output would be empty (Ho=", g.Ho, ", Wo=", g.Wo,
              ") for input ", input.sizes(), " and kernel ", g.kh, "x", g.kw);
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == g.N && mask.size(1) == 1 &&
                  mask.size(2) == g.Ho && mask.size(3) == g.Wo,
              fn, ": `mask` must be N x 1 x Ho x Wo = [", g.N, ", 1, ", g.Ho, ", ", g.Wo,
              "] (the OUTPUT grid), got ", mask.sizes());
  // Kernels index positions and per-sample offsets in 32-bit.
  constexpr int64_t kI32 = std::numeric_limits<int>::max();
  TORCH_CHECK(g.N * g.Ho * g.Wo < kI32 && g.N * g.H * g.W < kI32, fn,
              ": N*H*W must stay below 2^31 for the CUDA kernels, got input ", input.sizes());
  TORCH_CHECK(groups <= kMaxGridYZ, fn, ": at most ", kMaxGridYZ,
              " groups are supported unless the conv is depthwise, got ", groups);
  return g;
}

bool is_depthwise(const Geom& g) {
  return g.Cg == 1;
}

// [O, Cg, kh, kw] -> [groups][K][Og] with k = (ky*kw + kx)*Cg + ci: the B operand of the
// implicit GEMM, output channel fastest so that the per-block weight slices load coalesced.
at::Tensor pack_weight(const at::Tensor& weight, const Geom& g) {
  return weight.reshape({g.groups, g.Og, g.Cg, g.kh, g.kw})
      .permute({0, 3, 4, 2, 1})
      .contiguous();
}

// Blocks of a 1-D launch over `threads_total` threads (one per position x channel).
unsigned blocks_1d(int64_t threads_total, const char* fn) {
  const int64_t blocks = ceil_div(threads_total, kThreads);
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), fn, ": problem too large for a 1-D grid (",
              threads_total, " threads)");
  return static_cast<unsigned>(blocks);
}

dim3 grid_over_positions(int64_t capacity, int64_t per_block, int64_t y, int64_t z) {
  return dim3(static_cast<unsigned>(ceil_div(capacity, per_block)), static_cast<unsigned>(y),
              static_cast<unsigned>(z));
}

// Chunk of positions per split-K block such that the chunk count fits in a grid dimension.
int64_t split_chunk(int64_t capacity, int64_t base, int64_t multiple) {
  int64_t chunk = base;
  if (ceil_div(capacity, chunk) > kMaxGridYZ) {
    chunk = ceil_div(ceil_div(capacity, kMaxGridYZ), multiple) * multiple;
  }
  return chunk;
}

}  // namespace

// ------------------------------------------------------------------------------------------------

namespace {

// Checks bias against the geometry; its contiguous copy, or undefined without one.
at::Tensor checked_bias(const char* fn, const std::optional<at::Tensor>& bias, const Geom& g,
                        const at::Tensor& input) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.O, fn, ": `bias` must have shape [", g.O,
              "], got ", bias->sizes());
  TORCH_CHECK(bias->device() == input.device(), fn, ": `bias` is on ", bias->device(),
              " but `input` is on ", input.device());
  TORCH_CHECK(bias->scalar_type() == input.scalar_type(), fn, ": `bias` dtype ",
              bias->scalar_type(), " differs from `input` dtype ", input.scalar_type());
  return bias->contiguous();
}

// Launches the forward kernels, which write conv2d(...) at the active positions of `mask` into
// `out` (through its strides) and touch nothing else.
void forward_active_into(const char* fn, const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& bias_c, const at::Tensor& mask, const Geom& g,
                         at::Tensor& out) {
  if (out.numel() == 0) {
    return;
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const ActiveList list = build_active_list(mask, stream);
  const bool has_bias = bias_c.defined();
  const Strides4 xs = strides_of(input);
  const Strides4 os = strides_of(out);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "masked_conv2d_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bias_ptr = has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr;
    if (is_depthwise(g)) {
      const at::Tensor w = weight.contiguous();
      masked_dwconv_fwd_kernel<scalar_t, acc_t>
          <<<blocks_1d(list.capacity * g.O, fn), kThreads, 0, stream>>>(
              input.const_data_ptr<scalar_t>(), xs, w.const_data_ptr<scalar_t>(), bias_ptr,
              list.idx.const_data_ptr<int>(), list.count.const_data_ptr<int>(),
              out.mutable_data_ptr<scalar_t>(), os, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const at::Tensor wp = pack_weight(weight, g);
      const int64_t otiles = ceil_div(g.Og, kFwdO);
      TORCH_CHECK(otiles <= kMaxGridYZ, fn, ": too many output channels per group (", g.Og, ")");
      masked_conv_fwd_gemm_kernel<scalar_t, acc_t>
          <<<grid_over_positions(list.capacity, kFwdP, otiles, g.groups), kThreads, 0, stream>>>(
              input.const_data_ptr<scalar_t>(), xs, wp.const_data_ptr<scalar_t>(), bias_ptr,
              list.idx.const_data_ptr<int>(), list.count.const_data_ptr<int>(),
              out.mutable_data_ptr<scalar_t>(), os, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

at::Tensor masked_conv2d_forward_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  const char* fn = "dl_lib::masked_conv2d (CUDA)";
  const Geom g = check_and_geometry(fn, input, weight, bias, mask, stride_h, stride_w, pad_h,
                                    pad_w, dilation_h, dilation_w, groups);
  const at::Tensor bias_c = checked_bias(fn, bias, g, input);
  c10::cuda::CUDAGuard guard(input.device());

  // Zero-filled output in the input's memory format; the kernels write the active positions.
  at::Tensor out = at::zeros({g.N, g.O, g.Ho, g.Wo},
                             input.options().memory_format(input.suggest_memory_format()));
  forward_active_into(fn, input, weight, bias_c, mask, g, out);
  return out;
}

void masked_conv2d_out_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, at::Tensor& out) {
  const char* fn = "dl_lib::masked_conv2d_out (CUDA)";
  const Geom g = check_and_geometry(fn, input, weight, bias, mask, stride_h, stride_w, pad_h,
                                    pad_w, dilation_h, dilation_w, groups);
  const at::Tensor bias_c = checked_bias(fn, bias, g, input);
  check_like_input(fn, "out", out, input, /*same_dtype=*/true);
  TORCH_CHECK(out.device() == input.device() && out.scalar_type() == input.scalar_type(), fn,
              ": `out` must be a ", input.scalar_type(), " tensor on ", input.device(),
              " like `input`, got ", out.scalar_type(), " on ", out.device());
  TORCH_CHECK(out.dim() == 4 && out.size(0) == g.N && out.size(1) == g.O && out.size(2) == g.Ho &&
                  out.size(3) == g.Wo,
              fn, ": `out` must have the convolution's output shape [", g.N, ", ", g.O, ", ",
              g.Ho, ", ", g.Wo, "], got ", out.sizes());
  // Each element is written by one thread; `input` is read while `out` is written.
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, input);
  c10::cuda::CUDAGuard guard(input.device());
  forward_active_into(fn, input, weight, bias_c, mask, g, out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask) {
  const char* fn = "dl_lib::_masked_conv2d_backward (CUDA)";
  const Geom g = check_and_geometry(fn, input, weight, /*bias=*/std::nullopt, mask, stride_h,
                                    stride_w, pad_h, pad_w, dilation_h, dilation_w, groups);
  TORCH_CHECK(grad_output.device() == input.device(), fn, ": `grad_output` is on ",
              grad_output.device(), " but `input` is on ", input.device());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), fn, ": `grad_output` dtype ",
              grad_output.scalar_type(), " differs from `input` dtype ", input.scalar_type());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.O &&
                  grad_output.size(2) == g.Ho && grad_output.size(3) == g.Wo,
              fn, ": `grad_output` must have shape [", g.N, ", ", g.O, ", ", g.Ho, ", ", g.Wo,
              "], got ", grad_output.sizes());
  c10::cuda::CUDAGuard guard(input.device());

  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());
  const at::TensorOptions acc_opts = input.options().dtype(acc_type);
  // Accumulation buffers (fp32 for half/bf16, so atomics don't lose precision).
  at::Tensor gin_acc;  // [N, H, W, C]
  at::Tensor gw_acc;   // depthwise: [O, kh*kw]; otherwise [groups, kh, kw, Cg, Og]
  at::Tensor gb_acc;   // [O]
  if (output_mask[0]) {
    gin_acc = at::zeros({g.N, g.H, g.W, g.C}, acc_opts);
  }
  if (output_mask[1]) {
    gw_acc = is_depthwise(g) ? at::zeros({g.O, static_cast<int64_t>(g.kh) * g.kw}, acc_opts)
                             : at::zeros({g.groups, g.kh, g.kw, g.Cg, g.Og}, acc_opts);
  }
  if (output_mask[2]) {
    gb_acc = at::zeros({g.O}, acc_opts);
  }

  const int64_t P = g.N * g.Ho * g.Wo;
  if (P > 0 && g.O > 0 && (output_mask[0] || output_mask[1] || output_mask[2])) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const ActiveList list = build_active_list(mask, stream);
    const Strides4 gs = strides_of(grad_output);
    const Strides4 xs = strides_of(input);
    const int64_t ctiles = ceil_div(g.O, kRedC);
    TORCH_CHECK(ctiles <= kMaxGridYZ, fn, ": too many output channels (", g.O, ")");

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "masked_conv2d_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
      const scalar_t* x = input.const_data_ptr<scalar_t>();
      const int* idx = list.idx.const_data_ptr<int>();
      const int* cnt = list.count.const_data_ptr<int>();

      if (output_mask[2]) {
        const int64_t chunk = split_chunk(list.capacity, kRedChunk, kRedRows);
        masked_channel_reduce_kernel<scalar_t, acc_t>
            <<<dim3(static_cast<unsigned>(ceil_div(list.capacity, chunk)),
                    static_cast<unsigned>(ctiles), 1),
               dim3(kRedC, kRedRows), 0, stream>>>(go, gs, x, xs, /*with_input=*/false, idx, cnt,
                                                   gb_acc.mutable_data_ptr<acc_t>(), g, chunk);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }

      if (is_depthwise(g)) {
        if (output_mask[0]) {
          const at::Tensor w = weight.contiguous();
          masked_dwconv_bwd_input_kernel<scalar_t, acc_t>
              <<<blocks_1d(list.capacity * g.O, fn), kThreads, 0, stream>>>(
                  go, gs, w.const_data_ptr<scalar_t>(), idx, cnt,
                           gin_acc.mutable_data_ptr<acc_t>(), g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (output_mask[1]) {
          const int64_t chunk = split_chunk(list.capacity, kRedChunk, kRedRows);
          TORCH_CHECK(static_cast<int64_t>(g.kh) * g.kw <= kMaxGridYZ, fn, ": kernel too large");
          masked_channel_reduce_kernel<scalar_t, acc_t>
              <<<dim3(static_cast<unsigned>(ceil_div(list.capacity, chunk)),
                      static_cast<unsigned>(ctiles), static_cast<unsigned>(g.kh * g.kw)),
                 dim3(kRedC, kRedRows), 0, stream>>>(go, gs, x, xs, /*with_input=*/true, idx, cnt,
                                                     gw_acc.mutable_data_ptr<acc_t>(), g, chunk);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      } else {
        const at::Tensor wp = (output_mask[0]) ? pack_weight(weight, g) : at::Tensor();
        if (output_mask[0]) {
          const int64_t ktiles = ceil_div(g.K, kGiK);
          TORCH_CHECK(ktiles <= kMaxGridYZ, fn, ": reduction axis too long (K=", g.K, ")");
          masked_conv_bwd_input_gemm_kernel<scalar_t, acc_t>
              <<<grid_over_positions(list.capacity, kGiP, ktiles, g.groups), kThreads, 0,
                 stream>>>(go, gs, wp.const_data_ptr<scalar_t>(), idx, cnt,
                           gin_acc.mutable_data_ptr<acc_t>(), g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (output_mask[1]) {
          const int64_t chunk = split_chunk(list.capacity, kGwChunk, kGwP);
          const int64_t oy_blocks = g.groups * ceil_div(g.Og, kGwO);
          TORCH_CHECK(oy_blocks <= kMaxGridYZ, fn, ": too many output channels (", g.O, ")");
          masked_conv_bwd_weight_gemm_kernel<scalar_t, acc_t>
              <<<dim3(static_cast<unsigned>(ceil_div(g.K, kGwK)),
                      static_cast<unsigned>(oy_blocks),
                      static_cast<unsigned>(ceil_div(list.capacity, chunk))),
                 kThreads, 0, stream>>>(go, gs, x, xs, idx, cnt, gw_acc.mutable_data_ptr<acc_t>(),
                                        g, chunk);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    });
  }

  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) {
    grad_input = gin_acc.permute({0, 3, 1, 2})
                     .to(input.scalar_type())
                     .contiguous(input.suggest_memory_format());
  }
  if (output_mask[1]) {
    grad_weight = is_depthwise(g)
        ? gw_acc.view({g.O, 1, g.kh, g.kw}).to(weight.scalar_type()).contiguous()
        : gw_acc.permute({0, 4, 3, 1, 2})
              .reshape({g.O, g.Cg, g.kh, g.kw})
              .to(weight.scalar_type())
              .contiguous();
  }
  if (output_mask[2]) {
    grad_bias = gb_acc.to(input.scalar_type());
  }
  return std::make_tuple(grad_input, grad_weight, grad_bias);
}

TORCH_LIBRARY_IMPL(dl_lib, CUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d_forward_cuda);
  m.impl("masked_conv2d_out", &masked_conv2d_out_cuda);
  m.impl("_masked_conv2d_backward", &masked_conv2d_backward_cuda);
}

}  // namespace ops
}  // namespace dl_lib
