// CPU emulation of the CUDA kernels of masked_conv_kernel.cu, to check them on machines without
// a GPU. NOT part of the extension (setup.py builds only the .cu files of this folder); built and
// run by tests/test_cuda_compile_check.py:
//   1. the test copies the device-code section of masked_conv_kernel.cu (from "Geometry shared by
//      every kernel" to "Host side. Everything above") into kernels.inc;
//   2. g++ -std=c++20 -pthread -I<that folder> emulate_kernels.cpp; ./a.out  (exit 0 = all OK).
// Emulation: one std::thread per CUDA thread, std::barrier for __syncthreads, blocks run one after
// another (so a function-local `static` array is the block's shared memory), atomicAdd through
// std::atomic_ref. The host orchestration (active list, weight packing, launch grids) is mirrored
// here; results in double are compared with a direct convolution at 1e-9.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <thread>
#include <vector>

struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
std::barrier<>* g_bar = nullptr;
inline void __syncthreads() { g_bar->arrive_and_wait(); }
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(x)
#define __shared__ static
template <class T> T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }

namespace emu {
#include "kernels.inc"
}
using namespace emu;

void launch(dim3 grid, dim3 block, const std::function<void()>& f) {
  const int nt = block.x * block.y * block.z;
  blockDim = block; gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z) for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) {
    std::barrier<> bar(nt); g_bar = &bar;
    std::vector<std::thread> ts;
    for (int t = 0; t < nt; ++t) ts.emplace_back([&, t] {
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      blockIdx = dim3(x, y, z);
      f();
    });
    for (auto& th : ts) th.join();
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Problem in NHWC storage for x (strides) and NCHW for out / grad_out, to test strided access.
struct Problem { Geom g; std::vector<double> x, w, b, go; std::vector<char> mask; };

double X(const Problem& P, int n, int c, int y, int x) { const auto& g = P.g; return P.x[((n * g.H + y) * g.W + x) * g.C + c]; }

int main() {
  std::mt19937 rng(0); std::uniform_real_distribution<double> U(-1, 1);
  struct Cfg { int N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, groups; double p_active; };
  std::vector<Cfg> cfgs = {
    {2, 5, 7, 9, 70, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0.5},   // Og > 64 (two o tiles), K = 3 k slices
    {1, 6, 8, 7, 4, 3, 2, 2, 1, 0, 2, 2, 1, 2, 0.5},    // grouped; asymmetric stride/pad/dilation
    {2, 4, 6, 6, 8, 3, 3, 1, 1, 1, 1, 1, 1, 4, 0.5},    // depthwise, channel multiplier 2
    {1, 3, 5, 11, 3, 1, 1, 2, 2, 0, 0, 1, 1, 3, 0.5},   // depthwise 1x1, stride 2
    {1, 40, 9, 10, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0.5},  // 1x1, K = 40 (partial k slice)
    {1, 8, 9, 9, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1.0},   // full mask (count = capacity)
    {1, 8, 9, 9, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0.0},   // empty mask (every block exits)
    {1, 4, 9, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 0.0},    // empty mask, depthwise
  };
  int fails = 0;
  for (const auto& c : cfgs) {
    Problem P; Geom& g = P.g;
    g.N = c.N; g.C = c.C; g.H = c.H; g.W = c.W; g.O = c.O; g.kh = c.kh; g.kw = c.kw; g.sh = c.sh; g.sw = c.sw;
    g.ph = c.ph; g.pw = c.pw; g.dh = c.dh; g.dw = c.dw; g.groups = c.groups; g.Cg = c.C / c.groups; g.Og = c.O / c.groups;
    g.K = g.Cg * g.kh * g.kw;
    g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1; g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
    const int64_t P_ = g.N * g.Ho * g.Wo;
    P.x.resize(g.N * g.C * g.H * g.W); for (auto& v : P.x) v = U(rng);
    P.w.resize(g.O * g.Cg * g.kh * g.kw); for (auto& v : P.w) v = U(rng);
    P.b.resize(g.O); for (auto& v : P.b) v = U(rng);
    P.go.resize(g.N * g.O * g.Ho * g.Wo); for (auto& v : P.go) v = U(rng);
    P.mask.resize(P_); for (auto& m : P.mask) m = (U(rng) + 1.0) / 2.0 < c.p_active;
    Strides4 xs{g.H * g.W * g.C, 1, g.W * g.C, g.C};                // channels_last x
    Strides4 os{g.O * g.Ho * g.Wo, g.Ho * g.Wo, g.Wo, 1};            // NCHW out / grad_out
    // active list via the real compact kernel
    std::vector<int> scan(P_); int acc = 0; for (int64_t i = 0; i < P_; ++i) { acc += P.mask[i]; scan[i] = acc; }
    std::vector<int> idx(P_, -7); int count = -1;
    bool* maskb = new bool[P_]; for (int64_t i = 0; i < P_; ++i) maskb[i] = P.mask[i];
    launch(dim3(cdiv(P_, kThreads)), dim3(kThreads), [&] { compact_active_kernel(maskb, scan.data(), P_, idx.data(), &count); });
    // packed weight [g][ky][kx][ci][o]
    std::vector<double> wp(P.w.size());
    for (int gr = 0; gr < g.groups; ++gr) for (int o = 0; o < g.Og; ++o) for (int ci = 0; ci < g.Cg; ++ci)
      for (int ky = 0; ky < g.kh; ++ky) for (int kx = 0; kx < g.kw; ++kx)
        wp[(((gr * g.kh + ky) * g.kw + kx) * g.Cg + ci) * g.Og + o] = P.w[(((gr * g.Og + o) * g.Cg + ci) * g.kh + ky) * g.kw + kx];
    std::vector<double> out(g.N * g.O * g.Ho * g.Wo, 0.0);
    const bool dw = g.Cg == 1;
    if (dw) launch(dim3(cdiv(P_ * g.O, kThreads)), dim3(kThreads), [&] {
      masked_dwconv_fwd_kernel<double, double>(P.x.data(), xs, P.w.data(), P.b.data(), idx.data(), &count, out.data(), os, g); });
    else launch(dim3(cdiv(P_, kFwdP), cdiv(g.Og, kFwdO), g.groups), dim3(kThreads), [&] {
      masked_conv_fwd_gemm_kernel<double, double>(P.x.data(), xs, wp.data(), P.b.data(), idx.data(), &count, out.data(), os, g); });
    // backward
    std::vector<double> gin(g.N * g.H * g.W * g.C, 0.0), gw(P.w.size(), 0.0), gb(g.O, 0.0);
    int64_t chunk = 16;  // small chunks: exercise several split-K blocks
    launch(dim3(cdiv(P_, chunk), cdiv(g.O, kRedC), 1), dim3(kRedC, kRedRows), [&] {
      masked_channel_reduce_kernel<double, double>(P.go.data(), os, P.x.data(), xs, false, idx.data(), &count, gb.data(), g, chunk); });
    if (dw) {
      launch(dim3(cdiv(P_ * g.O, kThreads)), dim3(kThreads), [&] {
        masked_dwconv_bwd_input_kernel<double, double>(P.go.data(), os, P.w.data(), idx.data(), &count, gin.data(), g); });
      launch(dim3(cdiv(P_, chunk), cdiv(g.O, kRedC), g.kh * g.kw), dim3(kRedC, kRedRows), [&] {
        masked_channel_reduce_kernel<double, double>(P.go.data(), os, P.x.data(), xs, true, idx.data(), &count, gw.data(), g, chunk); });
    } else {
      launch(dim3(cdiv(P_, kGiP), cdiv(g.K, kGiK), g.groups), dim3(kThreads), [&] {
        masked_conv_bwd_input_gemm_kernel<double, double>(P.go.data(), os, wp.data(), idx.data(), &count, gin.data(), g); });
      std::vector<double> gwp(P.w.size(), 0.0);
      launch(dim3(cdiv(g.K, kGwK), g.groups * cdiv(g.Og, kGwO), cdiv(P_, chunk)), dim3(kThreads), [&] {
        masked_conv_bwd_weight_gemm_kernel<double, double>(P.go.data(), os, P.x.data(), xs, idx.data(), &count, gwp.data(), g, chunk); });
      for (int gr = 0; gr < g.groups; ++gr) for (int o = 0; o < g.Og; ++o) for (int ci = 0; ci < g.Cg; ++ci)
        for (int ky = 0; ky < g.kh; ++ky) for (int kx = 0; kx < g.kw; ++kx)
          gw[(((gr * g.Og + o) * g.Cg + ci) * g.kh + ky) * g.kw + kx] = gwp[(((gr * g.kh + ky) * g.kw + kx) * g.Cg + ci) * g.Og + o];
    }
    // reference
    double e_out = 0, e_gin = 0, e_gw = 0, e_gb = 0;
    std::vector<double> rgin(gin.size(), 0.0), rgw(gw.size(), 0.0), rgb(g.O, 0.0);
    for (int n = 0; n < g.N; ++n) for (int o = 0; o < g.O; ++o) for (int oy = 0; oy < g.Ho; ++oy) for (int ox = 0; ox < g.Wo; ++ox) {
      const int64_t pos = (n * g.Ho + oy) * g.Wo + ox; const bool m = P.mask[pos];
      const int gr = o / g.Og; double s = P.b[o];
      const double gov = P.go[((n * g.O + o) * g.Ho + oy) * g.Wo + ox];
      if (m) rgb[o] += gov;
      for (int ci = 0; ci < g.Cg; ++ci) for (int ky = 0; ky < g.kh; ++ky) for (int kx = 0; kx < g.kw; ++kx) {
        int iy = oy * g.sh - g.ph + ky * g.dh, ix = ox * g.sw - g.pw + kx * g.dw;
        if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) continue;
        const int c_in = gr * g.Cg + ci; const int64_t wi = ((o * g.Cg + ci) * g.kh + ky) * g.kw + kx;
        s += X(P, n, c_in, iy, ix) * P.w[wi];
        if (m) { rgin[((n * g.H + iy) * g.W + ix) * g.C + c_in] += gov * P.w[wi]; rgw[wi] += gov * X(P, n, c_in, iy, ix); }
      }
      const double expect = m ? s : 0.0;
      e_out = std::max(e_out, std::fabs(expect - out[((n * g.O + o) * g.Ho + oy) * g.Wo + ox]));
    }
    for (size_t i = 0; i < gin.size(); ++i) e_gin = std::max(e_gin, std::fabs(gin[i] - rgin[i]));
    for (size_t i = 0; i < gw.size(); ++i) e_gw = std::max(e_gw, std::fabs(gw[i] - rgw[i]));
    for (int i = 0; i < g.O; ++i) e_gb = std::max(e_gb, std::fabs(gb[i] - rgb[i]));
    const bool ok = e_out < 1e-9 && e_gin < 1e-9 && e_gw < 1e-9 && e_gb < 1e-9 && count == scan.back();
    fails += !ok;
    std::printf("N%d C%d %dx%d O%d k%dx%d s%d,%d p%d,%d d%d,%d g%d active %d/%ld: out %.1e gin %.1e gw %.1e gb %.1e %s\n",
                c.N, c.C, c.H, c.W, c.O, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.groups, count, (long)P_,
                e_out, e_gin, e_gw, e_gb, ok ? "OK" : "FAIL");
    delete[] maskb;
  }
  return fails ? 1 : 0;
}
