"""dl_lib: a Detectron2-style codebase for efficient semantic segmentation."""
from dl_lib._ext import compiled_with_cuda, has_compiled_ops  # noqa: F401

__version__ = "0.1.0"
