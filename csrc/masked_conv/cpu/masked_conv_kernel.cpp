// CPU kernels of the sparse masked convolution (see masked_conv.h for the conventions).
//
// Forward dataflow (float32 on AVX-512 or AVX2+FMA CPUs, general KxK / 1x1 / grouped):
//   1. the active output positions are listed once, in raster order (n, y, x);
//   2. the output (allocated uninitialised) is cut into work units of about equal cost, each a
//      range of flat output positions; threads take units from a shared counter inside ONE
//      parallel region per call (a static split waited on whichever thread the OS had
//      descheduled), zero the inactive positions of the unit with streaming stores and compute
//      its active ones, so every output element is written exactly once;
//   3. active pixels are computed in chunks by the implicit-GEMM tile (implicit_gemm.h): 6-8
//      pixels x 64 (AVX-512) or 16 (AVX2) output channels in registers, reading each tap
//      straight from the NHWC input against weight panels packed once per weight
//      (packed_weight_cache.h); no im2col buffer and no BLAS call. Calling MKL from inside a
//      parallel region nests OpenMP teams (PyTorch turns MKL's dynamic threading off), which on
//      two busy cores made the previous gather + at::mm kernel 10-50x slower.
// Parallel regions go through cpu::parallel_team / cpu::parallel_for (parallel.h): the extension
// is compiled without -fopenmp, where at::parallel_for silently runs serially.
// Depthwise (Cg == 1, Og == 1) walks the active pixels of each unit with channel-vectorised
// FMAs, prefetching the taps of the pixel a few positions ahead.
// float64, or CPUs without AVX2+FMA: gather NHWC im2col rows + at::mm_out, chunks run serially so
// the BLAS may use all threads.
//
// masked_conv2d_out runs the same kernels into a caller's tensor and skips the zeros (a model that
// fills the skipped positions from elsewhere would otherwise pay for writing them twice).
//
// Backward: the same gather gives grad_weight = sum_chunks cols^T @ grad_rows (one accumulator per
// part, reduced at the end, so the result is deterministic) and grad_input by scattering
// grad_rows @ W^T back to the taps. grad_input is race-free: the active list is split into parts
// that are contiguous in raster order, each part accumulates into a private band of input rows,
// and the bands (which overlap only by the kernel's extent) are summed into grad_input at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "masked_conv/check_args.h"
#include "masked_conv/cpu/implicit_gemm.h"
#include "masked_conv/cpu/output_pool.h"
#include "masked_conv/cpu/packed_weight_cache.h"
#include "masked_conv/cpu/parallel.h"
#include "masked_conv/masked_conv.h"

namespace dl_lib {
namespace ops {
namespace {

// Bytes of im2col rows a chunk may hold: about a quarter of a typical per-core L2, leaving room
// for the packed weight panel and the GEMM's own blocking.
constexpr int64_t kChunkBytes = 512 * 1024;
constexpr int64_t kMinRows = 32;
constexpr int64_t kMaxRows = 512;


// Channel loops of the direct kernels and the gradient scatters. setup.py compiles for the
// baseline x86-64 ISA (SSE2), so these few hot loops are cloned for AVX2 and AVX-512 and picked
// at load time (GCC function multiversioning); elsewhere they stay portable.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DL_LIB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DL_LIB_CLONES
#endif

#define DL_LIB_DEFINE_ROW_OPS(T)                                                          \
  DL_LIB_CLONES void row_fma(T* __restrict__ acc, const T* __restrict__ a,                \
                             const T* __restrict__ b, int64_t n) {                        \
    for (int64_t i = 0; i < n; ++i) acc[i] += a[i] * b[i];                                \
  }                                                                                       \
  DL_LIB_CLONES void row_add(T* __restrict__ dst, const T* __restrict__ src, int64_t n) { \
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];                                     \
  }
DL_LIB_DEFINE_ROW_OPS(float)
DL_LIB_DEFINE_ROW_OPS(double)
#undef DL_LIB_DEFINE_ROW_OPS

struct Geometry {
  int64_t N, C, H, W, O, Ho, Wo;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t G, Cg, Og;
  int64_t taps() const { return kh * kw; }
  int64_t row_len() const { return kh * kw * Cg; }
  bool depthwise() const { return Cg == 1 && Og == 1; }
};

Geometry check_and_describe(
    const char* fn, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mask, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t groups) {
  check_masked_conv_args(fn, input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w,
                         dilation_h, dilation_w, groups);
  TORCH_CHECK(input.dim() == 4, fn, ": input must be N x C x H x W, got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, fn, ": weight must be O x C/groups x kh x kw, got shape ",
              weight.sizes());
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu() && mask.device().is_cpu(), fn,
              ": the CPU kernel needs CPU tensors, got input on ", input.device(), ", weight on ",
              weight.device(), ", mask on ", mask.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, fn,
              ": the CPU kernel supports float32 and float64, got ", input.scalar_type(),
              " (dl_lib.layers.masked_conv2d falls back to the reference for other dtypes)");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), fn, ": weight dtype ",
              weight.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(stride_h > 0 && stride_w > 0 && dilation_h > 0 && dilation_w > 0 && pad_h >= 0 &&
                  pad_w >= 0 && groups > 0,
              fn, ": stride and dilation must be positive, padding non-negative and groups > 0");
  Geometry g;
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.O = weight.size(0);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.sh = stride_h;
  g.sw = stride_w;
  g.ph = pad_h;
  g.pw = pad_w;
  g.dh = dilation_h;
  g.dw = dilation_w;
  g.G = groups;
  TORCH_CHECK(g.C % groups == 0 && g.O % groups == 0, fn, ": in_channels (", g.C,
              ") and out_channels (", g.O, ") must be divisible by groups (", groups, ")");
  g.Cg = g.C / groups;
  g.Og = g.O / groups;
  TORCH_CHECK(weight.size(1) == g.Cg, fn, ": weight.shape[1] must be in_channels/groups = ", g.Cg,
              ", got ", weight.size(1));
  g.Ho = (g.H + 2 * pad_h - dilation_h * (g.kh - 1) - 1) / stride_h + 1;
  g.Wo = (g.W + 2 * pad_w - dilation_w * (g.kw - 1) - 1) / stride_w + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, fn, ": the output would be empty (", g.Ho, " x ", g.Wo,
              "); the input ", g.H, " x ", g.W, " is too small for this kernel/padding");
  TORCH_CHECK(mask.scalar_type() == at::kBool, fn, ": mask must be bool, got ",
              mask.scalar_type());
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == g.N && mask.size(1) == 1 &&
                  mask.size(2) == g.Ho && mask.size(3) == g.Wo,
              fn, ": mask must have shape (N, 1, Ho, Wo) = (", g.N, ", 1, ", g.Ho, ", ", g.Wo,
              ") on the output grid, got ", mask.sizes());
  return g;
}

