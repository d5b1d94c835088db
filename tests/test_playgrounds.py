"""Every ``playground/<Group>/<Name>`` builds and runs a forward/backward pass on CPU (timm-style).

Generated from the folders on disk, so a new playground is tested by existing. Inputs are tiny
(64×96) to keep this fast; ``MODEL.DEVICE`` is forced to cpu.
"""
import glob
import os

import pytest
import torch

from dl_lib import playground

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYGROUNDS = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(REPO, "playground", "*", "*", "net.py")))


def _ids():
    return [os.path.relpath(p, os.path.join(REPO, "playground")) for p in PLAYGROUNDS]


def test_playgrounds_exist():
    names = _ids()
    assert "Baseline/FPN.R18" in names
    assert any(n.startswith("Quickstart/") for n in names)


@pytest.mark.parametrize("folder", PLAYGROUNDS, ids=_ids())
def test_playground_builds_and_runs(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path))
    torch.manual_seed(0)
    cfg, model = playground.build(folder, ["MODEL.DEVICE", "cpu"])
    assert cfg.OUTPUT_DIR.startswith(str(tmp_path))
    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    batch = [{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8), "height": 70, "width": 101,
              "sem_seg": torch.randint(0, k, (64, 96))} for _ in range(2)]

    model.train()
    outputs = model(batch)
    # Keys not starting with "loss" are scalars the trainer only logs (CONTRACTS.md "Model").
    losses = {name: v for name, v in outputs.items() if name.startswith("loss")}
    assert losses and all(torch.is_tensor(v) for v in losses.values())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()

    model.eval()
    with torch.no_grad():
        out = model(batch)
        logits = model.predict_logits(torch.randn(1, 3, 64, 96))
    assert [o["sem_seg"].shape for o in out] == [(k, 70, 101)] * 2
    last = logits[-1] if isinstance(logits, list) else logits
    assert last.shape == (1, k, 64, 96)
