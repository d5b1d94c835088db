// See output_pool.h.
#include "masked_conv/cpu/output_pool.h"

#include <c10/core/MemoryFormat.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/accumulate.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <cstdlib>
#include <map>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <mutex>
#include <string>
#include <vector>

namespace dl_lib {
namespace ops {
namespace cpu {
namespace {

// Rounds sizes up so that layers whose outputs differ by a few rows share buffers.
constexpr int64_t kGranule = 64 << 10;

struct Pool {
  std::mutex mu;
  std::multimap<int64_t, void*> free_buffers;  // capacity -> buffer
  int64_t cached = 0;
  int64_t limit = 0;
};

Pool& pool() {
  // Never destroyed: tensors freed during interpreter shutdown still return their buffers here.
  static Pool* p = [] {
    Pool* q = new Pool;
    const char* env = std::getenv("DL_LIB_MASKED_CONV_POOL_MB");
    int64_t mb = 256;
    if (env != nullptr && *env != '\0') {
      try {
        mb = std::stoll(env);
      } catch (...) {
        TORCH_WARN("DL_LIB_MASKED_CONV_POOL_MB=", env,
                   " is not a whole number of MiB; using the default of 256");
      }
    }
    q->limit = mb > 0 ? (mb << 20) : 0;
    return q;
  }();
  return *p;
}

// Buffers of the pool live long and are rewritten by every layer that uses them, so they are
// backed by 2 MiB pages where the kernel allows it (transparent huge pages in `madvise` mode):
// a 25 MB output then spans 13 TLB entries instead of ~6000 4 KiB pages.
constexpr int64_t kHugePage = 2 << 20;

void* alloc_buffer(int64_t capacity) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (capacity >= kHugePage) {
    void* ptr = nullptr;
    const int64_t size = (capacity + kHugePage - 1) / kHugePage * kHugePage;
    if (posix_memalign(&ptr, kHugePage, static_cast<size_t>(size)) == 0) {
      madvise(ptr, static_cast<size_t>(size), MADV_HUGEPAGE);  // a hint: failure is harmless
      return ptr;
    }
  }
#endif
  return c10::alloc_cpu(static_cast<size_t>(capacity));
}

// The DataPtr context: where to return the buffer and how big it is.
struct Block {
  void* ptr;
  int64_t capacity;
};

void give_back(void* ctx) {
  Block* b = static_cast<Block*>(ctx);
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.cached + b->capacity <= p.limit) {
      p.free_buffers.emplace(b->capacity, b->ptr);
      p.cached += b->capacity;
      b->ptr = nullptr;
    }
  }
  if (b->ptr != nullptr) c10::free_cpu(b->ptr);
  delete b;
}

// A tensor of `sizes` (memory format `fmt`) over `ptr`, which goes back to the pool when the
// storage dies.
at::Tensor wrap(void* ptr, int64_t capacity, int64_t nbytes, at::IntArrayRef sizes,
                const at::TensorOptions& opts, at::MemoryFormat fmt) {
  Block* b = new Block{ptr, capacity};
  c10::DataPtr data(ptr, b, &give_back, at::Device(at::kCPU));
  at::Storage storage(at::Storage::use_byte_size_t(), nbytes, std::move(data),
                      /*allocator=*/nullptr, /*resizable=*/false);
  std::vector<int64_t> strides;
  if (fmt == at::MemoryFormat::ChannelsLast && sizes.size() == 4) {
    strides = c10::get_channels_last_strides_2d(sizes);
  } else {
    const auto s = c10::contiguous_strides(sizes);
    strides.assign(s.begin(), s.end());
  }
  return at::empty({0}, opts).set_(storage, 0, sizes, strides);
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat fmt) {
  const int64_t nbytes =
      c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  Pool& p = pool();
  if (nbytes < kMinPooledBytes || p.limit == 0 || options.device().type() != at::kCPU) {
    return at::empty(sizes, options.memory_format(fmt));
  }
  const at::TensorOptions opts = options.memory_format(c10::nullopt);
  const int64_t capacity = (nbytes + kGranule - 1) / kGranule * kGranule;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    // The smallest cached buffer that fits, if it is not much larger than needed (a 25 MB
    // buffer should not serve a 2 MB output while the next 25 MB output faults in fresh pages).
    auto it = p.free_buffers.lower_bound(capacity);
    if (it != p.free_buffers.end() && it->first <= capacity + capacity / 4) {
      void* ptr = it->second;
      const int64_t cap = it->first;
      p.cached -= cap;
      p.free_buffers.erase(it);
      return wrap(ptr, cap, nbytes, sizes, opts, fmt);
    }
  }
  return wrap(alloc_buffer(capacity), capacity, nbytes, sizes, opts, fmt);
}

int64_t output_pool_cached_bytes() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return p.cached;
}

void clear_output_pool() {
  Pool& p = pool();
  std::multimap<int64_t, void*> buffers;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    buffers.swap(p.free_buffers);
    p.cached = 0;
  }
  for (auto& kv : buffers) c10::free_cpu(kv.second);
}

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib

namespace dl_lib {
namespace ops {
namespace {

// torch.ops.dl_lib._masked_conv2d_output_pool(clear): the bytes cached after optionally freeing
// them all (tests, and users who want the memory back).
int64_t output_pool_op(bool clear) {
  if (clear) cpu::clear_output_pool();
  return cpu::output_pool_cached_bytes();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dl_lib, m) {
  m.def("_masked_conv2d_output_pool(bool clear=False) -> int", &output_pool_op);
}

}  // namespace ops
}  // namespace dl_lib
