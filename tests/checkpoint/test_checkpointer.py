"""Checkpointer: round trip, atomic saves, resume vs. weights-only init, foreign files, logging."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from dl_lib.checkpoint import (
    Checkpointer,
    IncompatibleCheckpointError,
    PeriodicCheckpointer,
    register_converter,
    registered_converters,
    unregister_converter,
)
from dl_lib.config import get_cfg
from dl_lib.solver import build_lr_scheduler, build_optimizer

LOGGER = "dl_lib.checkpoint.checkpointer"


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def logs():
    """Messages of the checkpointer's logger, captured on the logger itself: caplog's root
    handler misses them once ``setup_logger`` has turned off propagation of "dl_lib"."""
    logger = logging.getLogger(LOGGER)
    handler, level = _Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _cfg(max_iter=20):
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER.NAME = "PolyLR"
    cfg.SOLVER.LR_SCHEDULER.MAX_ITER = max_iter
    return cfg


def _train(model, opt, sched, steps):
    for _ in range(steps):
        model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_save_load_round_trip(tmp_path):
    a, b = _net(0), _net(1)
    ck = Checkpointer(a, str(tmp_path), save_to_disk=True)
    ck.save("model_a", iteration=3)
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    assert ck.has_checkpoint() and ck.get_checkpoint_file() == str(tmp_path / "model_a.pth")
    extra = Checkpointer(b).load(str(tmp_path / "model_a.pth"))
    _assert_same_weights(a, b)
    assert extra == {"iteration": 3}
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_save_is_disabled_without_dir_or_off_main(tmp_path):
    Checkpointer(_net(), "").save("x")
    Checkpointer(_net(), str(tmp_path), save_to_disk=False).save("x")
    assert list(tmp_path.iterdir()) == []
    assert not Checkpointer(_net()).has_checkpoint()


def _fail_replace_into(monkeypatch, suffix):
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(suffix):
            raise OSError("simulated kill before rename")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)


def test_atomic_save_kill_before_rename(tmp_path, monkeypatch):
    a = _net(0)
    ck = Checkpointer(a, str(tmp_path), save_to_disk=True)
    ck.save("model_a")
    with torch.no_grad():
        a[0].weight.add_(1.0)
    _fail_replace_into(monkeypatch, "model_b.pth")
    with pytest.raises(OSError, match="simulated"):
        ck.save("model_b")
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_a.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    restored = _net(1)
    Checkpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    _assert_same_weights(restored, _net(0))


def test_atomic_pointer_kill_before_rename(tmp_path, monkeypatch):
    ck = Checkpointer(_net(0), str(tmp_path), save_to_disk=True)
    ck.save("model_a")
    _fail_replace_into(monkeypatch, "last_checkpoint")
    with pytest.raises(OSError, match="simulated"):
        ck.save("model_b")
    monkeypatch.undo()
    # the new file is complete, but the pointer still names the previous one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_a.pth",
                                                           "model_b.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    Checkpointer(_net(1)).load(str(tmp_path / "model_b.pth"))


def _training_state(save_dir, cfg, seed):
    model = _net(seed)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    # scheduler given before the optimizer: loading must still end with the schedule's LR
    ck = Checkpointer(model, str(save_dir), save_to_disk=True, scheduler=sched, optimizer=opt)
    return model, opt, sched, ck


def test_resume_restores_everything(tmp_path):
    cfg = _cfg()
    model, opt, sched, ck = _training_state(tmp_path, cfg, 0)
    _train(model, opt, sched, 5)
    ck.save("model_0000004", iteration=4)

    model2, opt2, sched2, ck2 = _training_state(tmp_path, cfg, 1)
    data = ck2.resume_or_load("ignored_weights.pth", resume=True)
    assert data["iteration"] == 4
    _assert_same_weights(model, model2)
    assert sched2.last_epoch == sched.last_epoch == 5
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    for p, p2 in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                                   opt2.state[p2]["momentum_buffer"])


def test_resume_with_changed_max_iter(tmp_path):
    model, opt, sched, ck = _training_state(tmp_path, _cfg(max_iter=20), 0)
    _train(model, opt, sched, 10)
    ck.save("model_0000009", iteration=9)
    _, opt2, sched2, ck2 = _training_state(tmp_path, _cfg(max_iter=40), 1)
    ck2.resume_or_load("", resume=True)
    base = _cfg().SOLVER.OPTIMIZER.BASE_LR
    assert opt2.param_groups[0]["lr"] == pytest.approx(base * (1 - 10 / 40) ** 0.9)


def test_weights_path_loads_model_only(tmp_path, logs):
    cfg = _cfg()
    model, opt, sched, ck = _training_state(tmp_path / "old_run", cfg, 0)
    _train(model, opt, sched, 5)
    ck.save("model_final", iteration=4)
    weights = str(tmp_path / "old_run" / "model_final.pth")

    model2, opt2, sched2, ck2 = _training_state(tmp_path / "new_run", cfg, 1)
    data = ck2.resume_or_load(weights, resume=True)  # nothing to resume in new_run
    assert data == {}
    _assert_same_weights(model, model2)
    assert opt2.state == {} or all(not s for s in opt2.state.values())
    assert sched2.last_epoch == 0
    assert opt2.param_groups[0]["lr"] == pytest.approx(cfg.SOLVER.OPTIMIZER.BASE_LR)
    assert "weights only" in logs.text

    # resume=False ignores an existing checkpoint in save_dir
    model3, _, sched3, ck3 = _training_state(tmp_path / "old_run", cfg, 2)
    assert ck3.resume_or_load(weights, resume=False) == {}
    assert sched3.last_epoch == 0


def test_unwraps_dataparallel_and_strips_module_prefix(tmp_path):
    a = _net(0)
    wrapped = nn.DataParallel(a)
    assert Checkpointer(wrapped).model is a
    path = str(tmp_path / "ddp.pth")
    torch.save({"model": wrapped.state_dict()}, path)  # keys start with "module."
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    b = _net(1)
    Checkpointer(b).load(path)
    _assert_same_weights(a, b)


def test_unwraps_compiled_model_and_strips_orig_mod_prefix(tmp_path):
    a = _net(0)
    compiled = torch.compile(a)  # wrapping is lazy: nothing is compiled here
    assert Checkpointer(compiled).model is a
    torch.save(compiled.state_dict(), tmp_path / "compiled.pth")  # keys start with "_orig_mod."
    b = _net(1)
    Checkpointer(b).load(str(tmp_path / "compiled.pth"))
    _assert_same_weights(a, b)


def test_bare_and_state_dict_files(tmp_path):
    a = _net(0)
    torch.save(a.state_dict(), tmp_path / "bare.pth")
    torch.save({"state_dict": a.state_dict(), "meta": {"epoch": 3}}, tmp_path / "mmlike.pth")
    for name in ("bare.pth", "mmlike.pth"):
        b = _net(1)
        assert Checkpointer(b).load(str(tmp_path / name)) == {}
        _assert_same_weights(a, b)


def test_missing_unexpected_table_and_shape_mismatch(tmp_path, logs):
    a = _net(0)
    sd = a.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["2.bias"]
    sd["0.weight"] = torch.zeros(4, 3, 5, 5)
    torch.save(sd, tmp_path / "partial.pth")
    b = _net(1)
    before = b[0].weight.detach().clone()
    Checkpointer(b).load(str(tmp_path / "partial.pth"))
    assert torch.equal(b[0].weight, before)  # mismatched shape: kept as initialised
    assert torch.equal(b[2].weight, a[2].weight)
    text = logs.text
    assert "0.weight" in text and "(4, 3, 5, 5)" in text and "(4, 3, 3, 3)" in text
    assert "| key" in text  # a tabulate table
    assert "2.bias" in text and "missing in checkpoint" in text
    assert "extra.weight" in text and "unexpected" in text


def test_missing_file_error_names_path(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Checkpointer(_net()).load(path)
    assert Checkpointer(_net()).load("") == {}


def test_weights_only_policy(tmp_path, logs):
    a = _net(0)
    # A foreign file with a numpy array: refused by default, loadable when trusted explicitly.
    foreign = str(tmp_path / "foreign.pth")
    torch.save({"model": a.state_dict(), "extra": np.arange(3)}, foreign)
    with pytest.raises(pickle.UnpicklingError, match="weights_only=False"):
        Checkpointer(_net(1)).load(foreign)
    b = _net(1)
    assert Checkpointer(b, weights_only=False).load(foreign)["extra"].tolist() == [0, 1, 2]
    _assert_same_weights(a, b)

    # Our own file in save_dir with a non-tensor object: trusted, with a logged note ...
    run = tmp_path / "run"
    Checkpointer(a, str(run), save_to_disk=True).save("model_final", extra=np.arange(3))
    c = _net(2)
    data = Checkpointer(c, str(run)).resume_or_load("", resume=True)
    assert data["extra"].tolist() == [0, 1, 2] and "weights_only=False" in logs.text
    _assert_same_weights(a, c)
    # ... unless weights_only=True is asked for.
    with pytest.raises(pickle.UnpicklingError):
        Checkpointer(_net(2), str(run), weights_only=True).resume_or_load("", resume=True)


def test_plain_checkpoint_loads_with_weights_only(tmp_path):
    cfg = _cfg()
    model, opt, sched, ck = _training_state(tmp_path, cfg, 0)
    _train(model, opt, sched, 2)
    ck.save("model_0000001", iteration=1)
    # model, SGD and LRMultiplier states are tensors and plain values only
    torch.load(tmp_path / "model_0000001.pth", weights_only=True)


class _OldNet(nn.Sequential):
    """The class a converter is registered for."""


class _OldNetVariant(_OldNet):
    """A subclass: converters of its bases apply to it too."""


def _old_net(cls, seed):
    torch.manual_seed(seed)
    return cls(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_converter_applies_only_to_its_model_class(tmp_path, logs):
    a = _net(0)
    foreign = {"old_net." + k: v for k, v in a.state_dict().items()}
    torch.save(foreign, tmp_path / "released.pth")
    register_converter("test_old_net",
                       convert=lambda sd: {k[len("old_net."):]: v for k, v in sd.items()},
                       matches=lambda keys: all(k.startswith("old_net.") for k in keys),
                       model_class=_OldNet)
    try:
        with pytest.raises(KeyError):
            register_converter("test_old_net", convert=dict, matches=lambda keys: False,
                               model_class=_OldNet)
        with pytest.raises(TypeError, match="model_class"):
            register_converter("test_no_class", convert=dict, matches=lambda keys: True,
                               model_class=dict)
        assert registered_converters(_old_net(_OldNetVariant, 1)) == ["test_old_net"]
        for cls in (_OldNet, _OldNetVariant):  # the class and its subclasses
            b = _old_net(cls, 1)
            Checkpointer(b).load(str(tmp_path / "released.pth"))
            _assert_same_weights(a, b)
        # Another model with the same parameter names: the file's keys are left alone.
        other = _net(1)
        assert registered_converters(other) == []
        before = other[0].weight.detach().clone()
        Checkpointer(other).load(str(tmp_path / "released.pth"))
        assert torch.equal(other[0].weight, before)
        assert "old_net.0.{bias, weight}" in logs.text and "unexpected" in logs.text
    finally:
        unregister_converter("test_old_net")


def test_converter_sees_keys_without_ddp_prefix(tmp_path):
    a = _net(0)
    torch.save({"module.old_net." + k: v for k, v in a.state_dict().items()}, tmp_path / "d.pth")
    register_converter("test_old_net_ddp",
                       convert=lambda sd: {k[len("old_net."):]: v for k, v in sd.items()},
                       matches=lambda keys: all(k.startswith("old_net.") for k in keys),
                       model_class=_OldNet)
    try:
        b = _old_net(_OldNet, 1)
        Checkpointer(b).load(str(tmp_path / "d.pth"))
        _assert_same_weights(a, b)
    finally:
        unregister_converter("test_old_net_ddp")


def test_strict_load_names_missing_and_mismatched_keys(tmp_path):
    a = _net(0)
    sd = a.state_dict()
    del sd["2.bias"]
    sd["0.weight"] = torch.zeros(4, 3, 5, 5)
    sd["extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "partial.pth")
    torch.save({"model": sd}, path)
    b = _net(1)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError) as e:
        Checkpointer(b).load(path, checkpointables=[], strict=True)
    msg = str(e.value)
    assert "partial.pth" in msg and "2.bias" in msg and "0.weight" in msg
    assert "(4, 3, 5, 5)" in msg and "MODEL.WEIGHTS_STRICT False" in msg
    assert "1 missing, 1 with another shape" in msg
    for k, v in b.state_dict().items():  # checked before anything was copied
        assert torch.equal(v, before[k]), k
    # Lenient (training init): what fits is loaded, the rest logged.
    Checkpointer(b).load(path, checkpointables=[])
    assert torch.equal(b[2].weight, a[2].weight)

    # A complete file loads strictly; unexpected keys and absent BN counters are fine.
    full = a.state_dict()
    full["extra.weight"] = torch.zeros(1)
    del full["1.num_batches_tracked"]
    torch.save(full, tmp_path / "full.pth")
    c = _net(2)
    Checkpointer(c).load(str(tmp_path / "full.pth"), strict=True)
    assert torch.equal(c[0].weight, a[0].weight)


class _Described(nn.Sequential):
    def __init__(self, width):
        super().__init__(nn.Conv2d(3, width, 1))
        self.width = width

    def architecture(self):
        return {"MODEL.SEM_SEG_HEAD.CONVS_DIM": self.width}


def test_save_stores_the_architecture_and_load_warns_on_another(tmp_path, logs):
    ck = Checkpointer(_Described(3), str(tmp_path), save_to_disk=True)
    ck.save("model_final", iteration=0)
    data = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert data["architecture"] == {"MODEL.SEM_SEG_HEAD.CONVS_DIM": 3}
    # without architecture() nothing is stored
    Checkpointer(_net(0), str(tmp_path / "plain"), save_to_disk=True).save("m")
    assert "architecture" not in torch.load(tmp_path / "plain" / "m.pth", weights_only=True)
    with pytest.raises(IncompatibleCheckpointError):
        Checkpointer(_Described(5)).load(str(tmp_path / "model_final.pth"), strict=True)
    assert "CONVS_DIM=3 in the file, 5 here" in logs.text


def test_periodic_checkpointer_keeps_last_k_across_resume(tmp_path):
    ck = Checkpointer(_net(), str(tmp_path), save_to_disk=True)
    periodic = PeriodicCheckpointer(ck, period=2, max_iter=8, max_to_keep=2)
    for it in range(8):
        periodic.step(it)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000005.pth", "model_0000007.pth", "model_final.pth"]
    assert ck.resume_or_load("", resume=True)["iteration"] == 7

    # a resumed run counts the files already there
    periodic = PeriodicCheckpointer(ck, period=2, max_iter=12, max_to_keep=2)
    for it in range(8, 12):
        periodic.step(it)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000009.pth", "model_0000011.pth", "model_final.pth"]

    # where the checkpointer does not write (other ranks), step is a no-op
    quiet = PeriodicCheckpointer(Checkpointer(_net(), str(tmp_path), save_to_disk=False),
                                 period=1, max_to_keep=1)
    quiet.step(20)
    assert not (tmp_path / "model_0000020.pth").exists()


def test_rename_prefixes_renames_first_match_drops_and_keeps_the_rest():
    from dl_lib.checkpoint import rename_prefixes

    sd = {"a.b.w": 1, "a.c": 2, "fc.w": 3, "other": 4}
    assert rename_prefixes(sd, {"a.b.": "x.", "a.": "y."}, drop=("fc.",)) == {
        "x.w": 1, "y.c": 2, "other": 4}
