// One parallel region of ATen's intra-op OpenMP team for the CPU kernels, whatever flags this
// extension is compiled with.
//
// at::parallel_for is a header template: with PyTorch's OpenMP backend it expands to
// `#pragma omp parallel` in the *including* file, and without -fopenmp (setup.py compiles the
// extension with plain -O3) that pragma is ignored and the loop runs serially on the calling
// thread. That made every forward of the masked convolution single-threaded (2-thread wall time
// = 1-thread wall time, while oneDNN's dense conv used both cores). When the file is compiled
// without OpenMP we therefore enter the region through libgomp's entry point GOMP_parallel,
// which is exactly what GCC emits for `#pragma omp parallel`; libgomp is the runtime libtorch_cpu
// itself loads, so the team is the same one ATen and oneDNN use (same threads, same
// torch.set_num_threads setting). The symbols are weak: if no libgomp is loaded the work runs
// inline.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>

#include <atomic>
#include <cstdint>
#include <exception>

#if !defined(_OPENMP) && AT_PARALLEL_OPENMP && defined(__GNUC__) && defined(__linux__)
#define DL_LIB_GOMP_DIRECT 1
extern "C" {
void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags)
    __attribute__((weak));
int omp_get_thread_num() __attribute__((weak));
int omp_get_num_threads() __attribute__((weak));
}
#else
#define DL_LIB_GOMP_DIRECT 0
#endif

namespace dl_lib {
namespace ops {
namespace cpu {

// Calls f(tid, nthreads) once on each thread of the intra-op team (tid in [0, nthreads)), or
// f(0, 1) inline when there is one thread or we are already inside a parallel region. Callers
// must not depend on the team size for correctness (take work from a shared counter), since the
// runtime may give fewer threads than at::get_num_threads(). Exceptions thrown by f are
// rethrown on the calling thread (the first one wins).
template <typename F>
void parallel_team(const F& f) {
  // As at::parallel_for: a thread's first parallel region applies torch.set_num_threads to the
  // OpenMP runtime's per-thread setting (threads other than the one that called it included).
  at::internal::lazy_init_num_threads();
  if (at::get_num_threads() <= 1 || at::in_parallel_region()) {
    c10::ParallelGuard guard(true);
    f(0, 1);
    return;
  }
#if DL_LIB_GOMP_DIRECT
  if (GOMP_parallel != nullptr && omp_get_thread_num != nullptr &&
      omp_get_num_threads != nullptr) {
    struct Ctx {
      const F* f;
      std::atomic_flag failed = ATOMIC_FLAG_INIT;
      std::exception_ptr error;
    } ctx;
    ctx.f = &f;
    // num_threads = 0: the team size set by torch.set_num_threads (as at::parallel_for, which
    // avoids a num_threads clause because of libgomp thread-pool bugs, pytorch#32008).
    GOMP_parallel(
        [](void* p) {
          Ctx* c = static_cast<Ctx*>(p);
          c10::ParallelGuard guard(true);  // ATen calls inside the region run inline
          at::internal::ThreadIdGuard tid_guard(omp_get_thread_num());  // at::get_thread_num()
          try {
            (*c->f)(omp_get_thread_num(), omp_get_num_threads());
          } catch (...) {
            if (!c->failed.test_and_set()) c->error = std::current_exception();
          }
        },
        &ctx, 0, 0);
    if (ctx.error) std::rethrow_exception(ctx.error);
    return;
  }
  c10::ParallelGuard guard(true);
  f(0, 1);
#else
  // Compiled with OpenMP, or a non-OpenMP ATen backend: at::parallel_for works as documented.
  const int64_t n = at::get_num_threads();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) f(t, n);
  });
#endif
}

// at::parallel_for replacement on parallel_team: f(b, e) for consecutive pieces [b, e) of
// [begin, end), `grain` indices each (the last may be shorter), taken dynamically by the team.
// Runs inline when the range is one piece.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  grain = grain < 1 ? 1 : grain;
  if (end - begin <= grain) {
    c10::ParallelGuard guard(true);
    f(begin, end);
    return;
  }
  std::atomic<int64_t> next{begin};
  parallel_team([&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(grain); b < end; b = next.fetch_add(grain)) {
      f(b, b + grain < end ? b + grain : end);
    }
  });
}

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