// Flat indices n*Ho*Wo + y*Wo + x of the active outputs, in raster order.
// Two passes over blocks of the mask, in parallel for large masks (a serial scan with a branch
// per position was ~7% of a 1x1 layer's time at d = 0.25 and kept the other threads idle): count
// the active positions of each block, then each block writes its indices at its offset, eight
// mask bytes at a time.
std::vector<int64_t> active_positions(const at::Tensor& mask) {
  const at::Tensor m = mask.contiguous();
  const uint8_t* p = reinterpret_cast<const uint8_t*>(m.const_data_ptr<bool>());
  const int64_t total = m.numel();
  constexpr int64_t kBlock = 1 << 14;  // positions per block, a multiple of 8
  const int64_t nblocks = (total + kBlock - 1) / kBlock;
  std::vector<int64_t> offset(static_cast<size_t>(nblocks + 1), 0);
  const auto count = [&](int64_t b) {
    const int64_t i0 = b * kBlock, i1 = std::min(total, i0 + kBlock);
    int64_t c = 0;
    for (int64_t i = i0; i < i1; ++i) c += p[i];  // bool bytes are 0 or 1; vectorised
    offset[b + 1] = c;
  };
  const auto fill = [&](int64_t b, int64_t* out) {
    const int64_t i0 = b * kBlock, i1 = std::min(total, i0 + kBlock);
    int64_t k = offset[b];
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      // Bool bytes are 0 or 1, so each active position is one set bit, at 8 * (its byte); the
      // loop runs once per active position (little-endian: byte j holds bits 8j..8j+7).
      while (word != 0) {
        out[k++] = i + (__builtin_ctzll(word) >> 3);
        word &= word - 1;
      }
    }
    for (; i < i1; ++i) {
      if (p[i]) out[k++] = i;
    }
  };
  // Small masks are scanned inline: waking the team would cost more than the scan.
  const auto for_each_block = [&](const auto& f) {
    if (total < 4 * kBlock) {
      for (int64_t b = 0; b < nblocks; ++b) f(b);
      return;
    }
    cpu::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) f(b);
    });
  };
  for_each_block(count);
  for (int64_t b = 0; b < nblocks; ++b) offset[b + 1] += offset[b];
  std::vector<int64_t> pos(static_cast<size_t>(offset[nblocks]));
  for_each_block([&](int64_t b) { fill(b, pos.data()); });
  return pos;
}

int64_t chunk_rows(const Geometry& g, size_t elem) {
  const int64_t bytes_per_row = std::max<int64_t>(1, g.row_len() * static_cast<int64_t>(elem));
  return std::min(kMaxRows, std::max(kMinRows, kChunkBytes / bytes_per_row));
}

// Weight [O, Cg, kh, kw] -> [G, kh*kw*Cg, Og], rows in the same (tap, channel) order as a gathered
// NHWC im2col row.
at::Tensor pack_weight(const at::Tensor& weight, const Geometry& g) {
  return weight.reshape({g.G, g.Og, g.Cg, g.kh, g.kw})
      .permute({0, 3, 4, 2, 1})
      .contiguous()
      .view({g.G, g.row_len(), g.Og});
}

at::Tensor unpack_weight_grad(const at::Tensor& packed, const Geometry& g) {
  return packed.view({g.G, g.kh, g.kw, g.Cg, g.Og})
      .permute({0, 4, 3, 1, 2})
      .reshape({g.O, g.Cg, g.kh, g.kw})
      .contiguous();
}

// im2col rows of `rows` active positions for group `grp` from the NHWC input; taps that fall in
// the zero padding are written as zeros.
template <typename scalar_t>
void gather_rows(const scalar_t* x, const Geometry& g, const int64_t* pos, int64_t rows,
                 int64_t grp, scalar_t* cols) {
  const int64_t hw = g.Ho * g.Wo;
  const int64_t len = g.row_len();
  const size_t cbytes = sizeof(scalar_t) * g.Cg;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t idx = pos[r];
    const int64_t n = idx / hw, rem = idx % hw;
    const int64_t iy0 = (rem / g.Wo) * g.sh - g.ph, ix0 = (rem % g.Wo) * g.sw - g.pw;
    scalar_t* dst = cols + r * len;
    const scalar_t* img = x + n * g.H * g.W * g.C + grp * g.Cg;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = iy0 + ky * g.dh;
      if (iy < 0 || iy >= g.H) {
        std::memset(dst, 0, cbytes * g.kw);
        dst += g.kw * g.Cg;
        continue;
      }
      const scalar_t* row = img + iy * g.W * g.C;
      for (int64_t kx = 0; kx < g.kw; ++kx, dst += g.Cg) {
        const int64_t ix = ix0 + kx * g.dw;
        if (ix < 0 || ix >= g.W) {
          std::memset(dst, 0, cbytes);
        } else {
          std::memcpy(dst, row + ix * g.C, cbytes);
        }
      }
    }
  }
}

// Output strides of the dense result, so the scatter writes NHWC or NCHW alike.
struct OutStrides {
  int64_t n, c, y, x;
};

OutStrides out_strides(const at::Tensor& out) {
  return {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
}

// The forward output is allocated with at::empty and written exactly once: every work unit is a
// range of flat output positions [f0, f1) (n*Ho*Wo + y*Wo + x) holding the active positions
// pos[a0..a1); its thread computes those and writes zeros to the rest of the range. Zero-filling
// the whole output up front instead cost as much as the depthwise/1x1 computation at d=0.25.
struct WorkRange {
  int64_t f0, f1;  // flat output positions
  int64_t a0, a1;  // indices into the active list
};

// Cuts the output into `parts` ranges of about equal cost, where an inactive position costs 1
// (writing zeros) and an active one `active_cost` (computing it). Boundaries sit on active
// positions, so each range's actives are a contiguous slice of `pos`.
// align > 1: every range but the last holds a multiple of `align` active positions (whole tiles).
std::vector<WorkRange> split_work(const std::vector<int64_t>& pos, int64_t total, int64_t parts,
                                  int64_t active_cost, int64_t align = 1) {
  const int64_t M = static_cast<int64_t>(pos.size());
  // cost of the positions before active i: pos[i] + (active_cost - 1) * i, increasing in i.
  const double total_cost = static_cast<double>(total) + double(active_cost - 1) * double(M);
  std::vector<int64_t> cut(parts + 1);
  cut[0] = 0;
  cut[parts] = M;
  for (int64_t p = 1; p < parts; ++p) {
    const double target = total_cost * double(p) / double(parts);
    int64_t lo = cut[p - 1], hi = M;  // first i with cost(i) >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (double(pos[mid]) + double(active_cost - 1) * double(mid) < target) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (align > 1) lo = std::min(M, (lo + align / 2) / align * align);
    cut[p] = std::max(lo, cut[p - 1]);
  }
  std::vector<WorkRange> ranges;
  for (int64_t p = 0; p < parts; ++p) {
    WorkRange r;
    r.a0 = cut[p];
    r.a1 = cut[p + 1];
    r.f0 = p == 0 ? 0 : (r.a0 < M ? pos[r.a0] : total);
    r.f1 = p + 1 == parts ? total : (r.a1 < M ? pos[r.a1] : total);
    if (r.f1 > r.f0) ranges.push_back(r);
  }
  return ranges;
}

// Work units of a forward: up to 16 per thread, each worth at least ~2^17 output floats zeroed
// (tens of microseconds), so that threads can take them dynamically (run_units). A static split
// into one range per thread made the wall time that of the slowest thread, and on a shared,
// loaded machine one of the two threads is often descheduled for a whole time slice.
// inactive_cost / active_cost: work per inactive / active output position, in floats written
// (zeroing) or about 8 FMAs (computing).
// min_actives: fewest active positions per unit on average (a unit of the implicit GEMM streams
// the whole weight once, so one-pixel units would read it once per pixel).
std::vector<WorkRange> work_units(const std::vector<int64_t>& pos, int64_t total,
                                  int64_t inactive_cost, int64_t active_cost,
                                  int64_t min_actives = 1, int64_t align = 1) {
  const int64_t M = static_cast<int64_t>(pos.size());
  const double work = double(total - M) * double(inactive_cost) + double(M) * double(active_cost);
  const int64_t threads = static_cast<int64_t>(at::get_num_threads());
  const int64_t by_work = static_cast<int64_t>(work / (1 << 17));
  // Few active positions still leave the zeros to share: at least one unit per thread when the
  // work is large (an empty or one-pixel mask used to zero a 25 MB output on one thread).
  const int64_t parts = std::max<int64_t>(
      {1, std::min(threads, by_work),
       std::min({16 * threads, by_work, M / std::max<int64_t>(1, min_actives)})});
  const int64_t ratio = std::max<int64_t>(1, active_cost / std::max<int64_t>(1, inactive_cost));
  return split_work(pos, total, parts, ratio, align);
}

// Runs fn(thread_state, unit) for every unit inside one parallel region; threads take the next
// unit from a shared counter. make_state() builds each thread's scratch buffers once.
// cpu::parallel_team (not at::parallel_for, which runs serially in this -fopenmp-less build; see
// parallel.h) so that the forward uses all intra-op threads.
template <typename MakeState, typename Fn>
void run_units(int64_t units, const MakeState& make_state, const Fn& fn) {
  std::atomic<int64_t> next{0};
  const auto work = [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t u = next++; u < units; u = next++) fn(state, u);
    // Non-temporal stores (zeros, streamed outputs) become visible to the caller's thread.
    if (cpu::implicit_gemm_available()) cpu::stream_fence();
  };
  if (units <= 1) {
    work(0, 1);  // waking the team would cost more than it saves
    return;
  }
  cpu::parallel_team(work);
}

