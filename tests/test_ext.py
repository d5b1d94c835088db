"""`import dl_lib` without the compiled extension: pure-PyTorch fallbacks and one warning."""
import os
import shutil
import subprocess
import sys
import textwrap

import torch

import dl_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHECK = textwrap.dedent("""
    import sys, warnings
    # An editable install maps `dl_lib.*` names to the checkout whatever sys.path says; drop its
    # finder so the copy on PYTHONPATH is what gets imported.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import dl_lib, dl_lib.layers, dl_lib.engine, dl_lib.data, dl_lib.evaluation
        import dl_lib.modeling, dl_lib.checkpoint, dl_lib.solver, dl_lib.playground
    import torch
    ext = [w for w in caught if "dl_lib._C" in str(w.message)]
    assert len(ext) == 1, [str(w.message) for w in caught]
    assert "make build" in str(ext[0].message)
    assert not dl_lib.has_compiled_ops() and not dl_lib.compiled_with_cuda()
    x = torch.randn(1, 4, 9, 9)
    w = torch.randn(6, 4, 3, 3)
    m = torch.rand(1, 1, 9, 9) > 0.5
    y = dl_lib.layers.masked_conv2d(x, w, None, m, padding=1)
    ref = torch.nn.functional.conv2d(x, w, padding=1) * m
    assert torch.allclose(y, ref, atol=1e-5)
    print("fallback-ok", dl_lib.__file__)
""")


def _run(env, cwd):
    return subprocess.run([sys.executable, "-c", _CHECK], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_import_without_compiled_extension(tmp_path):
    # A copy of the package with no _C*.so in it, as in a checkout where the build failed.
    shutil.copytree(os.path.join(REPO, "dl_lib"), tmp_path / "dl_lib",
                    ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("DL_LIB_DISABLE_EXT", None)
    out = _run(env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "fallback-ok" in out.stdout and str(tmp_path) in out.stdout


def test_disable_switch_forces_fallback(tmp_path):
    env = dict(os.environ, DL_LIB_DISABLE_EXT="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    out = _run(env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr


# The ops with backend kernels of their own (the others are composite, or Python fallbacks).
_KERNEL_OPS = ("dl_lib::masked_conv2d", "dl_lib::_masked_conv2d_backward")


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def test_compiled_extension_registers_ops():
    assert dl_lib.has_compiled_ops(), f"dl_lib._C failed to load: {dl_lib._ext.EXTENSION_ERROR}"
    registered = {op for op in torch._C._dispatch_get_all_op_names() if op.startswith("dl_lib::")}
    assert {"dl_lib::_cuda_version", *_KERNEL_OPS} <= registered, sorted(registered)
    for op in _KERNEL_OPS:
        assert _has_kernel(op, "CPU"), op
    # the forward op differentiates through its own autograd kernel, not a composite fallback
    assert _has_kernel("dl_lib::masked_conv2d", "Autograd")


def test_cuda_version_matches_the_registered_kernels():
    """compiled_with_cuda() (from _cuda_version) agrees with what the dispatcher holds: CUDA
    kernels for every op exactly when the extension was built with CUDA."""
    version = torch.ops.dl_lib._cuda_version()
    with_cuda = dl_lib.compiled_with_cuda()
    for op in _KERNEL_OPS:
        assert _has_kernel(op, "CUDA") == with_cuda, (op, version)
    if with_cuda:
        # CUDART_VERSION = 1000 * major + 10 * minor, built against torch's CUDA major version
        assert version % 10 == 0 and version // 1000 == int(torch.version.cuda.split(".")[0])
    else:
        assert version == -1
