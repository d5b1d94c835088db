"""`import dl_lib` without the compiled extension: pure-PyTorch fallbacks and one warning."""
import os
import shutil
import subprocess
import sys
import textwrap

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


def test_compiled_extension_registers_ops():
    import torch

    assert dl_lib.has_compiled_ops(), f"dl_lib._C failed to load: {dl_lib._ext.EXTENSION_ERROR}"
    assert torch.ops.dl_lib._cuda_version() == (-1 if not dl_lib.compiled_with_cuda() else
                                                 torch.ops.dl_lib._cuda_version())
    assert hasattr(torch.ops.dl_lib, "masked_conv2d")
