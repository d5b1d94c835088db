// Schema of the masked convolution ops. Kernels: cpu/, cuda/; autograd: autograd/.
#include <torch/library.h>

namespace dl_lib {
namespace ops {

TORCH_LIBRARY_FRAGMENT(dl_lib, m) {
  m.def(
      "masked_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor mask, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups) -> Tensor");
  // "Keep" variant: writes conv2d(...) at the active positions of `mask` into `out` (N x O x Ho x
  // Wo, the input's dtype, any strides without internal overlap) and leaves the other positions
  // untouched (no zero fill). Autograd lives in Python (dl_lib/layers/masked_conv.py) because the
  // previous values of `out` receive grad_output at the inactive positions. Returns nothing: an
  // output aliasing an input cannot be functionalized by torch.compile.
  m.def(
      "masked_conv2d_out(Tensor input, Tensor weight, Tensor? bias, Tensor mask, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, "
      "Tensor(a!) out) -> ()");
  m.def(
      "_masked_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor mask, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, "
      "int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

}  // namespace ops
}  // namespace dl_lib
