"""The tools/prepare_*.py scripts run their library module's main (as `python tools/X.py`)."""
import os
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ["prepare_cityscapes", "prepare_ade20k", "prepare_voc", "prepare_pascal_context",
         "prepare_camvid"]


def _run(tool, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(REPO, "tools", f"{tool}.py"), run_name="__main__")
    return e.value.code


@pytest.mark.parametrize("tool", TOOLS)
def test_help(tool, monkeypatch, capsys):
    assert _run(tool, ["--help"], monkeypatch) == 0
    assert "--expect-counts" in capsys.readouterr().out


def test_camvid_script_on_a_tree(tmp_path, monkeypatch, capsys):
    root = tmp_path / "CamVid"
    for split in ("train", "val", "test"):
        for folder, array in ((split, np.zeros((4, 6, 3), np.uint8)),
                              (split + "annot", np.full((4, 6), 11, np.uint8))):
            os.makedirs(root / folder)
            Image.fromarray(array).save(root / folder / "0001TP_006690.png")
    assert _run("prepare_camvid", ["--root", str(root)], monkeypatch) == 1
    assert "found 1 images, the official release has 367" in capsys.readouterr().err
    assert _run("prepare_camvid", ["--root", str(root), "--expect-counts", "off"], monkeypatch) == 0
    assert "CamVid at" in capsys.readouterr().out
    assert (root / "testannot_trainIds" / "0001TP_006690.png").is_file()
