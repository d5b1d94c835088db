// Recycled storage for the outputs of the CPU masked convolution.
//
// A sparse layer's output is a dense N x O x Ho x Wo tensor, mostly zeros, and writing it is a
// large part of the layer's cost at low density. When it is allocated fresh, glibc serves a
// multi-megabyte block with mmap (or trims it off the heap when it is freed), so every 4 KiB page
// is faulted in and zeroed by the kernel before the layer writes it again: ~8 ms for the 25 MB
// output of an HRNet-W48 branch-1 layer at Cityscapes resolution, where the sparse compute at
// d = 0.1 takes ~3 ms. Networks run the same layer shapes over and over (ADP-C evaluates every
// exit of every image with the same sizes), so large outputs take their storage from a small
// cache of buffers that earlier outputs returned when they were freed, as the CUDA caching
// allocator does on the GPU.
//
// Bounded: buffers of at least kMinPooledBytes, at most `DL_LIB_MASKED_CONV_POOL_MB` MiB cached
// (default 256; 0 turns the pool off); a buffer returned to a full cache is freed. The tensors
// are ordinary CPU tensors except that their storage cannot be resized in place. Buffers of 2 MiB
// or more are 2 MiB-aligned and advised for transparent huge pages (fewer TLB misses while a
// layer writes 25 MB; a masked call right after a dense layer took ~0.55 instead of ~0.9 ms for
// its zeros in an A/B on the dev VM).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace dl_lib {
namespace ops {
namespace cpu {

// Smaller outputs are allocated normally: glibc reuses small heap blocks without faults.
constexpr int64_t kMinPooledBytes = 1 << 20;

// An uninitialised tensor like at::empty(sizes, options.memory_format(fmt)) on the CPU, whose
// storage comes from the pool when it is large enough.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat fmt);

// Bytes currently cached (free buffers waiting for reuse); for tests.
int64_t output_pool_cached_bytes();

// Frees every cached buffer.
void clear_output_pool();

}  // namespace cpu
}  // namespace ops
}  // namespace dl_lib