// True when the output is one contiguous NHWC block (flat position f at f * O).
inline bool flat_nhwc(const OutStrides& os, const Geometry& g) {
  return os.c == 1 && os.x == g.O && os.y == g.Wo * g.O && os.n == g.Ho * g.Wo * g.O;
}

// Writes zeros to the output positions in [b, e) (all of them inactive), whose images may differ.
template <typename scalar_t>
void zero_run(scalar_t* op, const OutStrides& os, const Geometry& g, int64_t b, int64_t e) {
  const int64_t hw = g.Ho * g.Wo;
  while (b < e) {
    const int64_t n = b / hw, s0 = b % hw;
    const int64_t s1 = std::min(hw, s0 + (e - b));
    scalar_t* img = op + n * os.n;
    if (os.c == 1 && os.x == g.O && os.y == g.Wo * g.O) {  // NHWC: one block
      const int64_t count = (s1 - s0) * g.O;
      if (std::is_same_v<scalar_t, float> && count >= 64 && cpu::implicit_gemm_available()) {
        cpu::zero_stream(reinterpret_cast<float*>(img + s0 * g.O), count);
      } else {
        std::memset(img + s0 * g.O, 0, sizeof(scalar_t) * count);
      }
    } else if (os.x == 1 && os.y == g.Wo && os.c == hw) {  // NCHW: one run per channel
      for (int64_t c = 0; c < g.O; ++c) {
        std::memset(img + c * hw + s0, 0, sizeof(scalar_t) * (s1 - s0));
      }
    } else {
      for (int64_t s = s0; s < s1; ++s) {
        scalar_t* px = img + (s / g.Wo) * os.y + (s % g.Wo) * os.x;
        for (int64_t c = 0; c < g.O; ++c) px[c * os.c] = scalar_t(0);
      }
    }
    b += s1 - s0;
  }
}

// Zeros of every inactive position of range `r`.
template <typename scalar_t>
void zero_inactive(scalar_t* op, const OutStrides& os, const Geometry& g,
                   const std::vector<int64_t>& pos, const WorkRange& r) {
  if (std::is_same_v<scalar_t, float> && cpu::implicit_gemm_available() &&
      flat_nhwc(os, g)) {
    // The whole output is one NHWC block: position f starts at f * O. At density 0.25 a
    // random mask has a run of zeros every 4 positions, so the per-run image/row arithmetic of
    // zero_run (two divisions) was a visible share of a 1x1 layer.
    float* base = reinterpret_cast<float*>(op);
    const int64_t* p = pos.data();
    int64_t cur = r.f0;
    for (int64_t i = r.a0; i <= r.a1; ++i) {
      const int64_t next = i < r.a1 ? p[i] : r.f1;
      if (next > cur) cpu::zero_stream(base + cur * g.O, (next - cur) * g.O);
      cur = next + 1;
    }
    cpu::stream_fence();
    return;
  }
  int64_t cur = r.f0;
  for (int64_t i = r.a0; i <= r.a1; ++i) {
    const int64_t next = i < r.a1 ? pos[i] : r.f1;
    if (next > cur) zero_run(op, os, g, cur, next);
    cur = next + 1;
  }
  if (cpu::implicit_gemm_available()) cpu::stream_fence();
}

// Weight [O, Cg, kh, kw] -> per group, per block of bc = cpu::block_cols() output channels (the
// kernel ISA's block width), a panel [kh*kw*Cg, panel_width] (tap-major, channel-minor rows like
// an NHWC im2col row; zero-padded columns). Block (grp, nb) starts at
// (grp * nblocks + nb) * kh*kw*Cg * bc, all blocks
// but a group's last being full. Plain loops rather than ATen's permute + contiguous, in one
// parallel region (units of one block x one input channel) since it is on the
// critical path whenever the weight is not in the packed-weight cache (training, first call).
std::vector<float> pack_panels(const at::Tensor& weight, const Geometry& g, int64_t nblocks) {
  const at::Tensor wc = weight.contiguous();
  const float* w = wc.const_data_ptr<float>();
  const int64_t taps = g.taps(), K = g.row_len();
  const int64_t bc = cpu::block_cols();
  std::vector<float> panels(static_cast<size_t>(g.G * nblocks * K * bc), 0.f);
  const int64_t units = g.G * nblocks * g.Cg;
  std::atomic<int64_t> next{0};
  cpu::parallel_team([&](int64_t, int64_t) {
    for (int64_t u = next++; u < units; u = next++) {
      const int64_t c = u % g.Cg, blk_idx = u / g.Cg;
      const int64_t grp = blk_idx / nblocks, nb = blk_idx % nblocks;
      const int64_t o0 = grp * g.Og + nb * bc;
      const int64_t nc = std::min<int64_t>(bc, g.Og - nb * bc);
      const int64_t ld = cpu::panel_width(nc);
      float* blk = panels.data() + blk_idx * K * bc;
      // The nc weight rows are read side by side in memory order (tap), so the read streams
      // are sequential; each (c, tap) fills one panel row.
      for (int64_t t = 0; t < taps; ++t) {
        const float* src = w + o0 * K + c * taps + t;
        float* row = blk + (t * g.Cg + c) * ld;
        for (int64_t o = 0; o < nc; ++o) row[o] = src[o * K];
      }
    }
  });
  return panels;
}

