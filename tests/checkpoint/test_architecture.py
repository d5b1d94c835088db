"""A checkpoint carries its architecture: saved by Checkpointer, merged into the config before
building (apply_checkpoint_architecture, playground.build), so the narrower network is rebuilt
and loads strictly."""
import textwrap

import pytest
import torch
from torch import nn

from dl_lib import playground
from dl_lib.checkpoint import (
    Checkpointer,
    IncompatibleCheckpointError,
    apply_checkpoint_architecture,
    architecture_overrides,
)
from dl_lib.config import ConfigError, get_cfg
from dl_lib.tools import flops


class _Narrowable(nn.Module):
    """Width from MODEL.SEM_SEG_HEAD.CONVS_DIM, as a physically pruned head would have."""

    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 1)
        self.cls = nn.Conv2d(width, 2, 1)

    def architecture(self):
        return {"MODEL.SEM_SEG_HEAD.CONVS_DIM": self.conv.out_channels}


def _build(cfg):
    return _Narrowable(cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM)


def _save_narrow(folder, width=4):
    torch.manual_seed(0)
    model = _Narrowable(width)
    Checkpointer(model, str(folder), save_to_disk=True).save("compressed")
    return model, str(folder / "compressed.pth")


def test_rebuilt_from_a_config_with_the_other_width(tmp_path):
    narrow, path = _save_narrow(tmp_path)
    cfg = get_cfg()
    cfg.MODEL.WEIGHTS = path
    assert cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == 128
    # Without the stored architecture, the config's width does not fit the file.
    with pytest.raises(IncompatibleCheckpointError, match="conv.weight"):
        Checkpointer(_build(cfg)).load(path, strict=True)

    cfg.freeze()  # a frozen config is merged and stays frozen
    changes = apply_checkpoint_architecture(cfg)
    assert changes == {"MODEL.SEM_SEG_HEAD.CONVS_DIM": (128, 4)}
    assert cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == 4 and cfg.is_frozen()
    rebuilt = _build(cfg)
    Checkpointer(rebuilt).load(path, strict=True)
    assert torch.equal(rebuilt.cls.weight, narrow.cls.weight)
    assert apply_checkpoint_architecture(cfg) == {}  # nothing left to change


def test_playground_build_and_dl_flops_apply_the_weights_architecture(tmp_path, capsys):
    folder = tmp_path / "Group" / "Narrow"
    folder.mkdir(parents=True)
    (folder / "config.py").write_text(textwrap.dedent("""
        from dl_lib.config import config_from_delta
        config = config_from_delta(dict(MODEL=dict(SEM_SEG_HEAD=dict(CONVS_DIM=16))))
    """))
    (folder / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        class Narrowable(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.conv = nn.Conv2d(3, width, 1)

            def architecture(self):
                return {"MODEL.SEM_SEG_HEAD.CONVS_DIM": self.conv.out_channels}

            def predict_logits(self, x, native_resolution=False):
                return self.conv(x)

            forward = predict_logits

        def build_model(cfg):
            return Narrowable(cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM)
    """))
    _, model = playground.build(str(folder), ["OUTPUT_DIR", str(tmp_path / "out")])
    assert model.conv.out_channels == 16
    Checkpointer(model, str(tmp_path / "out"), save_to_disk=True).save("full")
    small = type(model)(3)  # a "pruned" 3-channel model, saved as its own file
    Checkpointer(small, str(tmp_path / "out"), save_to_disk=True).save("pruned")
    pruned = str(tmp_path / "out" / "pruned.pth")
    cfg, rebuilt = playground.build(str(folder), ["MODEL.WEIGHTS", pruned])
    assert rebuilt.conv.out_channels == 3 and cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == 3
    Checkpointer(rebuilt).load(cfg.MODEL.WEIGHTS, strict=True)
    # dl_flops counts the network the file holds (3*3 + 3 parameters), not the config's.
    capsys.readouterr()
    flops.main(["--playground", str(folder), "--size", "8", "8", "MODEL.WEIGHTS", pruned])
    assert "Parameters: 12 total" in capsys.readouterr().out


def test_stored_key_the_config_lacks_names_key_and_file(tmp_path):
    class Odd(_Narrowable):
        def architecture(self):
            return {"MODEL.SEM_SEG_HEAD.CONV_DIMS": 4}

    Checkpointer(Odd(4), str(tmp_path), save_to_disk=True).save("odd")
    cfg = get_cfg()
    cfg.MODEL.WEIGHTS = str(tmp_path / "odd.pth")
    with pytest.raises(ConfigError, match=r"CONV_DIMS.*odd\.pth.*CONVS_DIM"):
        apply_checkpoint_architecture(cfg)


def test_no_architecture_no_weights_missing_file(tmp_path):
    Checkpointer(nn.Conv2d(3, 4, 1), str(tmp_path), save_to_disk=True).save("plain")
    assert architecture_overrides(str(tmp_path / "plain.pth")) == {}
    torch.save(nn.Conv2d(3, 4, 1).state_dict(), tmp_path / "bare.pth")
    assert architecture_overrides(str(tmp_path / "bare.pth")) == {}
    assert apply_checkpoint_architecture(get_cfg()) == {}  # no MODEL.WEIGHTS
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        architecture_overrides(str(tmp_path / "nope.pth"))


def test_architecture_must_hold_config_keys_and_plain_values(tmp_path):
    class Bad(_Narrowable):
        def architecture(self):
            return {"MODEL.SEM_SEG_HEAD.CONVS_DIM": torch.tensor(4)}

    with pytest.raises(TypeError, match="CONVS_DIM"):
        Checkpointer(Bad(4), str(tmp_path), save_to_disk=True).save("bad")


def test_weights_none_means_no_architecture_to_apply():
    from dl_lib.checkpoint import apply_checkpoint_architecture
    from dl_lib.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.WEIGHTS = "none"
    assert apply_checkpoint_architecture(cfg) == {}
