// Argument checks shared by the CPU and CUDA kernels of the masked convolution (check_args.h).
// Keep the messages in step with dl_lib/layers/masked_conv_checks.py.
#include "masked_conv/check_args.h"

#include <c10/util/Exception.h>

namespace dl_lib {
namespace ops {

void check_like_input(const char* fn, const char* name, const at::Tensor& t,
                      const at::Tensor& input, bool same_dtype) {
  TORCH_CHECK(t.device() == input.device(), fn, ": ", name, " is on ", t.device(),
              " but input is on ", input.device(), "; move it with ", name,
              ".to(input.device)");
  TORCH_CHECK(!same_dtype || t.scalar_type() == input.scalar_type(), fn, ": ", name, " dtype ",
              t.scalar_type(), " differs from input dtype ", input.scalar_type(), "; cast it with ",
              name, ".to(input.dtype)");
}

void check_masked_conv_args(const char* fn, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& mask,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                            int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  TORCH_CHECK(input.dim() == 4, fn, ": input must be 4-D (N x C x H x W), got shape ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 4, fn, ": weight must be 4-D (O x C/groups x kh x kw), got shape ",
              weight.sizes());
  check_like_input(fn, "weight", weight, input, /*same_dtype=*/true);
  check_like_input(fn, "mask", mask, input, /*same_dtype=*/false);
  if (bias.has_value() && bias->defined()) {
    check_like_input(fn, "bias", *bias, input, /*same_dtype=*/true);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), fn,
                ": bias must be 1-D with weight.shape[0] = ", weight.size(0),
                " values, got shape ", bias->sizes());
  }
  TORCH_CHECK(stride_h > 0 && stride_w > 0, fn, ": stride must be positive, got (", stride_h,
              ", ", stride_w, "); use stride >= 1");
  TORCH_CHECK(dilation_h > 0 && dilation_w > 0, fn, ": dilation must be positive, got (",
              dilation_h, ", ", dilation_w, "); use dilation >= 1 (1 = no dilation)");
  TORCH_CHECK(pad_h >= 0 && pad_w >= 0, fn, ": padding must be >= 0, got (", pad_h, ", ", pad_w,
              "); crop the input instead of padding negatively");
  TORCH_CHECK(groups > 0, fn, ": groups must be positive, got ", groups, "; use groups >= 1");
  const int64_t C = input.size(1), O = weight.size(0);
  TORCH_CHECK(C > 0, fn, ": input has 0 channels (shape ", input.sizes(),
              "); a convolution needs at least one input channel");
  TORCH_CHECK(C % groups == 0, fn, ": input channels (", C, ") must be divisible by groups (",
              groups, "); use a groups value that divides ", C);
  TORCH_CHECK(O % groups == 0, fn, ": weight.shape[0] (", O,
              " output channels) must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == C, fn, ": weight.shape[1] must be input channels / groups"
              " = ", C, " / ", groups, " = ", C / groups, ", got weight of shape ", weight.sizes());
  const int64_t H = input.size(2), W = input.size(3);
  const int64_t span_h = dilation_h * (weight.size(2) - 1) + 1;
  const int64_t span_w = dilation_w * (weight.size(3) - 1) + 1;
  // Checked before computing Ho: C++ division truncates towards zero, so a kernel a little larger
  // than the padded input would give Ho = 1 and read outside it.
  TORCH_CHECK(weight.size(2) > 0 && weight.size(3) > 0, fn,
              ": weight has an empty kernel (shape ", weight.sizes(), ")");
  TORCH_CHECK(span_h <= H + 2 * pad_h && span_w <= W + 2 * pad_w,
              fn, ": the kernel ", weight.size(2), " x ", weight.size(3), " (dilation ",
              dilation_h, " x ", dilation_w, ", so it spans ", span_h, " x ", span_w,
              " pixels) is larger than the padded input ", H + 2 * pad_h, " x ", W + 2 * pad_w,
              " (input ", H, " x ", W, ", padding ", pad_h, " x ", pad_w,
              "); pad the input more, or use a smaller kernel or dilation");
  const int64_t Ho = (H + 2 * pad_h - span_h) / stride_h + 1;
  const int64_t Wo = (W + 2 * pad_w - span_w) / stride_w + 1;
  TORCH_CHECK(mask.scalar_type() == at::kBool, fn, ": mask must be bool, got ",
              mask.scalar_type(), "; pass mask.bool() (dl_lib.layers.masked_conv2d converts 0/1 "
              "masks)");
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == input.size(0) && mask.size(1) == 1 &&
                  mask.size(2) == Ho && mask.size(3) == Wo,
              fn, ": mask must have shape (N, 1, Ho, Wo) = (", input.size(0), ", 1, ", Ho, ", ",
              Wo, ") (the output grid of this convolution), got ", mask.sizes(),
              "; resize it with dl_lib.layers.resize_mask(mask, (", Ho, ", ", Wo, "))");
}

}  // namespace ops
}  // namespace dl_lib
