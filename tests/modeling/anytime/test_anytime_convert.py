"""Released ADP-C checkpoints: random weights written in the released layout (keys and shapes
from the key dump, ``model.`` prefix, ``loss.criterion.weight``) load strictly through the
Checkpointer and ``tools/convert_checkpoint.py``, land where the names say, and give the
per-exit logits of the original's computation (``anytime_original_reference.py``) with mixed
masks; files of another setting stop with the keys that differ."""
import importlib.util
import os
import textwrap

import pytest
import torch

from dl_lib.checkpoint import Checkpointer, IncompatibleCheckpointError, find_converter
from dl_lib.modeling.anytime.convert import convert_released, is_released_layout, to_released

from anytime_helpers import REPO, build, images, max_prob, random_released_weights, read_key_dump
from anytime_original_reference import original_forward


def _ours(key):
    name = key[len("model."):]
    top = "head." if name.startswith(("exit1.", "exit2.", "exit3.", "last_layer.")) else "backbone."
    return top + name


def _save(sd, path):
    torch.save(sd, path)  # released files are flat state dicts
    return str(path)


def _load(setting, path, **kw):
    model = build(setting, **kw)
    Checkpointer(model).load(path, checkpointables=[], strict=True)
    return model.eval()


def _rel_err(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


# the exit classifiers in the released layout (flex heads: the last index of section 2.2)
CLASSIFIERS = {"exit1": "model.exit1.21", "exit2": "model.exit2.13", "exit3": "model.exit3.5",
               "last_layer": "model.last_layer.3"}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A W18 ADP-C (RH+CA) file in the released layout. Its exit classifiers are scaled so that
    every exit's logits have the same spread, wide enough that a threshold at a quantile of the
    confidence leaves part of the image confident after each exit (mixed masks)."""
    entries, _ = read_key_dump("w18_RHCA")
    sd = random_released_weights(entries, seed=3)
    folder = tmp_path_factory.mktemp("released")
    model = _load("w18_RHCA", _save(sd, folder / "unscaled.pth"), channels_last=False)
    with torch.no_grad():
        logits, _ = model.forward_exits(images(2, 64, 128))
    for prefix, z in zip(CLASSIFIERS.values(), logits):
        scale = 3.0 / float(z.std(dim=1).mean())
        for name in ("weight", "bias"):
            sd[f"{prefix}.{name}"] = sd[f"{prefix}.{name}"] * scale
    return sd, _save(sd, folder / "adpc_w18.pth")


@pytest.fixture(scope="module")
def released_model(released):
    sd, path = released
    model = _load("w18_RHCA", path, channels_last=False)
    x = images(2, 64, 128)
    with torch.no_grad():
        dense, _ = model.forward_exits(x)
    model.threshold = float(max_prob(dense[0]).quantile(0.7))
    return model, x


def test_released_layout_is_recognised_and_lands_where_the_names_say(released, released_model):
    sd, _ = released
    model, _ = released_model
    assert is_released_layout(sd.keys()) and not is_released_layout(model.state_dict().keys())
    assert find_converter(sd.keys(), model).name == "anytime_released"
    assert find_converter(model.state_dict().keys(), model) is None  # ours pass unchanged
    loaded = model.state_dict()
    assert len(loaded) == len(sd) - 1  # all but the loss's class weights
    for key, value in sd.items():
        if key != "loss.criterion.weight":
            assert torch.equal(loaded[_ours(key)], value), key
    # a DDP-wrapped file and the inverse mapping
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    assert is_released_layout(wrapped.keys())
    assert list(convert_released(wrapped)) == list(convert_released(sd))
    back = to_released(convert_released(sd), sd["loss.criterion.weight"])
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_logits_equal_the_original_forward_with_mixed_masks(released_model):
    model, x = released_model
    with torch.no_grad():
        ours, info = model.forward_exits(x, report=True)
    fractions = [float(m.float().mean()) for m in info["masks"]]
    assert all(0.02 < f < 0.98 for f in fractions), fractions  # masks are mixed
    assert fractions == sorted(fractions, reverse=True)
    ref = original_forward(model, x)
    for k, (o, r) in enumerate(zip(ours, ref), start=1):
        assert _rel_err(o, r) < 1e-4, f"exit {k}: {_rel_err(o, r):.2e}"
    # not a tautology: the original computation with other Lambdas differs
    lam = model.backbone.stage2[0].branches[0][0].conv1.Lambda
    with torch.no_grad():
        lam.mul_(0.3)
        try:
            other = original_forward(model, x)
        finally:
            lam.div_(0.3)
    assert _rel_err(ours[3], other[3]) > 1e-3


def test_channels_last_inference_equals_the_original_too(released, released_model):
    """The default layout on the CPU (channels-last with masks), where the inference-only
    paths run: the same logits."""
    model, x = released_model
    cl = _load("w18_RHCA", released[1], channels_last=True)
    cl.threshold = model.threshold
    with torch.no_grad():
        ours, _ = cl.forward_exits(x)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for k, (o, r) in enumerate(zip(ours, original_forward(model, x)), start=1):
        assert _rel_err(o, r) < 1e-4, f"exit {k}: {_rel_err(o, r):.2e}"


def test_eval_outputs_of_the_loaded_file(released_model):
    """Through the segmentor contract (uint8 RGB in, per-exit logits out): the same logits."""
    model, _ = released_model
    gen = torch.Generator().manual_seed(5)
    img = torch.randint(0, 256, (3, 64, 128), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": img, "height": 64, "width": 128}])[0]
        x = (img.float() - model.pixel_mean) / model.pixel_std
        ref = original_forward(model, x[None])
    assert len(out["sem_seg_exits"]) == 4 and torch.equal(out["sem_seg"], out["sem_seg_exits"][3])
    for k, (o, r) in enumerate(zip(out["sem_seg_exits"], ref)):
        r = torch.nn.functional.interpolate(r, size=(64, 128), mode="bilinear",
                                            align_corners=False)[0]
        assert _rel_err(o, r) < 1e-4, f"exit {k}"


def test_our_checkpoint_round_trip(released_model, tmp_path):
    model, x = released_model
    Checkpointer(model, str(tmp_path)).save("ours")
    again = _load("w18_RHCA", str(tmp_path / "ours.pth"), channels_last=False)
    again.threshold = model.threshold
    with torch.no_grad():
        a, _ = model.forward_exits(x)
        b, _ = again.forward_exits(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_ee_file_into_rh_model_stops_naming_the_heads(tmp_path):
    entries, _ = read_key_dump("w18_EE")
    path = _save(random_released_weights(entries), tmp_path / "ee.pth")
    with pytest.raises(IncompatibleCheckpointError, match=r"missing.*head\.exit1\.(5|9|13)"):
        _load("w18_RH", path)
    _load("w18_EE", path)  # the right setting loads


def test_rh_file_into_adpc_model_stops_naming_lambda(tmp_path):
    entries, _ = read_key_dump("w18_RH")
    path = _save(random_released_weights(entries), tmp_path / "rh.pth")
    with pytest.raises(IncompatibleCheckpointError, match=r"missing.*Lambda"):
        _load("w18_RHCA", path)


def test_adpc_file_into_unmasked_model_stops(released):
    _, path = released
    with pytest.raises(IncompatibleCheckpointError, match=r"MODEL.MASK.USE True"):
        _load("w18_RH", path)


# ----------------------------------------------------------------------------- the convert tool
def _tool():
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint_anytime", os.path.join(REPO, "tools", "convert_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _adpc_playground(root):
    folder = root / "Anytime" / "W18.ADP_C.Test"
    folder.mkdir(parents=True)
    (folder / "config.py").write_text(textwrap.dedent("""\
        from dl_lib.config import config_from_delta
        config = config_from_delta(dict(MODEL=dict(
            DEVICE="cpu", META_ARCHITECTURE="AnytimeSegmentor",
            BACKBONE=dict(NAME="hrnet_w18_small_v2"), EXIT=dict(TYPE="flex"),
            MASK=dict(USE=True))), family="anytime")
        """))
    (folder / "net.py").write_text(textwrap.dedent("""\
        import dl_lib.modeling.anytime  # noqa: F401
        from dl_lib.modeling import build_model as _build_model

        def build_model(cfg):
            return _build_model(cfg)
        """))
    return str(folder)


def test_convert_tool(released, tmp_path, capsys):
    sd, path = released
    tool = _tool()
    playground = _adpc_playground(tmp_path)
    out = str(tmp_path / "converted.pth")
    assert tool.main([path, out, "--playground", playground]) == 0
    printed = capsys.readouterr().out
    assert "anytime_released" in printed and f"{len(sd) - 1} tensors written" in printed
    data = torch.load(out, weights_only=True)
    model = build("w18_RHCA")
    assert find_converter(data["model"].keys(), model) is None
    Checkpointer(model).load(out, checkpointables=[], strict=True)
    state = model.state_dict()
    assert all(torch.equal(state[_ours(k)], v) for k, v in sd.items() if k.startswith("model."))
    # a file of another setting: named, nothing written
    entries, _ = read_key_dump("w18_EE")
    ee = _save(random_released_weights(entries), tmp_path / "ee.pth")
    assert tool.main([ee, str(tmp_path / "bad.pth"), "--playground", playground]) == 2
    assert "head.exit1" in capsys.readouterr().err
    assert not (tmp_path / "bad.pth").exists()
