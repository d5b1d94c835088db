#!/usr/bin/env python
"""Compile-check every CUDA source of dl_lib (``csrc/**/*.cu``) without a GPU.

CI machines have nvcc but no GPU, and setup.py only builds the CUDA sources with ``FORCE_CUDA=1``,
so without this check a broken ``.cu`` file would only be noticed on the GPU machines. Each file
is compiled to an object file (``nvcc -c``) in a temporary folder with the flags setup.py uses for
a ``FORCE_CUDA`` build: ``-DWITH_CUDA``, torch's include paths, ``-I csrc``, ``-std=c++20``,
``--expt-relaxed-constexpr``, the ``__CUDA_NO_HALF*`` macros and one ``-gencode`` per entry of
``TORCH_CUDA_ARCH_LIST`` (default ``9.0``, i.e. H100/H200). Nothing is linked or kept.

Usage::

    python tools/cuda_compile_check.py [--arch-list "8.0;9.0"] [--jobs 2] [files ...]

Exit status: 0 when every file compiles, or when no nvcc is found (it prints
"nvcc not found: skipping the CUDA compile check"); 1 when a file fails (nvcc's output is printed).
nvcc is looked up as ``$CUDA_HOME/bin/nvcc`` first, then on ``PATH``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

# Must match extra_compile_args["nvcc"] in setup.py (minus -O3: optimisation level does not change
# what compiles, and -O0 device code would not be faster to check).
NVCC_FLAGS = [
    "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]


def find_nvcc() -> str | None:
    """Returns the nvcc executable: ``$CUDA_HOME/bin/nvcc`` if it exists, else nvcc on PATH."""
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidate = os.path.join(cuda_home, "bin", "nvcc")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nvcc")


def arch_flags(arch_list: str) -> list[str]:
    """``"8.6;9.0+PTX"`` -> ``-gencode`` flags (``+PTX`` also embeds PTX for that arch)."""
    flags = []
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        num = entry[: -len("+PTX")] if ptx else entry
        suffix = ""
        if num and num[-1] in "af":  # e.g. 9.0a (wgmma) or 10.0f
            num, suffix = num[:-1], num[-1]
        parts = num.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(
                f"TORCH_CUDA_ARCH_LIST entry {entry!r} is not of the form 'X.Y', 'X.Ya' or "
                "'X.Y+PTX' (e.g. '9.0')"
            )
        code = parts[0] + parts[1] + suffix
        flags.append(f"-gencode=arch=compute_{code},code=sm_{code}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{code},code=compute_{code}")
    if not flags:
        raise ValueError(f"TORCH_CUDA_ARCH_LIST {arch_list!r} names no architecture")
    return flags


def torch_flags() -> list[str]:
    """Include paths and ABI macros of the installed torch (no GPU or CUDA runtime needed)."""
    import logging

    # cpp_extension warns "No CUDA runtime is found" on GPU-less machines: expected here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import torch
    from torch.utils import cpp_extension

    try:
        includes = cpp_extension.include_paths(device_type="cuda")
    except TypeError:  # older torch: include_paths(cuda: bool)
        includes = cpp_extension.include_paths(True)
    # The CUDA toolkit's own include folder is nvcc's default: only torch's folders are needed,
    # and cpp_extension may have guessed a wrong CUDA_HOME on a machine without a CUDA runtime.
    includes = [p for p in includes if os.path.isdir(p) and "torch" in p]
    flags = [f"-I{p}" for p in includes]
    flags += [f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}"]
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    flags += [
        "-DWITH_CUDA",
        "-DTORCH_EXTENSION_NAME=_C",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-std=c++20",
        "-Xcompiler",
        "-fPIC",
    ]
    return flags


def compile_one(nvcc: str, src: str, flags: list[str], outdir: str) -> tuple[str, float, int, str]:
    obj = os.path.join(outdir, os.path.relpath(src, ROOT).replace(os.sep, "_") + ".o")
    cmd = [nvcc, *flags, "-c", src, "-o", obj]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        output = "$ " + " ".join(cmd) + "\n" + output
    return src, elapsed, proc.returncode, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="CUDA sources (default: every csrc/**/*.cu)")
    parser.add_argument(
        "--arch-list",
        default=os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0",
        help="architectures, as TORCH_CUDA_ARCH_LIST (default: $TORCH_CUDA_ARCH_LIST or 9.0)",
    )
    parser.add_argument(
        "--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")),
        help="files compiled in parallel (default: $MAX_JOBS or 2)",
    )
    args = parser.parse_args(argv)

    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found: skipping the CUDA compile check")
        return 0

    files = args.files or sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    if not files:
        print(f"no .cu files under {CSRC}: nothing to check")
        return 0
    try:
        flags = torch_flags() + arch_flags(args.arch_list) + NVCC_FLAGS
    except ValueError as exc:
        print(f"cuda_compile_check: {exc}", file=sys.stderr)
        return 1

    print(f"CUDA compile check with {nvcc} for arch {args.arch_list}: {len(files)} file(s)")
    failed = []
    total_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dl_lib_cuda_check_") as outdir:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(compile_one, nvcc, f, flags, outdir) for f in files]
            for fut in futures:
                src, elapsed, rc, output = fut.result()
                rel = os.path.relpath(src, ROOT)
                status = "ok" if rc == 0 else f"FAILED (exit {rc})"
                print(f"  {rel}: {status} in {elapsed:.1f} s", flush=True)
                if rc != 0:
                    failed.append(rel)
                    print(output, file=sys.stderr)
                elif output.strip():  # warnings: show them, they usually point at real bugs
                    print(output)
    print(f"CUDA compile check: {len(files) - len(failed)}/{len(files)} ok "
          f"in {time.perf_counter() - total_start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
