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


MASKED_NET = """
import torch
import torch.nn as nn

from dl_lib.layers import MaskedConv2d


class HalfMasked(nn.Module):
    '''A dense 1x1 stem, then a 3x3 MaskedConv2d computed on the top half of the output rows.'''

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1, bias=False)
        self.masked = MaskedConv2d(4, 2, 3, padding=1, bias=False)

    def forward(self, batched_inputs):
        raise NotImplementedError

    def predict_logits(self, x, native_resolution=False):
        y = self.stem(x)
        mask = torch.zeros(y.shape[0], 1, *y.shape[-2:], dtype=torch.bool)
        mask[:, :, : y.shape[-2] // 2] = True
        return self.masked(y, mask)

def build_model(cfg):
    return HalfMasked()
"""


def test_masked_model_counts_active_positions(tmp_path, capsys):
    d = tmp_path / "Group" / "HalfMasked"
    d.mkdir(parents=True)
    (d / "config.py").write_text(textwrap.dedent(CONFIG))
    (d / "net.py").write_text(textwrap.dedent(MASKED_NET))
    assert main(["--playground", str(d), "--convention", "all", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    stem, active = 3 * 4 * 24, 2 * 6          # input 4x6: 2 of 4 rows active
    masked = 4 * 2 * 9 * active
    assert f"Total: {2 * (stem + masked) / 1e9:.6g} ({2 * (stem + masked):,} before scaling)" in out
    assert f"Per image: {(stem + masked) / 1e9:.6g}, {(stem + masked) / 1e9:.6g}" in out
    # the hook conventions price the masked conv by its active positions too
    assert f"({2 * (stem + masked):,} before scaling)" in out.split("Convention: hrnet")[1]
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("|")}
    assert f"{2 * masked / 1e9:.4g}" in rows["masked"]
