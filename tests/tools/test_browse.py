"""dl_browse on the embedded street scenes through the FPN quickstart playground's pipeline."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from dl_lib import playground
from dl_lib.data import MetadataCatalog
from dl_lib.tools.browse import TITLE_HEIGHT, main, training_samples
from dl_lib.utils import visualizer as vis

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYGROUND = os.path.join(REPO, "playground", "Quickstart", "FPN.R18W32.Synthetic")


@pytest.fixture
def small_street_scenes(tmp_path, monkeypatch):
    from dl_lib.data.datasets import synthetic

    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    for key, value in dict(num_train=6, num_val=2, size=(64, 128)).items():
        monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, key, value)


def test_browse_writes_panels(small_street_scenes, tmp_path, capsys):
    out = tmp_path / "browse"
    assert main(["--playground", PLAYGROUND, "--num-samples", "3", "--output", str(out)]) == 0
    paths = sorted(str(out / f) for f in os.listdir(out))
    printed = capsys.readouterr().out
    assert len(paths) == 3 and all(p in printed for p in paths)

    cfg = playground.load_config(PLAYGROUND)
    # the playground resizes the short side to MIN_SIZE_TRAIN (128) and does not crop: 1:2 scenes
    h = cfg.INPUT.MIN_SIZE_TRAIN[0]
    w = 2 * h
    (sample,) = training_samples(cfg, 1)
    assert tuple(sample["image"].shape) == (3, h, w)
    label = sample["sem_seg"].numpy()
    image = sample["image"].permute(1, 2, 0).numpy()
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    colors = vis.palette(19, meta.stuff_colors)

    panel = np.asarray(Image.open(paths[0]).convert("RGB"))
    present = [c for c in np.unique(label) if c != 255]
    entries = len(present) + int((label == 255).any())
    rows = math.ceil(entries / ((2 * w) // 110))  # legend entries are 110 px wide
    assert panel.shape == (TITLE_HEIGHT + h + 14 * rows, 2 * w, 3)
    body = panel[TITLE_HEIGHT:TITLE_HEIGHT + h]
    np.testing.assert_array_equal(body[:, :w], image)  # the first sample, as the model gets it
    # right half: half image, half the class colour (ignored pixels: half black)
    c = present[0]
    ys, xs = np.nonzero(label == c)
    want = image[ys, xs].astype(np.float32) * 0.5 + colors[c].astype(np.float32) * 0.5
    want = want.astype(np.uint8)
    np.testing.assert_array_equal(body[ys, xs + w], want)
    legend = panel[TITLE_HEIGHT + h:].reshape(-1, 3)
    for c in present:  # each class present has its swatch in the legend
        assert (legend == colors[c]).all(axis=1).any(), meta.stuff_classes[c]