// Float32 forward through the AVX-512 or AVX2 implicit-GEMM tile (implicit_gemm.h): one
// parallel region per call, each thread computing its range of active pixels in chunks (tap
// pointers built once per chunk, weight blocks reused across the chunk's tiles while they sit in
// L2) and zeroing the inactive positions of its range.
// zero_rest == false (masked_conv2d_out): the inactive positions keep what `out` held.
void forward_implicit_gemm(const at::Tensor& x, const at::Tensor& weight, const float* bias,
                           const Geometry& g, const std::vector<int64_t>& pos, at::Tensor& out,
                           bool zero_rest) {
  constexpr int64_t RMAX = cpu::kMaxTileRows;
  const int64_t taps = g.taps();
  const int64_t bc = cpu::block_cols();  // output channels per panel block (per ISA)
  const int64_t nblocks = (g.Og + bc - 1) / bc;
  // Cached across calls while the weight is unchanged (packed_weight_cache.h); `layout` names
  // G and the block width, the packing parameters that the weight's shape does not fix.
  const cpu::PackedPanels panels = cpu::packed_weight(
      weight, g.G * cpu::kMaxBlockCols + bc, [&] { return pack_panels(weight, g, nblocks); });
  std::vector<float> bias_pad(static_cast<size_t>(g.G * nblocks * bc), 0.f);
  if (bias) {
    for (int64_t grp = 0; grp < g.G; ++grp) {
      for (int64_t o = 0; o < g.Og; ++o) {
        bias_pad[grp * nblocks * bc + o] = bias[grp * g.Og + o];
      }
    }
  }
  // Pixels per chunk: the input a chunk's taps read (<= rows * taps * Cg floats, less where
  // neighbours share taps) about 512 KiB, next to the weight block, in a 1 MiB (Zen 4) L2.
  const int64_t row_bytes = taps * g.Cg * static_cast<int64_t>(sizeof(float));
  // Chunks (and the work ranges below) hold whole tiles: a multiple of kTileLcm pixels, since a
  // tile of tile_rows() = 6 or 8 pixels is computed in full whatever it holds. (32-pixel chunks
  // for the 512-channel layers made the last tile of every chunk 1/3 full: ~11 % of the FMAs.)
  constexpr int64_t kTileLcm = 24;
  const int64_t chunk = std::max<int64_t>(
      kTileLcm, std::min<int64_t>(192, (512 << 10) / row_bytes) / kTileLcm * kTileLcm);
  const float* xp = x.const_data_ptr<float>();
  const float* pp = panels->data();
  float* op = out.mutable_data_ptr<float>();
  const OutStrides os = out_strides(out);
  const int64_t hw = g.Ho * g.Wo;
  const bool stream = out.nbytes() >= static_cast<size_t>(cpu::kStreamOutputBytes);
  // Work units: a range of output positions (work_units) x a range of the output-channel blocks.
  // Ranges hold >= 4 tiles of active pixels each, so that a weight panel read from L3/DRAM is
  // used by several tiles; when that leaves too few ranges to keep the threads busy (large
  // layers at low density: routing_l4_3x3 at d = 0.05 has 26 active pixels and a 9.4 MB weight)
  // the blocks are split among units instead, so each block's panel is still read only once.
  // Only the first block range of a position range writes its zeros.
  const std::vector<WorkRange> ranges =
      work_units(pos, g.N * hw, zero_rest ? g.O : 0, g.O + taps * g.Cg * g.O / 8, 4 * RMAX,
                 kTileLcm);
  const int64_t nranges = static_cast<int64_t>(ranges.size());
  const int64_t target_units = 8 * static_cast<int64_t>(at::get_num_threads());
  const int64_t nbsplit =
      std::min<int64_t>(nblocks, std::max<int64_t>(1, (target_units + nranges - 1) / nranges));
  // 1x1, stride 1, no padding, NHWC output: flat position f reads input pixel f and writes at
  // f * O (x is NHWC-contiguous here).
  const bool pointwise = taps == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 &&
                         g.Ho == g.H && g.Wo == g.W && flat_nhwc(os, g);
  // Offsets of the taps from the receptive field's top-left input pixel, and its extent.
  std::vector<int64_t> tap_offset(static_cast<size_t>(taps));
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      tap_offset[ky * g.kw + kx] = (ky * g.dh * g.W + kx * g.dw) * g.C;
    }
  }
  const int64_t extent_h = (g.kh - 1) * g.dh, extent_w = (g.kw - 1) * g.dw;
  struct Scratch {
    std::vector<float> zeros;
    std::vector<const float*> a;
    std::vector<float*> base, dst;
  };
  const auto make_scratch = [&] {
    Scratch s;
    s.zeros.assign(static_cast<size_t>(g.Cg), 0.f);
    // A chunk's last tile may run past its pixels by up to RMAX - 1 padding rows.
    s.a.resize(static_cast<size_t>((chunk + RMAX) * taps));
    s.base.resize(static_cast<size_t>(chunk + RMAX));
    s.dst.resize(static_cast<size_t>(chunk + RMAX));
    return s;
  };
  run_units(nranges * nbsplit, make_scratch, [&](Scratch& s, int64_t u) {
    const WorkRange& wr = ranges[u / nbsplit];
    const int64_t bsplit = u % nbsplit;
    const int64_t nb0 = nblocks * bsplit / nbsplit, nb1 = nblocks * (bsplit + 1) / nbsplit;
    if (bsplit == 0 && zero_rest) zero_inactive(op, os, g, pos, wr);
    const float* zeros = s.zeros.data();
    for (int64_t r0 = wr.a0; r0 < wr.a1; r0 += chunk) {
      const int64_t nr = std::min(chunk, wr.a1 - r0);
      const int64_t nr_pad = nr + RMAX;  // the tiles (of tile_rows(nc) <= RMAX) read up to here
      for (int64_t grp = 0; grp < g.G; ++grp) {
        // Output coordinates (n, oy, ox) of the previous active position: the list is in raster
        // order, so most steps are shorter than a row and need no division (three 64-bit
        // divisions and nine bounds checks per pixel cost as much as the FMAs of a 16-channel
        // 3x3 layer).
        int64_t prev = -1, n = 0, oy = 0, ox = 0;
        // Tap pointers of the chunk (padding taps and padding rows read zeros).
        for (int64_t r = 0; r < nr_pad; ++r) {
          const float** ar = s.a.data() + r * taps;
          if (r >= nr) {
            std::fill(ar, ar + taps, zeros);
            s.base[r] = nullptr;
            continue;
          }
          if (pointwise) {  // input pixel = output pixel: no image/row arithmetic
            const int64_t idx = pos[r0 + r];
            ar[0] = xp + idx * g.C + grp * g.Cg;
            s.base[r] = op + idx * g.O + grp * g.Og;
            continue;
          }
          const int64_t idx = pos[r0 + r];
          const int64_t step = idx - prev;
          if (prev >= 0 && step < g.Wo) {  // at most one row boundary crossed
            ox += step;
            if (ox >= g.Wo) {
              ox -= g.Wo;
              if (++oy == g.Ho) {
                oy = 0;
                ++n;
              }
            }
          } else {
            n = idx / hw;
            const int64_t rem = idx % hw;
            oy = rem / g.Wo;
            ox = rem % g.Wo;
          }
          prev = idx;
          const int64_t iy0 = oy * g.sh - g.ph, ix0 = ox * g.sw - g.pw;
          const float* img = xp + n * g.H * g.W * g.C + grp * g.Cg;
          s.base[r] = op + n * os.n + oy * os.y + ox * os.x + grp * g.Og * os.c;
          if (iy0 >= 0 && ix0 >= 0 && iy0 + extent_h < g.H && ix0 + extent_w < g.W) {
            // The receptive field lies inside the image: no per-tap bounds checks.
            const float* corner = img + (iy0 * g.W + ix0) * g.C;
            for (int64_t t = 0; t < taps; ++t) ar[t] = corner + tap_offset[t];
            continue;
          }
          for (int64_t ky = 0; ky < g.kh; ++ky) {
            const int64_t iy = iy0 + ky * g.dh;
            for (int64_t kx = 0; kx < g.kw; ++kx) {
              const int64_t ix = ix0 + kx * g.dw;
              const bool inside = iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
              ar[ky * g.kw + kx] = inside ? img + (iy * g.W + ix) * g.C : zeros;
            }
          }
        }
        // Block-outer, tile-inner: a weight block is reused by all tiles of the chunk.
        for (int64_t nb = nb0; nb < nb1; ++nb) {
          const int64_t c0 = nb * bc;
          const int64_t nc = std::min<int64_t>(bc, g.Og - c0);
          const float* panel = pp + (grp * nblocks + nb) * taps * g.Cg * bc;
          const float* bp = bias_pad.data() + (grp * nblocks + nb) * bc;
          for (int64_t r = 0; r < nr_pad; ++r) {
            s.dst[r] = s.base[r] ? s.base[r] + c0 * os.c : nullptr;
          }
          const int64_t R = cpu::tile_rows(nc);
          for (int64_t t0 = 0; t0 < nr; t0 += R) {
            const float* const* next = t0 + R < nr ? s.a.data() + (t0 + R) * taps : nullptr;
            cpu::implicit_gemm_tile(s.a.data() + t0 * taps, taps, g.Cg, panel, bp, nc,
                                    s.dst.data() + t0, os.c, next, stream);
          }
        }
      }
    }
  });
}

