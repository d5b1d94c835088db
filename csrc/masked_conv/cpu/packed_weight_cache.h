// Cache of packed weight panels of the CPU masked convolution.
//
// Packing a weight [O, Cg, kh, kw] into the implicit-GEMM panels is O(O * Cg * kh * kw) strided
// copies per call: 9.4 MB for a 512-channel 3x3 layer, which took longer than the sparse compute
// itself at low density (a masked routing_l4_3x3 at d = 0.05 spent most of its ~9 ms packing).
// Inference calls the layer with the same weight again and again, so the panels are kept and
// reused while the weight is unchanged.
//
// An entry is valid for one weight tensor object (TensorImpl), its data pointer, shape, strides
// and version counter: in-place updates (optimizer steps, copy_, load_state_dict) bump the
// version, and `param.data = t` changes the data pointer, so both repack. The entry holds a weak
// reference to the TensorImpl, which keeps its address from being reused by another tensor while
// the entry exists; entries whose tensor died are dropped on the next lookup. Writes that bypass
// the version counter (through .numpy() or a raw data_ptr) are not seen: callers doing that must
// call clear_packed_weight_cache(). Inference-mode tensors have no version counter and are never
// cached.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace dl_lib {
namespace ops {
namespace cpu {

using PackedPanels = std::shared_ptr<const std::vector<float>>;

// The packed panels of `weight` in the layout identified by `layout` (any number that changes
// whenever the packing would differ for the same weight, e.g. the number of groups): from the
// cache, or pack() (stored for next time when the weight can be cached).
PackedPanels packed_weight(const at::Tensor& weight, int64_t layout,
                           const std::function<std::vector<float>()>& pack);

// Drops every cached entry.
void clear_packed_weight_cache();

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
