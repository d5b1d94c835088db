"""Break-even policy keyed by input layout (NCHW inputs cost the CPU kernel a transposing copy),
the channels_last advice for models, and the honesty of the hand-set CUDA entries."""
import torch

import dl_lib.layers
from dl_lib.layers import masked_conv_policy as policy
from dl_lib.layers.masked_conv_reference import masked_conv2d_dense

KEY = ("kxk", "le64", "cpu")
TABLES = ("BREAK_EVEN", "BREAK_EVEN_TRAINING", "BREAK_EVEN_NCHW", "HAND_SET", "HAND_SET_NCHW")


def _restore(saved):
    for name, table in saved.items():
        current = getattr(policy, name)
        current.clear()
        current.update(table)


def _saved():
    return {name: dict(getattr(policy, name)) for name in TABLES}


def test_nchw_inputs_use_their_own_threshold(monkeypatch):
    import dl_lib.layers.masked_conv as mc

    monkeypatch.setattr(policy, "_cpu_kernel", lambda: "avx512")  # the "cpu" keys below
    monkeypatch.setitem(policy.BREAK_EVEN, KEY, 0.9)
    monkeypatch.setitem(policy.BREAK_EVEN_NCHW, KEY, 0.2)
    assert policy.break_even_density("kxk", 64, "cpu", layout="nchw") == 0.2
    assert policy.break_even_density("kxk", 64, "cpu", layout="nhwc") == 0.9
    # The NCHW entry caps the training threshold too.
    monkeypatch.setitem(policy.BREAK_EVEN_TRAINING, KEY, 0.7)
    assert policy.break_even_density("kxk", 64, "cpu", training=True, layout="nchw") == 0.2
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return masked_conv2d_dense(*args, **kwargs)

    monkeypatch.setattr(mc, "masked_conv2d_dense", spy)
    torch.manual_seed(0)
    x, w = torch.randn(1, 64, 12, 12), torch.randn(64, 64, 3, 3)
    mask = torch.rand(1, 1, 12, 12) < 0.5
    assert policy.input_layout(x) == "nchw"
    y = mc.masked_conv2d(x, w, None, mask, 1, 1, dense_fallback=True)
    assert calls, "d = 0.5 on an NCHW input is above its break-even point 0.2: dense must run"
    calls.clear()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert policy.input_layout(x_cl) == "nhwc"
    y_cl = mc.masked_conv2d(x_cl, w, None, mask, 1, 1, dense_fallback=True)
    assert bool(calls) == (not dl_lib.has_compiled_ops())
    torch.testing.assert_close(y, y_cl, rtol=1e-4, atol=1e-4)


def test_generated_nchw_table_is_measured():
    # The benchmark measured every layer kind on NCHW inputs (on a CPU without AVX-512), next to
    # channels_last on the same machine; the AVX-512 NCHW entries are marked hand-set.
    text = open(policy.__file__).read()
    block = text[text.index("# BEGIN BREAK_EVEN_NCHW TABLE"):text.index("# END BREAK_EVEN_NCHW")]
    assert "# cpu_portable: python benchmarks/masked_conv.py" in block
    assert "--memory-format both" in block
    portable = {k for k in policy.BREAK_EVEN_NCHW if k[2] == "cpu_portable"}
    assert {k[0] for k in portable} == {"kxk", "depthwise", "1x1"}
    for key in portable:
        assert 0.0 <= policy.BREAK_EVEN_NCHW[key] <= 1.0
    # Measured: depthwise and 1x1 never beat dense on NCHW inputs of this CPU (fallback always).
    assert policy.BREAK_EVEN_NCHW[("depthwise", "le128", "cpu_portable")] == 0.0
    for kind in ("kxk", "depthwise", "1x1"):
        for bucket in ("le32", "le64", "le128", "gt128"):
            assert (kind, bucket, "cpu") in policy.HAND_SET_NCHW
    comment = text[:text.index("# BEGIN HAND_SET_NCHW TABLE")].rsplit("\n\n", 1)[-1]
    assert "NOT MEASURED" in comment


