"""The embedded street-scene generator: determinism, Cityscapes layout, label consistency."""
import glob
import json
import os
import re

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label

from dl_lib.data import DatasetCatalog, MetadataCatalog
from dl_lib.data.datasets import synthetic
from dl_lib.data.datasets.common import read_mask
from dl_lib.data.mapper import read_image

SIZE = (64, 128)
KINDS = ("leftImg8bit", "gtFine_labelIds", "gtFine_labelTrainIds", "gtFine_instanceIds")


def _gen(root, seed=0, n=(2, 2)):
    return synthetic.generate_synthetic_cityscapes(str(root), n[0], n[1], SIZE, seed, progress=False)


def _files(root):
    return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*.png"), recursive=True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _gen(tmp_path_factory.mktemp("syn") / "a")


def test_deterministic(tiny, tmp_path):
    same = _gen(tmp_path / "b")
    other = _gen(tmp_path / "c", seed=1)
    files = _files(tiny)
    assert files == _files(same) == _files(other) and len(files) == 4 * 4
    for f in files:
        with open(os.path.join(tiny, f), "rb") as a, open(os.path.join(same, f), "rb") as b:
            assert a.read() == b.read(), f
    differs = [f for f in files if open(os.path.join(tiny, f), "rb").read() != open(os.path.join(other, f), "rb").read()]
    assert len(differs) == len(files)


def test_layout_and_label_consistency(tiny):
    pattern = re.compile(r"^(leftImg8bit|gtFine)/(train|val)/([a-z]+)/\3_(\d{6})_(\d{6})_(.+)\.png$")
    stems = {}
    for f in _files(tiny):
        m = pattern.match(f)
        assert m, f
        stems.setdefault((m.group(2), m.group(3), m.group(4), m.group(5)), set()).add(m.group(6))
    assert len(stems) == 4  # 2 train + 2 val images
    for (split, city, seq, frame), kinds in stems.items():
        assert kinds == set(KINDS)
        base = f"{city}_{seq}_{frame}"
        img = read_image(os.path.join(tiny, "leftImg8bit", split, city, base + "_leftImg8bit.png"))
        assert img.shape == SIZE + (3,) and img.dtype == np.uint8
        gt = os.path.join(tiny, "gtFine", split, city, base)
        ids = read_mask(gt + "_gtFine_labelIds.png")
        train = read_mask(gt + "_gtFine_labelTrainIds.png")
        inst = read_mask(gt + "_gtFine_instanceIds.png").astype(np.int64)
        assert ids.shape == train.shape == inst.shape == SIZE
        expected = np.vectorize(lambda i: id2label[int(i)].trainId if id2label[int(i)].trainId not in (-1, 255) else 255)(ids)
        np.testing.assert_array_equal(train, expected)
        has_inst = np.vectorize(lambda i: id2label[int(i)].hasInstances)(ids)
        np.testing.assert_array_equal(inst[has_inst] // 1000, ids[has_inst])
        np.testing.assert_array_equal(inst[~has_inst], ids[~has_inst])
    manifest = json.load(open(os.path.join(tiny, "manifest.json")))
    assert manifest == {"generator_version": synthetic.GENERATOR_VERSION, "seed": 0, "num_train": 2,
                        "num_val": 2, "height": 64, "width": 128}


def test_scenes_cover_most_classes():
    rng_seeds = range(8)
    seen, void = set(), set()
    for i in rng_seeds:
        img, ids, inst = synthetic.render_scene(np.random.default_rng([0, 0, i]), 128, 256)
        seen |= set(np.unique(synthetic.ID_TO_TRAINID[ids]).tolist())
        void |= set(np.unique(ids).tolist())
        # several instances of the same class get distinct ids
    assert len(seen - {255}) >= 16, sorted(seen)
    assert synthetic.STATIC in void or synthetic.EGO in void


def test_ensure_regenerates_only_when_needed(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_train", 1)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "num_val", 1)
    monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, "size", SIZE)
    monkeypatch.setenv("DL_DATASETS", str(tmp_path))
    root = tmp_path / "synthetic_cityscapes"
    # an interrupted earlier run left a temp folder and a root without manifest: both ignored
    os.makedirs(str(root) + ".tmp-123")
    os.makedirs(root / "leftImg8bit")
    dicts = DatasetCatalog.get("synthetic_cityscapes_train")
    assert len(dicts) == 1 and dicts[0]["file_name"].startswith(str(root))
    assert len(DatasetCatalog.get("synthetic_cityscapes_val")) == 1
    manifest = root / "manifest.json"
    t0 = os.path.getmtime(manifest)
    synthetic.ensure_synthetic_cityscapes(progress=False)
    assert os.path.getmtime(manifest) == t0  # reused
    synthetic.ensure_synthetic_cityscapes(seed=3, progress=False)
    assert json.load(open(manifest))["seed"] == 3  # other seed: regenerated
    assert MetadataCatalog.get("synthetic_cityscapes_val").gt_dir.startswith(str(root))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p and p != "synthetic_cityscapes.tmp-123"]


def test_cli(tmp_path, capsys):
    synthetic.main(["--root", str(tmp_path / "cli"), "--num-train", "1", "--num-val", "1",
                    "--size", "32", "64", "--seed", "5"])
    assert json.load(open(tmp_path / "cli" / "manifest.json"))["width"] == 64
    assert len(_files(tmp_path / "cli")) == 8
