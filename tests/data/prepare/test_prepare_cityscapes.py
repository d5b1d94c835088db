"""tools/prepare_cityscapes.py on a tiny tree with the download's polygons json, and the shared
check helpers."""
import json

import numpy as np
import pytest

from dl_lib.data import DatasetCatalog
from dl_lib.data.datasets.common import read_mask
from dl_lib.data.prepare.cityscapes import main, prepare_cityscapes
from dl_lib.data.prepare.common import PrepareError, format_values, parse_expect_counts

H, W = 16, 32


def _tree(root, write_png, image_w=W):
    """train: aachen (road below, a car on it); val: frankfurt (sky above)."""
    cs = root / "cityscapes"
    for split, city, objects in (
            ("train", "aachen", [
                {"label": "road", "polygon": [[0, 8], [31, 8], [31, 15], [0, 15]]},
                {"label": "car", "polygon": [[4, 9], [12, 9], [12, 14], [4, 14]]}]),
            ("val", "frankfurt", [
                {"label": "sky", "polygon": [[0, 0], [31, 0], [31, 6], [0, 6]]}])):
        stem = f"{city}_000000_000019"
        write_png(cs / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                  np.zeros((H, image_w, 3), np.uint8))
        gt = cs / "gtFine" / split / city
        gt.mkdir(parents=True)
        (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps(
            {"imgHeight": H, "imgWidth": W, "objects": objects}))
    return cs


def test_train_ids_drawn_and_loaded(datasets_root, write_png, capsys):
    cs = _tree(datasets_root, write_png)
    rows, written = prepare_cityscapes(str(cs), splits=("train", "val"), expect_counts=None,
                                       num_workers=1)
    assert written == 2
    mask = read_mask(str(cs / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"))
    # trainIds: road 0, car 13, the rest unlabeled (255); the car is drawn over the road
    assert mask[12, 20] == 0 and mask[11, 8] == 13 and mask[2, 2] == 255
    assert set(np.unique(mask)) == {0, 13, 255}
    assert [(r["split"], r["images"], r["label values"]) for r in rows] == [
        ("train", 1, "0, 13, 255"), ("val", 1, "10, 255")]  # sky = 10
    assert len(DatasetCatalog.get("cityscapes_fine_sem_seg_train")) == 1
    # existing masks are kept
    assert prepare_cityscapes(str(cs), ("train", "val"), None, num_workers=1)[1] == 0


def test_counts_and_sizes(datasets_root, write_png, capsys):
    cs = _tree(datasets_root, write_png)
    assert main(["--root", str(cs)]) == 1
    assert "train: found 1 images, the official release has 2975" in capsys.readouterr().err
    cs2 = _tree(datasets_root / "wide", write_png, image_w=W + 4)
    with pytest.raises(PrepareError,
                       match=r"labelTrainIds\.png' is 32x16 but its image .* is 36x16"):
        prepare_cityscapes(str(cs2), ("train",), None, num_workers=1)
    with pytest.raises(PrepareError, match=r"no gtFine/<split>/<city>/\*_gtFine_polygons.json"):
        prepare_cityscapes(str(datasets_root), ("train",), None)


def test_parse_expect_counts_and_values():
    official = {"train": 10, "val": 2}
    assert parse_expect_counts("official", official) == official
    assert parse_expect_counts("off", official) is None
    assert parse_expect_counts("val=3", official) == {"val": 3}
    with pytest.raises(PrepareError, match=r"SPLIT in \['train', 'val'\].*train=10,val=2"):
        parse_expect_counts("test=3", official)
    assert format_values([255, 0, 1, 2, 5, 7, 6]) == "0-2, 5-7, 255"


def test_train_ids_in_worker_processes(datasets_root, write_png):
    from dl_lib.data.prepare.cityscapes import create_train_id_masks

    cs = datasets_root / "cityscapes"
    gt = cs / "gtFine" / "train" / "bonn"
    gt.mkdir(parents=True)
    for k in range(8):  # 8 files: enough for the process pool
        (gt / f"bonn_{k:06d}_000019_gtFine_polygons.json").write_text(json.dumps(
            {"imgHeight": H, "imgWidth": W,
             "objects": [{"label": "sky", "polygon": [[0, 0], [31, 0], [31, k], [0, k]]}]}))
    assert create_train_id_masks(str(cs), num_workers=2) == 8
    mask = read_mask(str(gt / "bonn_000007_000019_gtFine_labelTrainIds.png"))
    assert mask[3, 3] == 10 and mask[12, 3] == 255  # sky above row 7, unlabeled below
    assert not list(gt.glob("*.tmp.png"))
