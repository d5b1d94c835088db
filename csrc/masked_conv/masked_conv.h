// Sparse masked convolution: a 2-D convolution evaluated only at the active positions of a mask
// on the OUTPUT grid. out[n, :, y, x] = conv2d(input, weight, bias)[n, :, y, x] where
// mask[n, 0, y, x] is true, and 0 elsewhere.
//
// Conventions shared by every backend (the Python wrapper dl_lib/layers/masked_conv.py checks
// shapes and produces exactly these inputs):
//   input   N x C x H x W      float tensor, any memory format (contiguous, channels_last, strided)
//   weight  O x C/groups x kh x kw
//   bias    O, or undefined
//   mask    N x 1 x Ho x Wo    bool, contiguous, same device as input
//   Ho = (H + 2*pad_h - dil_h*(kh-1) - 1) / stride_h + 1, likewise Wo.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace dl_lib {
namespace ops {

at::Tensor masked_conv2d_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups);

// The "keep" variant: writes the active positions into `out` (N x O x Ho x Wo, input's dtype, any
// strides without internal overlap, not overlapping input) and leaves the rest untouched.
void masked_conv2d_out_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, at::Tensor& out);

// Returns (grad_input, grad_weight, grad_bias); an entry is undefined when its output_mask flag
// is false. grad_bias is only computed when the forward had a bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask);

#ifdef WITH_CUDA
at::Tensor masked_conv2d_forward_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups);

void masked_conv2d_out_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, at::Tensor& out);

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask);
#endif

}  // namespace ops
}  // namespace dl_lib