def test_policy_device_keys_the_cpu_tables_by_isa(monkeypatch):
    import dl_lib.layers.masked_conv as mc

    monkeypatch.setattr(policy, "_cpu_kernel", lambda: "portable")
    assert policy.policy_device("cpu") == "cpu_portable"
    assert policy.policy_device(torch.device("cuda", 1)) == "cuda"
    monkeypatch.setattr(policy, "_cpu_kernel", lambda: "avx2")
    assert policy.policy_device("cpu") == "cpu_avx2"
    monkeypatch.setattr(policy, "_cpu_kernel", lambda: "avx512")
    assert policy.policy_device("cpu") == "cpu"
    # masked_conv2d looks its threshold up under the key of this CPU.
    monkeypatch.setitem(policy.BREAK_EVEN, KEY, 0.9)
    monkeypatch.setitem(policy.BREAK_EVEN, ("kxk", "le64", "cpu_portable"), 0.1)
    calls = []
    monkeypatch.setattr(mc, "masked_conv2d_dense",
                        lambda *a, **k: calls.append(1) or masked_conv2d_dense(*a, **k))
    x = torch.randn(1, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3)
    mask = torch.rand(1, 1, 8, 8) < 0.5
    mc.masked_conv2d(x, w, None, mask, 1, 1, dense_fallback=True)
    assert bool(calls) == (not dl_lib.has_compiled_ops())
    monkeypatch.setattr(policy, "_cpu_kernel", lambda: "portable")
    calls.clear()
    mc.masked_conv2d(x, w, None, mask, 1, 1, dense_fallback=True)
    assert calls, "the portable threshold 0.1 is below d ~ 0.5: dense must run"


def test_writer_nchw_table_keeps_the_others(tmp_path):
    path = tmp_path / "policy_copy.py"
    path.write_text(open(policy.__file__).read())
    saved = _saved()
    try:
        policy.write_break_even_table({KEY: 0.33}, "bench --nchw", path=str(path),
                                      date="2026-01-02", layout="nchw")
        namespace = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        assert namespace["BREAK_EVEN_NCHW"][KEY] == 0.33
        assert namespace["BREAK_EVEN"] == saved["BREAK_EVEN"]
        assert namespace["HAND_SET"] == saved["HAND_SET"]
        assert "# cpu: bench --nchw on 2026-01-02." in path.read_text()
        # The measured key replaces its hand-set NCHW guess; the others stay.
        assert KEY in saved["HAND_SET_NCHW"] and KEY not in namespace["HAND_SET_NCHW"]
        assert ("kxk", "gt128", "cpu") in namespace["HAND_SET_NCHW"]
    finally:
        _restore(saved)
    try:
        policy.write_break_even_table({KEY: 0.3}, "x", path=str(path), mode="fwdbwd",
                                      layout="nchw")
    except ValueError as e:
        assert "layout" in str(e)
    else:
        raise AssertionError("fwdbwd/nchw has no table: expected a ValueError")


def test_cuda_entries_are_marked_hand_set():
    cuda = {k for k in set(policy.BREAK_EVEN) | set(policy.HAND_SET) if k[2] == "cuda"}
    assert cuda, "the CUDA kinds need some threshold"
    # Nobody measured them: they live in HAND_SET, not in the measured table.
    assert not {k for k in policy.BREAK_EVEN if k[2] == "cuda"}
    assert cuda <= set(policy.HAND_SET)
    text = open(policy.__file__).read()
    comment = text[:text.index("# BEGIN HAND_SET TABLE")].rsplit("\n\n", 1)[-1]
    assert "NOT MEASURED" in comment and "--device cuda --write-policy" in comment
    assert policy.break_even_density("kxk", 64, "cuda") == policy.HAND_SET[("kxk", "le64", "cuda")]


def test_prefers_channels_last():
    assert dl_lib.layers.prefers_channels_last("cpu") is True
    assert dl_lib.layers.prefers_channels_last(torch.device("cpu")) is True
    assert dl_lib.layers.prefers_channels_last("cuda:0") is True
    assert dl_lib.layers.prefers_channels_last("meta") is False
