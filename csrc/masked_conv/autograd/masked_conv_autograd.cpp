// Autograd for dl_lib::masked_conv2d, registered under the Autograd key (torchvision's
// deform_conv2d pattern). The backward calls dl_lib::_masked_conv2d_backward through the
// dispatcher, so each backend (CPU, CUDA) only provides plain kernels. The mask gets no gradient,
// and double backward raises.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace dl_lib {
namespace ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const at::Tensor& mask,
                        int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                        int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dl_lib::masked_conv2d", "")
                       .typed<decltype(call_forward)>();
  return op.call(input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dl_lib::_masked_conv2d_backward", "")
                       .typed<decltype(call_backward)>();
  return op.call(grad_output, input, weight, mask, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, groups, output_mask);
}

// The backward op as a differentiable node whose own backward refuses: without it a
// create_graph=True backward would silently return gradients that do not require grad.
class MaskedConv2dBackwardFunction
    : public torch::autograd::Function<MaskedConv2dBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& grad_output,
                               const Variable& input, const Variable& weight,
                               const Variable& mask, int64_t stride_h, int64_t stride_w,
                               int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                               int64_t dilation_w, int64_t groups,
                               std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto result = call_backward(grad_output, input, weight, mask, stride_h, stride_w, pad_h,
                                pad_w, dilation_h, dilation_w, groups, output_mask);
    // A custom Function cannot return undefined tensors; the callers drop these placeholders
    // again (see backward_maybe_differentiable).
    at::Tensor gi = std::get<0>(result), gw = std::get<1>(result), gb = std::get<2>(result);
    if (!gi.defined()) gi = at::zeros_like(input);
    if (!gw.defined()) gw = at::zeros_like(weight);
    if (!gb.defined()) gb = at::zeros({weight.size(0)}, weight.options());
    return {gi, gw, gb};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    TORCH_CHECK(false,
                "double backward of dl_lib::masked_conv2d is not supported; use the dense "
                "reference (dl_lib.layers.masked_conv_reference.masked_conv2d_dense) for "
                "higher-order gradients");
  }
};

// The backward op, recorded in the graph only when a higher-order graph is being built
// (create_graph=True); a plain backward calls the kernels directly.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_maybe_differentiable(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask) {
  if (!at::GradMode::is_enabled()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_backward(grad_output, input, weight, mask, stride_h, stride_w, pad_h, pad_w,
                         dilation_h, dilation_w, groups, output_mask);
  }
  auto grads = MaskedConv2dBackwardFunction::apply(grad_output, input, weight, mask, stride_h,
                                                   stride_w, pad_h, pad_w, dilation_h,
                                                   dilation_w, groups, output_mask);
  for (int i = 0; i < 3; ++i) {
    if (!output_mask[i]) grads[i] = at::Tensor();
  }
  return {grads[0], grads[1], grads[2]};
}

class MaskedConv2dFunction : public torch::autograd::Function<MaskedConv2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& input,
                               const Variable& weight, const std::optional<Variable>& bias,
                               const Variable& mask, int64_t stride_h, int64_t stride_w,
                               int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                               int64_t dilation_w, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = call_forward(input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w,
                                     dilation_h, dilation_w, groups);
    ctx->save_for_backward({input, weight, mask});
    ctx->saved_data["stride_h"] = stride_h;
    ctx->saved_data["stride_w"] = stride_w;
    ctx->saved_data["pad_h"] = pad_h;
    ctx->saved_data["pad_w"] = pad_w;
    ctx->saved_data["dilation_h"] = dilation_h;
    ctx->saved_data["dilation_w"] = dilation_w;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return {output};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    std::array<bool, 3> output_mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                       has_bias && ctx->needs_input_grad(2)};
    at::Tensor grad_input, grad_weight, grad_bias;
    if (output_mask[0] || output_mask[1] || output_mask[2]) {
      std::tie(grad_input, grad_weight, grad_bias) = backward_maybe_differentiable(
          grad_outputs[0], saved[0], saved[1], saved[2], ctx->saved_data["stride_h"].toInt(),
          ctx->saved_data["stride_w"].toInt(), ctx->saved_data["pad_h"].toInt(),
          ctx->saved_data["pad_w"].toInt(), ctx->saved_data["dilation_h"].toInt(),
          ctx->saved_data["dilation_w"].toInt(), ctx->saved_data["groups"].toInt(), output_mask);
    }
    // One entry per forward argument: input, weight, bias, mask, then the seven ints.
    return {grad_input, grad_weight, grad_bias, Variable(), Variable(), Variable(), Variable(),
            Variable(),  Variable(),   Variable(),  Variable()};
  }
};

at::Tensor masked_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, const at::Tensor& mask,
                                  int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                  int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                                  int64_t groups) {
  return MaskedConv2dFunction::apply(input, weight, bias, mask, stride_h, stride_w, pad_h, pad_w,
                                     dilation_h, dilation_w, groups)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, std::array<bool, 3> output_mask) {
  return backward_maybe_differentiable(grad_output, input, weight, mask, stride_h, stride_w,
                                       pad_h, pad_w, dilation_h, dilation_w, groups, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(dl_lib, Autograd, m) {
  m.impl("masked_conv2d", &masked_conv2d_autograd);
  m.impl("_masked_conv2d_backward", &masked_conv2d_backward_autograd);
}

}  // namespace ops
}  // namespace dl_lib
