"""Loading of the compiled extension ``dl_lib._C``.

The package must import without it (a CPU-only wheel that failed to build, a Windows checkout,
a fresh clone before ``make``): every compiled op has a pure-PyTorch fallback, and a single
warning says what is missing and how to build it.
"""
import importlib
import logging
import os
import warnings

import torch

__all__ = ["has_compiled_ops", "compiled_with_cuda", "EXTENSION_ERROR"]

EXTENSION_ERROR = None
try:
    # DL_LIB_DISABLE_EXT=1 forces the pure-PyTorch fallbacks (tests use it to check them against
    # the compiled ops; also handy to rule the extension out when debugging).
    if os.environ.get("DL_LIB_DISABLE_EXT", "0") == "1":
        raise ImportError("disabled by the environment variable DL_LIB_DISABLE_EXT=1")
    importlib.import_module("dl_lib._C")  # loading registers torch.ops.dl_lib.*
except ImportError as e:  # pragma: no cover - exercised by tests through a subprocess
    EXTENSION_ERROR = e
    warnings.warn(
        f"dl_lib._C could not be loaded ({e}); using the pure-PyTorch fallbacks, which are "
        "correct but slower. Build the extension with `make build` or "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
    logging.getLogger(__name__).debug("dl_lib._C import failed", exc_info=True)


def has_compiled_ops() -> bool:
    """True if the compiled ops of ``dl_lib._C`` are registered with the dispatcher."""
    return EXTENSION_ERROR is None


def compiled_with_cuda() -> bool:
    """True if ``dl_lib._C`` was built with its CUDA kernels."""
    return has_compiled_ops() and torch.ops.dl_lib._cuda_version() > 0
