"""CUDA sources checked without a GPU.

* tools/cuda_compile_check.py: skips cleanly without nvcc, parses arch lists. The full compile
  (about a minute per .cu file) is run by `make test` / `make cuda-check`, not here.
* The masked-conv CUDA kernels, run through a CPU emulation (one std::thread per CUDA thread, see
  csrc/masked_conv/cuda/emulate_kernels.cpp) and compared with a direct convolution.
"""
import importlib.util
import os
import subprocess
import sys

import pytest
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "cuda_compile_check.py")


def _load_module():
    spec = importlib.util.spec_from_file_location("cuda_compile_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skips_with_exit_0_when_nvcc_is_hidden(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    # A PATH holding only an empty folder: no nvcc anywhere. The script is run by absolute path
    # with this interpreter, so it needs nothing from PATH.
    env["PATH"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nvcc not found: skipping the CUDA compile check" in proc.stdout


def test_cuda_home_takes_precedence(tmp_path, monkeypatch):
    module = _load_module()
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert module.find_nvcc() == str(fake)


def test_arch_flags():
    module = _load_module()
    assert module.arch_flags("9.0") == ["-gencode=arch=compute_90,code=sm_90"]
    assert module.arch_flags("8.6;9.0+PTX") == [
        "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    assert module.arch_flags("9.0a") == ["-gencode=arch=compute_90a,code=sm_90a"]
    with pytest.raises(ValueError, match="sm90"):
        module.arch_flags("sm90")


KERNEL_SRC = os.path.join(ROOT, "csrc", "masked_conv", "cuda", "masked_conv_kernel.cu")
EMULATOR = os.path.join(ROOT, "csrc", "masked_conv", "cuda", "emulate_kernels.cpp")
DEVICE_BEGIN = "// Geometry shared by every kernel"
DEVICE_END = "// Host side. Everything above"


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_masked_conv_cuda_kernels_in_cpu_emulation(tmp_path):
    with open(KERNEL_SRC) as f:
        src = f.read()
    assert DEVICE_BEGIN in src and DEVICE_END in src, (
        f"{KERNEL_SRC} must keep its device code between the lines {DEVICE_BEGIN!r} and "
        f"{DEVICE_END!r} (the emulation test copies that section)"
    )
    (tmp_path / "kernels.inc").write_text(src[src.index(DEVICE_BEGIN) : src.index(DEVICE_END)])
    exe = tmp_path / "emulate"
    build = subprocess.run(
        ["g++", "-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas", f"-I{tmp_path}",
         EMULATOR, "-o", str(exe)],
        capture_output=True, text=True, timeout=120,
    )
    if build.returncode != 0 and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("the C++ standard library lacks <barrier> (needs GCC >= 11)")
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(" OK") == 8, run.stdout