// Portable forward (float64, or CPUs without AVX2+FMA): gather NHWC im2col rows of a chunk,
// at::mm_out against the packed weight, scatter. The chunks run one after another on the calling
// thread and each GEMM uses the BLAS's own threads: calling MKL inside at::parallel_for nests
// OpenMP teams (PyTorch disables MKL's dynamic threading), which oversubscribes the cores.
template <typename scalar_t>
void forward_general(const at::Tensor& x, const at::Tensor& wpack, const scalar_t* bias,
                     const Geometry& g, const std::vector<int64_t>& pos, at::Tensor& out) {
  const int64_t M = static_cast<int64_t>(pos.size());
  const int64_t rows = chunk_rows(g, sizeof(scalar_t));
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const OutStrides os = out_strides(out);
  const int64_t hw = g.Ho * g.Wo;
  at::Tensor cols = at::empty({rows, g.row_len()}, x.options());
  at::Tensor res = at::empty({rows, g.Og}, x.options());
  for (int64_t r0 = 0; r0 < M; r0 += rows) {
    const int64_t nr = std::min(rows, M - r0);
    at::Tensor cols_v = cols.narrow(0, 0, nr);
    at::Tensor res_v = res.narrow(0, 0, nr);
    for (int64_t grp = 0; grp < g.G; ++grp) {
      gather_rows<scalar_t>(xp, g, pos.data() + r0, nr, grp, cols.mutable_data_ptr<scalar_t>());
      at::mm_out(res_v, cols_v, wpack[grp]);
      const scalar_t* rp = res.const_data_ptr<scalar_t>();
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t idx = pos[r0 + r];
        const int64_t n = idx / hw, rem = idx % hw;
        scalar_t* dst =
            op + n * os.n + (rem / g.Wo) * os.y + (rem % g.Wo) * os.x + grp * g.Og * os.c;
        const scalar_t* src = rp + r * g.Og;
        const scalar_t* b = bias ? bias + grp * g.Og : nullptr;
        for (int64_t o = 0; o < g.Og; ++o) dst[o * os.c] = src[o] + (b ? b[o] : scalar_t(0));
      }
    }
  }
}

// Depthwise, one active pixel: dst[c] = b[c] + sum_t w[t, c] * src[t][c] (src[t] == nullptr
// for taps in the padding), 16 channels at a time kept in a local accumulator so that the whole
// tap loop runs in registers.
#define DL_LIB_DEFINE_DW_PIXEL(T)                                                           \
  DL_LIB_CLONES void dw_pixel(T* __restrict__ dst, int64_t dst_cstride,                     \
                              const T* const* __restrict__ src, const T* __restrict__ w,    \
                              const T* __restrict__ bias, int64_t taps, int64_t C) {        \
    constexpr int64_t B = 16;                                                               \
    for (int64_t c0 = 0; c0 < C; c0 += B) {                                                 \
      const int64_t nc = std::min(B, C - c0);                                               \
      T acc[B];                                                                             \
      if (nc == B) {                                                                        \
        for (int64_t j = 0; j < B; ++j) acc[j] = bias ? bias[c0 + j] : T(0);                \
        for (int64_t t = 0; t < taps; ++t) {                                                \
          if (!src[t]) continue;                                                            \
          const T* s = src[t] + c0;                                                         \
          const T* wt = w + t * C + c0;                                                     \
          for (int64_t j = 0; j < B; ++j) acc[j] += s[j] * wt[j];                           \
        }                                                                                   \
      } else {                                                                              \
        for (int64_t j = 0; j < nc; ++j) acc[j] = bias ? bias[c0 + j] : T(0);               \
        for (int64_t t = 0; t < taps; ++t) {                                                \
          if (!src[t]) continue;                                                            \
          for (int64_t j = 0; j < nc; ++j) acc[j] += src[t][c0 + j] * w[t * C + c0 + j];    \
        }                                                                                   \
      }                                                                                     \
      if (dst_cstride == 1) {                                                               \
        for (int64_t j = 0; j < nc; ++j) dst[c0 + j] = acc[j];                              \
      } else {                                                                              \
        for (int64_t j = 0; j < nc; ++j) dst[(c0 + j) * dst_cstride] = acc[j];              \
      }                                                                                     \
    }                                                                                       \
  }
DL_LIB_DEFINE_DW_PIXEL(float)
DL_LIB_DEFINE_DW_PIXEL(double)
#undef DL_LIB_DEFINE_DW_PIXEL

