"""Build and install dl_lib.

The compiled extension ``dl_lib._C`` is built from ``csrc/``:
  * the C++ (CPU) sources always;
  * the CUDA sources when a GPU is visible or ``FORCE_CUDA=1`` (``TORCH_CUDA_ARCH_LIST`` picks
    the architectures, e.g. ``9.0`` for H100/H200).

``dl_lib`` still imports when ``_C`` is missing (see ``dl_lib/_ext.py``); set ``DL_LIB_NO_EXT=1``
to install the pure-Python package only.

Development install: ``pip install --no-build-isolation -e .`` (torch must already be installed,
``make`` does this for you).
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("DL_LIB_NO_EXT", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "*", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "*", "cpu", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "*", "autograd", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "*", "cuda", "*.cu")))

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = CUDA_HOME is not None and (torch.cuda.is_available() or force_cuda)

    define_macros = []
    extra_compile_args = {"cxx": ["-O3"]}
    extension = CppExtension
    if with_cuda:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = [
            "-O3",
            "--expt-relaxed-constexpr",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    elif force_cuda:
        raise RuntimeError(
            "FORCE_CUDA=1 but no CUDA toolkit was found. Set CUDA_HOME to the toolkit folder "
            "(the one holding bin/nvcc)."
        )

    ext = extension(
        "dl_lib._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="dl_lib",
    version="0.1.0",
    description="Efficient semantic segmentation: dynamic routing, anytime prediction, pruning, "
    "conditional classifiers and sparse masked convolution",
    python_requires=">=3.10",
    packages=find_packages(include=["dl_lib", "dl_lib.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "opencv-python-headless>=4.5",
        "cityscapesscripts>=2.2",
        "tensorboard>=2.10",
        "tabulate>=0.9",
        "termcolor>=2.0",
        "tqdm>=4.60",
        "numpy>=1.23",
        "pillow>=9.0",
        "matplotlib>=3.5",
    ],
    extras_require={"test": ["pytest>=7", "hypothesis>=6"],
                    "prepare": ["scipy>=1.7"],  # tools/prepare_voc.py reads SBD .mat files
                    # dl_export --format onnx (onnxscript) and its check (onnxruntime)
                    "export": ["onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.2"]},
    entry_points={
        "console_scripts": [
            "dl_train=dl_lib.tools.train_net:main_train",
            "dl_test=dl_lib.tools.train_net:main_test",
            "dl_flops=dl_lib.tools.flops:main",
            "dl_bench=dl_lib.tools.bench:main",
            "dl_browse=dl_lib.tools.browse:main",
            "dl_demo=dl_lib.tools.demo_images:main",
            "dl_summarize=dl_lib.tools.summarize:main",
            "dl_plot=dl_lib.tools.plot_logs:main",
            "dl_export=dl_lib.tools.export:main",
        ]
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
