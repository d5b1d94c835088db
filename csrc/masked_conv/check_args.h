// Argument checks of the masked convolution ops shared by every backend (cpu/, cuda/).
//
// The Python wrapper (dl_lib/layers/masked_conv.py) checks the same things with the same
// messages; these make direct calls of torch.ops.dl_lib.masked_conv2d / masked_conv2d_out /
// _masked_conv2d_backward safe too: a bad argument is a RuntimeError naming it, its value and the
// fix, never a division by zero (0 channels), a read out of bounds (a kernel larger than the
// padded input) or a pointer of another device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace dl_lib {
namespace ops {

// input N x C x H x W and weight O x C/groups x kh x kw (C > 0), stride and dilation > 0,
// padding >= 0, groups > 0 dividing C and O, weight, bias and mask on the input's device, weight
// and bias of the input's dtype, bias (when given) 1-D of O values, the dilated kernel inside the
// padded input, mask bool N x 1 x Ho x Wo. The backward passes no bias (std::nullopt).
void check_masked_conv_args(const char* fn, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& mask,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                            int64_t dilation_h, int64_t dilation_w, int64_t groups);

// `name` (out, grad_output) on the input's device; of its dtype too when same_dtype.
void check_like_input(const char* fn, const char* name, const at::Tensor& t,
                      const at::Tensor& input, bool same_dtype);

}  // namespace ops
}  // namespace dl_lib