// Depthwise: each thread walks its range of output positions, computing the active pixels
// (vectorised over channels, NHWC input) and zeroing the rest, so the output is written once.
// zero_rest == false (masked_conv2d_out): the inactive positions keep what `out` held.
template <typename scalar_t>
void forward_depthwise(const at::Tensor& x, const at::Tensor& wdw, const scalar_t* bias,
                       const Geometry& g, const std::vector<int64_t>& pos, at::Tensor& out,
                       bool zero_rest) {
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = wdw.const_data_ptr<scalar_t>();  // [taps, C]
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const OutStrides os = out_strides(out);
  const int64_t hw = g.Ho * g.Wo;
  const int64_t C = g.C, taps = g.taps();
  const std::vector<WorkRange> units =
      work_units(pos, g.N * hw, zero_rest ? C : 0, C + taps * C / 2);
  // Offsets of the taps from the receptive field's top-left input pixel, and its extent.
  std::vector<int64_t> tap_offset(static_cast<size_t>(taps));
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      tap_offset[ky * g.kw + kx] = (ky * g.dh * g.W + kx * g.dw) * C;
    }
  }
  const int64_t extent_h = (g.kh - 1) * g.dh, extent_w = (g.kw - 1) * g.dw;
  // Tap pointers of active pixel i into src[0..taps) (`padding` for taps in the padding);
  // returns its output pointer. Receptive fields inside the image (all pixels but a border as
  // wide as the convolution's padding) skip the per-tap bounds checks: with 128 channels these
  // pointers cost a third as much as the FMAs.
  const auto taps_of = [&](int64_t i, const scalar_t** src, const scalar_t* padding) {
    const int64_t idx = pos[i];
    const int64_t n = idx / hw, rem = idx % hw;
    const int64_t oy = rem / g.Wo, ox = rem % g.Wo;
    const int64_t iy0 = oy * g.sh - g.ph, ix0 = ox * g.sw - g.pw;
    const scalar_t* img = xp + n * g.H * g.W * C;
    if (iy0 >= 0 && ix0 >= 0 && iy0 + extent_h < g.H && ix0 + extent_w < g.W) {
      const scalar_t* corner = img + (iy0 * g.W + ix0) * C;
      for (int64_t t = 0; t < taps; ++t) src[t] = corner + tap_offset[t];
      return op + n * os.n + oy * os.y + ox * os.x;
    }
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = iy0 + ky * g.dh;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t ix = ix0 + kx * g.dw;
        const bool inside = iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
        src[ky * g.kw + kx] = inside ? img + (iy * g.W + ix) * C : padding;
      }
    }
    return op + n * os.n + oy * os.y + ox * os.x;
  };
  // Each thread's tap and output pointers for `pixels` pixels at a time.
  struct TapPointers {
    std::vector<const scalar_t*> src;
    std::vector<scalar_t*> dst;
  };
  const auto tap_pointers = [&](int64_t pixels) {
    return [=] {
      return TapPointers{std::vector<const scalar_t*>(static_cast<size_t>(pixels * taps)),
                         std::vector<scalar_t*>(static_cast<size_t>(pixels))};
    };
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cpu::implicit_gemm_available()) {
      // Chunks of kChunk pixels through cpu::depthwise_pixels (channel block outer, see there).
      // A chunk's tap lines for one 32-channel block are at most 32 x 9 x 128 B = 36 KiB for 3x3,
      // fewer where neighbours share taps: about one L1. (16 to 256 pixels per chunk measured
      // the same when timed right after a dense layer.)
      constexpr int64_t kChunk = 32;
      const bool stream = out.nbytes() >= static_cast<size_t>(cpu::kStreamOutputBytes);
      const std::vector<float> zeros(static_cast<size_t>(C), 0.f);
      run_units(static_cast<int64_t>(units.size()), tap_pointers(kChunk),
                [&](TapPointers& ch, int64_t u) {
        const WorkRange& wr = units[u];
        if (zero_rest) zero_inactive(op, os, g, pos, wr);
        for (int64_t i0 = wr.a0; i0 < wr.a1; i0 += kChunk) {
          const int64_t count = std::min(kChunk, wr.a1 - i0);
          for (int64_t k = 0; k < count; ++k) {
            ch.dst[k] = taps_of(i0 + k, ch.src.data() + k * taps, zeros.data());
          }
          cpu::depthwise_pixels(ch.dst.data(), os.c, ch.src.data(), count, taps, wp, bias, C,
                                stream);
        }
      });
      return;
    }
  }
  // Portable path (double, or no AVX2+FMA): pixel by pixel. The work per pixel is tiny, so it
  // waits on memory: the taps of scattered pixels are short runs the hardware prefetchers miss.
  // Prefetch the taps of the pixel kAhead positions on; the tap pointers of each pixel are
  // computed once, when it is prefetched, into a ring of kAhead + 1 slots.
  constexpr int64_t kAhead = 4;
  constexpr int64_t kSlots = kAhead + 1;
  const int64_t line_elems = 64 / static_cast<int64_t>(sizeof(scalar_t));
  run_units(static_cast<int64_t>(units.size()), tap_pointers(kSlots),
            [&](TapPointers& ring, int64_t u) {
    const WorkRange& wr = units[u];
    if (zero_rest) zero_inactive(op, os, g, pos, wr);
    const auto fill = [&](int64_t i, bool prefetch) {
      const int64_t slot = (i - wr.a0) % kSlots;
      const scalar_t** src = ring.src.data() + slot * taps;
      ring.dst[slot] = taps_of(i, src, nullptr);
      if (!prefetch) return;
      for (int64_t t = 0; t < taps; ++t) {
        if (src[t] == nullptr) continue;
        for (int64_t c = 0; c < C; c += line_elems) __builtin_prefetch(src[t] + c);
      }
    };
    for (int64_t i = wr.a0; i < std::min(wr.a1, wr.a0 + kAhead); ++i) fill(i, false);
    for (int64_t i = wr.a0; i < wr.a1; ++i) {
      if (i + kAhead < wr.a1) fill(i + kAhead, true);
      const int64_t slot = (i - wr.a0) % kSlots;
      dw_pixel(ring.dst[slot], os.c, ring.src.data() + slot * taps, wp, bias, taps, C);
    }
  });
}

// Bias checked and made contiguous (undefined without one).
at::Tensor checked_bias(const char* fn, const std::optional<at::Tensor>& bias, const Geometry& g,
                        const at::Tensor& input) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.O && bias->scalar_type() ==
                  input.scalar_type(),
              fn, ": bias must be a 1-D tensor of ", g.O, " ", input.scalar_type(),
              " values, got shape ", bias->sizes(), " and dtype ", bias->scalar_type());
  return bias->contiguous();
}

// Computes the active positions of `mask` into `out`; zero_rest: also zero every other position
// (the masked_conv2d semantics), else leave them as they are (masked_conv2d_out).
void forward_into(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& b,
                  const at::Tensor& mask, const Geometry& g, at::Tensor& out, bool zero_rest) {
  const std::vector<int64_t> pos = active_positions(mask);
  if (pos.empty() || out.numel() == 0) {
    if (zero_rest) out.zero_();
    return;
  }
  // The kernels read NHWC. A contiguous (NCHW) input costs one transposing copy here, about as
  // long as the sparse compute at d = 0.1: channels_last inputs are the fast path.
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  if (!g.depthwise() && input.scalar_type() == at::kFloat && cpu::implicit_gemm_available()) {
    forward_implicit_gemm(x, weight, b.defined() ? b.const_data_ptr<float>() : nullptr, g, pos,
                          out, zero_rest);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "masked_conv2d_forward_cpu", [&] {
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    if (g.depthwise()) {
      const at::Tensor wdw = weight.reshape({g.C, g.taps()}).t().contiguous();
      forward_depthwise<scalar_t>(x, wdw, bp, g, pos, out, zero_rest);
    } else {
      if (zero_rest) out.zero_();
      forward_general<scalar_t>(x, pack_weight(weight, g), bp, g, pos, out);
    }
  });
}

at::Tensor masked_conv2d_forward_cpu_impl(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  const char* fn = "masked_conv2d (CPU)";
  const Geometry g = check_and_describe(fn, input, weight, bias, mask, stride_h, stride_w, pad_h,
                                        pad_w, dilation_h, dilation_w, groups);
  const at::Tensor b = checked_bias(fn, bias, g, input);
  // The output takes the input's memory format: NHWC output makes the scatter contiguous.
  const auto fmt = input.suggest_memory_format();
  // Allocated uninitialised: the depthwise and implicit-GEMM kernels write every position once
  // (computed or zero); the other paths zero it first. Large outputs reuse the storage of freed
  // ones instead of faulting in fresh pages (output_pool.h).
  at::Tensor out = cpu::pooled_empty({g.N, g.O, g.Ho, g.Wo}, input.options(), fmt);
  forward_into(input, weight, b, mask, g, out, /*zero_rest=*/true);
  return out;
}

