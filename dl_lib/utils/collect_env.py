"""A short table of the software and hardware a run used, logged at the start of every run."""
import importlib.metadata
import os
import platform
import sys

import numpy as np
import torch
from tabulate import tabulate

__all__ = ["collect_env_info"]


def _version(distribution: str) -> str:
    # From the installed package's metadata: importing cv2 or torchvision only to read their
    # versions took seconds at the start of every run.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cv2_version() -> str:
    for distribution in ("opencv-python-headless", "opencv-python", "opencv-contrib-python"):
        version = _version(distribution)
        if version != "not installed":
            return version
    return "not installed"


def _safe(fn):
    try:
        return fn()
    except Exception as e:  # an environment report must never stop a run
        return f"unknown ({type(e).__name__})"


def collect_env_info() -> str:
    """Python, dl_lib (and whether its compiled ops are present), torch, CUDA and GPUs."""
    import dl_lib

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", np.__version__),
        ("dl_lib", f"{dl_lib.__version__} @{os.path.dirname(dl_lib.__file__)}"),
        ("dl_lib._C", "compiled" if dl_lib.has_compiled_ops() else "missing (pure-PyTorch fallbacks)"),
        ("dl_lib._C CUDA", _safe(dl_lib.compiled_with_cuda)),
        ("PyTorch", f"{torch.__version__} @{os.path.dirname(torch.__file__)}"),
        ("PyTorch debug build", torch.version.debug),
        ("CUDA available", torch.cuda.is_available()),
    ]
    if torch.cuda.is_available():
        rows.append(("CUDA (torch)", torch.version.cuda))
        rows.append(("cuDNN", torch.backends.cudnn.version()))
        names = {}
        for i in range(torch.cuda.device_count()):
            names.setdefault(torch.cuda.get_device_name(i), []).append(str(i))
        for name, ids in names.items():
            rows.append((f"GPU {','.join(ids)}", name))
    rows += [
        ("torchvision", _version("torchvision")),
        ("fvcore", _version("fvcore")),
        ("iopath", _version("iopath")),
        ("opencv", _cv2_version()),
        ("machine", platform.machine()),
        ("CPU count", os.cpu_count()),
    ]
    return tabulate(rows)
