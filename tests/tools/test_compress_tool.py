"""tools/compress.py end to end on a tiny pruning playground (the fixture's toy segmentor with a
residual conv body, masks in the original placement): masked checkpoint -> compressed checkpoint
with architecture MODEL.PRUNING.CHANNELS -> rebuilt by the playground and evaluated by dl_test."""
import importlib.util
import json
import os
import shutil

import torch

from dl_lib import playground
from dl_lib.checkpoint import Checkpointer
from dl_lib.modeling.pruning import channel_masks
from dl_lib.tools import train_net

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "playground", "Toy", "Tiny")

_CONFIG = '''from dl_lib.config import config_from_delta

config = config_from_delta(dict(
    MODEL=dict(DEVICE="cpu", SEM_SEG_HEAD=dict(NUM_CLASSES=2),
               PRUNING=dict(ENABLED=True, SPARSITY=0.5, MIN_CHANNELS=2, HARD_MASKS=True)),
    DATASETS=dict(TRAIN=("toy_tiny_train",), TEST=("toy_tiny_val",)),
    DATALOADER=dict(NUM_WORKERS=0),
    SOLVER=dict(IMS_PER_BATCH=2, LR_SCHEDULER=dict(MAX_ITER=2)),
    SEED=0,
), family="pruning")
'''

_NET_TAIL = '''

from dl_lib.modeling.pruning import prepare_model


class ResidualBody(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.cls = nn.Conv2d(16, num_classes, 1)
        self.cls.unprunable = True

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.cls(F.relu(x + self.bn2(self.conv2(x))))


def build_model(cfg):
    model = TinySegmentor(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.PIXEL_MEAN,
                          cfg.MODEL.PIXEL_STD, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    model.body = ResidualBody(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    return prepare_model(cfg, model)
'''


def _tool():
    spec = importlib.util.spec_from_file_location("compress_tool", os.path.join(ROOT, "tools",
                                                                                 "compress.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _playground(tmp_path):
    folder = tmp_path / "playground" / "ToyPruned" / "Tiny"
    folder.mkdir(parents=True)
    (folder / "config.py").write_text(_CONFIG)
    shutil.copy(os.path.join(FIXTURE, "net.py"), folder / "net.py")
    with open(folder / "net.py", "a") as f:
        f.write(_NET_TAIL)
    return str(folder)


def test_compress_tool_writes_a_checkpoint_dl_test_rebuilds(tmp_path, monkeypatch, capsys,
                                                            one_thread):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    monkeypatch.setenv("TOY_DATA_ROOT", str(tmp_path / "toy_data"))
    folder = _playground(tmp_path)
    torch.manual_seed(0)
    cfg, masked = playground.build(folder)
    masks = channel_masks(masked)
    assert len(masks) == 2 and all(m.is_hard for m in masks.values())
    g = torch.Generator().manual_seed(0)
    for m in masked.modules():  # nonzero constants in the pruned channels
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(16, generator=g))
            m.bias.data.copy_(torch.randn(16, generator=g))
    Checkpointer(masked, save_dir=str(tmp_path / "run")).save("masked")
    weights, out = str(tmp_path / "run" / "masked.pth"), str(tmp_path / "small" / "small.pth")

    assert _tool().main(["--playground", folder, "--weights", weights, "--output", out,
                         "--size", "32", "64", "--runs", "1", "--warmup", "0", "--depth", "2",
                         "--trace-size", "24"]) == 0
    printed = capsys.readouterr().out
    assert "| module" in printed and "body.conv1" in printed and "total" in printed
    saved = torch.load(out, map_location="cpu", weights_only=True)
    entries = saved["architecture"]["MODEL.PRUNING.CHANNELS"]
    # conv1's output and conv2's branch are one residual stream: the union of both masks stays.
    keep = [m.keep_mask() for m in channel_masks(masked).values()]
    width = int((keep[0] | keep[1]).sum())
    assert 8 < width < 16
    assert entries[:2] == [f"body.conv1=3,{width}", f"body.bn1={width},{width}"]
    assert f"body.cls={width},2" in entries
    assert "MODEL.PRUNING.HARD_MASKS" not in saved["architecture"]

    # The playground rebuilds the smaller network from the checkpoint alone.
    _, rebuilt = playground.build(folder, ["MODEL.WEIGHTS", out])
    Checkpointer(rebuilt).load(out, checkpointables=[], strict=True)
    assert not channel_masks(rebuilt) and rebuilt.body.conv1.out_channels == width
    masked.eval(), rebuilt.eval()
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt.predict_logits(x), masked.predict_logits(x), atol=1e-5)

    train_net.main_test(["--playground", folder, "MODEL.WEIGHTS", out])
    train_net.main_test(["--playground", folder, "MODEL.WEIGHTS", weights])
    inference = tmp_path / "output" / "ToyPruned" / "Tiny" / "inference"
    small_result, masked_result = (json.loads((inference / name / "results.json").read_text())[
        "toy_tiny_val"]["sem_seg"] for name in ("small", "masked"))
    assert small_result["mIoU"] == masked_result["mIoU"]
    assert small_result["pACC"] == masked_result["pACC"]