void masked_conv2d_out_cpu_impl(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, at::Tensor& out) {
  const char* fn = "masked_conv2d_out (CPU)";
  const Geometry g = check_and_describe(fn, input, weight, bias, mask, stride_h, stride_w, pad_h,
                                        pad_w, dilation_h, dilation_w, groups);
  const at::Tensor b = checked_bias(fn, bias, g, input);
  check_like_input(fn, "out", out, input, /*same_dtype=*/true);
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == input.scalar_type(), fn,
              ": out must be a CPU ", input.scalar_type(), " tensor like input, got ",
              out.scalar_type(), " on ", out.device());
  TORCH_CHECK(out.dim() == 4 && out.size(0) == g.N && out.size(1) == g.O && out.size(2) == g.Ho &&
                  out.size(3) == g.Wo,
              fn, ": out must have the convolution's output shape (", g.N, ", ", g.O, ", ", g.Ho,
              ", ", g.Wo, "), got ", out.sizes());
  // Every output element is written by one thread, and input is read while out is written.
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, input);
  forward_into(input, weight, b, mask, g, out, /*zero_rest=*/false);
}

// ---------------------------------------------------------------------------------------------
// Backward

// A contiguous run of the active list and the band of input rows (global index n*H + y) its taps
// can touch.
struct Part {
  int64_t begin, end;    // into the active list
  int64_t row_lo, rows;  // band of global input rows; rows == 0 when empty
};

std::vector<Part> split_parts(const std::vector<int64_t>& pos, const Geometry& g,
                              int64_t min_per_part) {
  const int64_t M = static_cast<int64_t>(pos.size());
  const int64_t P = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (M + min_per_part - 1) / min_per_part));
  const int64_t hw = g.Ho * g.Wo;
  std::vector<Part> parts;
  for (int64_t p = 0; p < P; ++p) {
    Part part;
    part.begin = M * p / P;
    part.end = M * (p + 1) / P;
    if (part.begin >= part.end) continue;
    const int64_t first = pos[part.begin], last = pos[part.end - 1];
    const int64_t n0 = first / hw, y0 = (first % hw) / g.Wo;
    const int64_t n1 = last / hw, y1 = (last % hw) / g.Wo;
    const int64_t lo = n0 * g.H + std::max<int64_t>(0, y0 * g.sh - g.ph);
    const int64_t hi = n1 * g.H + std::min<int64_t>(g.H - 1, y1 * g.sh - g.ph + (g.kh - 1) * g.dh);
    part.row_lo = lo;
    part.rows = std::max<int64_t>(0, hi - lo + 1);
    parts.push_back(part);
  }
  return parts;
}

// Sum the per-part bands into the dense NHWC grad_input (rows are independent: parallel, and the
// parts are added in a fixed order, so the result is deterministic).
template <typename scalar_t>
void reduce_bands(const std::vector<Part>& parts, const std::vector<at::Tensor>& bands,
                  const Geometry& g, at::Tensor& grad_in) {
  scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t row_elems = g.W * g.C;
  cpu::parallel_for(0, g.N * g.H, 16, [&](int64_t begin, int64_t end) {
    for (size_t p = 0; p < parts.size(); ++p) {
      const int64_t lo = std::max(begin, parts[p].row_lo);
      const int64_t hi = std::min(end, parts[p].row_lo + parts[p].rows);
      if (lo >= hi) continue;
      const scalar_t* src = bands[p].const_data_ptr<scalar_t>() + (lo - parts[p].row_lo) * row_elems;
      scalar_t* dst = gi + lo * row_elems;
      row_add(dst, src, (hi - lo) * row_elems);
    }
  });
}

template <typename scalar_t>
void backward_general(const at::Tensor& x, const at::Tensor& gy, const at::Tensor& wpack,
                      const Geometry& g, const std::vector<int64_t>& pos, bool need_in,
                      bool need_w, at::Tensor& grad_in, at::Tensor& grad_wpack) {
  const int64_t rows = chunk_rows(g, sizeof(scalar_t));
  const std::vector<Part> parts = split_parts(pos, g, rows);
  const int64_t P = static_cast<int64_t>(parts.size());
  std::vector<at::Tensor> bands(P), wacc(P);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = gy.const_data_ptr<scalar_t>();
  const int64_t hw = g.Ho * g.Wo;
  const int64_t len = g.row_len();
  // at::parallel_for on purpose: the parts call MKL (addmm_/mm_out), and MKL inside a real
  // parallel region nests OpenMP teams (see the top of the file). Without -fopenmp this region
  // runs the parts one after another and each GEMM uses MKL's own threads.
  at::parallel_for(0, P, 1, [&](int64_t pbegin, int64_t pend) {
    at::Tensor cols = at::empty({rows, len}, x.options());
    at::Tensor grows = at::empty({rows, g.Og}, x.options());
    for (int64_t p = pbegin; p < pend; ++p) {
      const Part& part = parts[p];
      scalar_t* band = nullptr;
      if (need_in) {
        bands[p] = at::zeros({part.rows, g.W, g.C}, x.options());
        band = bands[p].mutable_data_ptr<scalar_t>();
      }
      if (need_w) wacc[p] = at::zeros({g.G, len, g.Og}, x.options());
      for (int64_t r0 = part.begin; r0 < part.end; r0 += rows) {
        const int64_t nr = std::min(rows, part.end - r0);
        at::Tensor cols_v = cols.narrow(0, 0, nr);
        at::Tensor grows_v = grows.narrow(0, 0, nr);
        for (int64_t grp = 0; grp < g.G; ++grp) {
          scalar_t* gr = grows.mutable_data_ptr<scalar_t>();
          for (int64_t r = 0; r < nr; ++r) {
            std::memcpy(gr + r * g.Og, gp + pos[r0 + r] * g.O + grp * g.Og,
                        sizeof(scalar_t) * g.Og);
          }
          if (need_w) {
            gather_rows<scalar_t>(xp, g, pos.data() + r0, nr, grp, cols.mutable_data_ptr<scalar_t>());
            at::Tensor acc = wacc[p][grp];
            acc.addmm_(cols_v.t(), grows_v);
          }
          if (need_in) {
            at::mm_out(cols_v, grows_v, wpack[grp].t());  // d(cols) = grad_rows @ W^T
            const scalar_t* dc = cols.const_data_ptr<scalar_t>();
            for (int64_t r = 0; r < nr; ++r) {
              const int64_t idx = pos[r0 + r];
              const int64_t n = idx / hw, rem = idx % hw;
              const int64_t iy0 = (rem / g.Wo) * g.sh - g.ph, ix0 = (rem % g.Wo) * g.sw - g.pw;
              const scalar_t* src = dc + r * len;
              for (int64_t ky = 0; ky < g.kh; ++ky) {
                const int64_t iy = iy0 + ky * g.dh;
                if (iy < 0 || iy >= g.H) {
                  src += g.kw * g.Cg;
                  continue;
                }
                scalar_t* brow = band + ((n * g.H + iy - part.row_lo) * g.W) * g.C + grp * g.Cg;
                for (int64_t kx = 0; kx < g.kw; ++kx, src += g.Cg) {
                  const int64_t ix = ix0 + kx * g.dw;
                  if (ix < 0 || ix >= g.W) continue;
                  row_add(brow + ix * g.C, src, g.Cg);
                }
              }
            }
          }
        }
      }
    }
  });
  if (need_w) {
    grad_wpack = wacc[0];
    for (int64_t p = 1; p < P; ++p) grad_wpack.add_(wacc[p]);
  }
  if (need_in) reduce_bands<scalar_t>(parts, bands, g, grad_in);
}

