// The dl_lib operator library: one TORCH_LIBRARY block owns the namespace; each op adds its
// schema from its own folder with TORCH_LIBRARY_FRAGMENT (see csrc/masked_conv/).
#include <Python.h>
#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

// `import dl_lib._C` only has to load this shared object: the ops register themselves with the
// dispatcher as a side effect of loading, and Python reaches them through torch.ops.dl_lib.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace dl_lib {

// CUDA version the extension was compiled against (e.g. 13000), or -1 for a CPU-only build.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDART_VERSION;
#else
  return -1;
#endif
}

TORCH_LIBRARY(dl_lib, m) {
  m.def("_cuda_version() -> int", &cuda_version);
}

}  // namespace dl_lib
