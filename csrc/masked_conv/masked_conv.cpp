// Schema of the masked convolution ops. Kernels: cpu/, cuda/; autograd: autograd/.
#include <torch/library.h>

namespace dl_lib {
namespace ops {

TORCH_LIBRARY_FRAGMENT(dl_lib, m) {
  m.def(
      "masked_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor mask, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups) -> Tensor");
  m.def(
      "_masked_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor mask, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, "
      "int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

}  // namespace ops
}  // namespace dl_lib