template <typename scalar_t>
void backward_depthwise(const at::Tensor& x, const at::Tensor& gy, const at::Tensor& wdw,
                        const Geometry& g, const std::vector<int64_t>& pos, bool need_in,
                        bool need_w, at::Tensor& grad_in, at::Tensor& grad_wdw) {
  const std::vector<Part> parts = split_parts(pos, g, 256);
  const int64_t P = static_cast<int64_t>(parts.size());
  std::vector<at::Tensor> bands(P), wacc(P);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = gy.const_data_ptr<scalar_t>();
  const scalar_t* wp = wdw.const_data_ptr<scalar_t>();
  const int64_t hw = g.Ho * g.Wo;
  const int64_t C = g.C;
  // cpu::parallel_for: really parallel in this build (see parallel.h); no BLAS call inside.
  cpu::parallel_for(0, P, 1, [&](int64_t pbegin, int64_t pend) {
    for (int64_t p = pbegin; p < pend; ++p) {
      const Part& part = parts[p];
      scalar_t* band = nullptr;
      scalar_t* wa = nullptr;
      if (need_in) {
        bands[p] = at::zeros({part.rows, g.W, C}, x.options());
        band = bands[p].mutable_data_ptr<scalar_t>();
      }
      if (need_w) {
        wacc[p] = at::zeros({g.taps(), C}, x.options());
        wa = wacc[p].mutable_data_ptr<scalar_t>();
      }
      for (int64_t i = part.begin; i < part.end; ++i) {
        const int64_t idx = pos[i];
        const int64_t n = idx / hw, rem = idx % hw;
        const int64_t iy0 = (rem / g.Wo) * g.sh - g.ph, ix0 = (rem % g.Wo) * g.sw - g.pw;
        const scalar_t* __restrict__ gr = gp + idx * C;
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t iy = iy0 + ky * g.dh;
          if (iy < 0 || iy >= g.H) continue;
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const int64_t ix = ix0 + kx * g.dw;
            if (ix < 0 || ix >= g.W) continue;
            const int64_t t = ky * g.kw + kx;
            if (need_w) {
              row_fma(wa + t * C, xp + ((n * g.H + iy) * g.W + ix) * C, gr, C);
            }
            if (need_in) {
              row_fma(band + ((n * g.H + iy - part.row_lo) * g.W + ix) * C, wp + t * C, gr, C);
            }
          }
        }
      }
    }
  });
  if (need_w) {
    grad_wdw = wacc[0];
    for (int64_t p = 1; p < P; ++p) grad_wdw.add_(wacc[p]);
  }
  if (need_in) reduce_bands<scalar_t>(parts, bands, g, grad_in);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu_impl(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask) {
  const Geometry g = check_and_describe("_masked_conv2d_backward (CPU)", input, weight,
                                        /*bias=*/std::nullopt, mask,
                                        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                                        groups);
  // Any float dtype: converted to the input's below.
  check_like_input("_masked_conv2d_backward (CPU)", "grad_output", grad_output, input,
                   /*same_dtype=*/false);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.O &&
                  grad_output.size(2) == g.Ho && grad_output.size(3) == g.Wo,
              "_masked_conv2d_backward (CPU): grad_output must have shape (", g.N, ", ", g.O, ", ",
              g.Ho, ", ", g.Wo, "), got ", grad_output.sizes());
  const bool need_in = output_mask[0], need_w = output_mask[1], need_b = output_mask[2];
  const std::vector<int64_t> pos = active_positions(mask);
  // NHWC grad rows: the active pixel's Og values of a group are contiguous.
  const at::Tensor gy = grad_output.to(input.scalar_type())
                            .contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_in, grad_w, grad_b;
  if (need_b) {
    grad_b = at::zeros({g.O}, weight.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "masked_conv2d_backward_bias_cpu", [&] {
      scalar_t* gb = grad_b.mutable_data_ptr<scalar_t>();
      const scalar_t* gp = gy.const_data_ptr<scalar_t>();
      for (const int64_t idx : pos) {
        row_add(gb, gp + idx * g.O, g.O);
      }
    });
  }
  if (!need_in && !need_w) return {grad_in, grad_w, grad_b};
  // grad_input accumulates in NHWC (the band layout) and is returned as a view in NCHW order,
  // i.e. channels_last memory; converted to contiguous when the input was NCHW.
  at::Tensor gin_nhwc;
  if (need_in) gin_nhwc = at::zeros({g.N, g.H, g.W, g.C}, input.options());
  if (pos.empty()) {
    if (need_w) grad_w = at::zeros_like(weight, at::MemoryFormat::Contiguous);
  } else {
    const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "masked_conv2d_backward_cpu", [&] {
      if (g.depthwise()) {
        const at::Tensor wdw = weight.reshape({g.C, g.taps()}).t().contiguous();
        at::Tensor gw;
        backward_depthwise<scalar_t>(x, gy, wdw, g, pos, need_in, need_w, gin_nhwc, gw);
        if (need_w) grad_w = gw.t().reshape({g.O, 1, g.kh, g.kw}).contiguous();
      } else {
        at::Tensor gwp;
        backward_general<scalar_t>(x, gy, pack_weight(weight, g), g, pos, need_in, need_w,
                                   gin_nhwc, gwp);
        if (need_w) grad_w = unpack_weight_grad(gwp, g);
      }
    });
  }
  if (need_in) {
    grad_in = gin_nhwc.permute({0, 3, 1, 2});
    if (input.suggest_memory_format() != at::MemoryFormat::ChannelsLast) {
      grad_in = grad_in.contiguous();
    }
  }
  return {grad_in, grad_w, grad_b};
}

}  // namespace

at::Tensor masked_conv2d_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  return masked_conv2d_forward_cpu_impl(input, weight, bias, mask, stride_h, stride_w, pad_h,
                                        pad_w, dilation_h, dilation_w, groups);
}

void masked_conv2d_out_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, at::Tensor& out) {
  masked_conv2d_out_cpu_impl(input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w,
                             dilation_h, dilation_w, groups, out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask) {
  return masked_conv2d_backward_cpu_impl(grad_output, input, weight, mask, stride_h, stride_w,
                                         pad_h, pad_w, dilation_h, dilation_w, groups,
                                         output_mask);
}

// torch.ops.dl_lib.masked_conv_cpu_kernel(): which float32 CPU kernels run, "avx512", "avx2" or
// "portable" (see cpu::kernel_isa(); the policy keys its break-even tables by it).
std::string masked_conv_cpu_kernel() { return cpu::kernel_isa_name(cpu::kernel_isa()); }

TORCH_LIBRARY_FRAGMENT(dl_lib, m) {
  m.def("masked_conv_cpu_kernel() -> str", &masked_conv_cpu_kernel);
}

TORCH_LIBRARY_IMPL(dl_lib, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_forward_cpu);
  m.impl("masked_conv2d_out", &masked_conv2d_out_cpu);
  m.impl("_masked_conv2d_backward", &masked_conv2d_backward_cpu);
}

}  // namespace ops
}  // namespace dl_lib
