// See packed_weight_cache.h.
#include "masked_conv/cpu/packed_weight_cache.h"

#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <list>
#include <mutex>

namespace dl_lib {
namespace ops {
namespace cpu {
namespace {

// A network's worth of layers (HRNet-W48 has ~100 3x3 convs, 220 MB of fp32 weights in all
// would be too much to duplicate): the least recently used entries go past these bounds.
constexpr size_t kMaxEntries = 128;
constexpr size_t kMaxBytes = size_t(256) << 20;

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> impl;
  const void* data;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  uint32_t version;
  int64_t layout;
  PackedPanels panels;
  size_t bytes() const { return panels->size() * sizeof(float); }
};

struct Cache {
  std::mutex mu;
  std::list<Entry> entries;  // most recently used first
  size_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: no order-of-destruction issues at exit
  return *c;
}

bool same_tensor(const Entry& e, c10::TensorImpl* impl, const at::Tensor& w, uint32_t version,
                 int64_t layout) {
  return e.impl._unsafe_get_target() == impl && e.data == w.const_data_ptr() &&
         e.version == version && e.layout == layout && e.dtype == w.scalar_type() &&
         w.sizes().equals(e.sizes) && w.strides().equals(e.strides);
}

}  // namespace

PackedPanels packed_weight(const at::Tensor& weight, int64_t layout,
                           const std::function<std::vector<float>()>& pack) {
  if (weight.is_inference()) {
    return std::make_shared<const std::vector<float>>(pack());
  }
  c10::TensorImpl* impl = weight.unsafeGetTensorImpl();
  const uint32_t version = impl->version_counter().current_version();
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto it = c.entries.begin(); it != c.entries.end();) {
      if (it->impl.expired()) {  // the weight tensor is gone
        c.bytes -= it->bytes();
        it = c.entries.erase(it);
        continue;
      }
      if (same_tensor(*it, impl, weight, version, layout)) {
        c.entries.splice(c.entries.begin(), c.entries, it);
        return it->panels;
      }
      ++it;
    }
  }
  // Packed outside the lock: pack() runs a parallel region, and other threads' lookups of other
  // weights need not wait for it.
  PackedPanels panels = std::make_shared<const std::vector<float>>(pack());
  Entry e{c10::weak_intrusive_ptr<c10::TensorImpl>(weight.getIntrusivePtr()),
          weight.const_data_ptr(),
          weight.sizes().vec(),
          weight.strides().vec(),
          weight.scalar_type(),
          version,
          layout,
          panels};
  if (e.bytes() > kMaxBytes / 4) return panels;  // one huge weight would flush everything
  std::lock_guard<std::mutex> lock(c.mu);
  // A stale entry of the same tensor (older version / other data) is useless from now on.
  for (auto it = c.entries.begin(); it != c.entries.end();) {
    if (it->impl._unsafe_get_target() == impl && it->layout == layout) {
      c.bytes -= it->bytes();
      it = c.entries.erase(it);
    } else {
      ++it;
    }
  }
  c.bytes += e.bytes();
  c.entries.push_front(std::move(e));
  while (!c.entries.empty() && (c.entries.size() > kMaxEntries || c.bytes > kMaxBytes)) {
    c.bytes -= c.entries.back().bytes();
    c.entries.pop_back();
  }
  return panels;
}

void clear_packed_weight_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.entries.clear();
  c.bytes = 0;
}

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
