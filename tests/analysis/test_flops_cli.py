"""dl_flops on a tiny playground folder written to tmp_path."""
import textwrap

import pytest

from dl_lib.tools.flops import main

CONFIG = """
from dl_lib.config import config_from_delta
config = config_from_delta(dict(MODEL=dict(DEVICE="cpu"), INPUT=dict(FIX_SIZE_FOR_FLOPS=[4, 6])))
"""

NET = """
import torch.nn as nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, batched_inputs):
        raise NotImplementedError

    def predict_logits(self, x, native_resolution=False):
        return self.conv(x)

def build_model(cfg):
    return Tiny()
"""


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "Group" / "Tiny"
    d.mkdir(parents=True)
    (d / "config.py").write_text(textwrap.dedent(CONFIG))
    (d / "net.py").write_text(textwrap.dedent(NET))
    return d


def test_default_size_from_config(folder, capsys):
    assert main(["--playground", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "Input size: 1x3x4x6" in out
    assert "Convention: gmac" in out
    assert f"Total: {3 * 2 * 24 / 1e9:.6g} (144 before scaling)" in out
    assert "Parameters: 8 total" in out and "conv" in out


def test_size_all_conventions_and_opts(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)  # run from inside the playground, as users do
    assert main(["--size", "8", "8", "--convention", "all", "INPUT.FIX_SIZE_FOR_FLOPS",
                 "[2, 2]"]) == 0
    out = capsys.readouterr().out
    assert "Input size: 1x3x8x8" in out
    for conv in ("gmac", "hrnet", "dynamic_routing"):
        assert f"Convention: {conv}" in out
    # dynamic_routing counts the bias: (3 + 1) * 2 * 64
    assert "Total: 5.12e-07 (512 before scaling)" in out


def test_flag_after_opts_rejected(folder):
    with pytest.raises(SystemExit):
        main(["--playground", str(folder), "MODEL.DEVICE", "cpu", "--size", "2", "2"])
