"""tools/prepare_voc.py on a tiny VOC 2012 + SBD tree in the releases' formats (palette PNGs,
MATLAB GTcls structs)."""
import os
import re

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from dl_lib.data import DatasetCatalog
from dl_lib.data.datasets.common import read_mask
from dl_lib.data.datasets.voc import voc_palette
from dl_lib.data.prepare.common import PrepareError
from dl_lib.data.prepare.voc import main, prepare_voc, read_sbd_mat

H, W = 6, 8
PALETTE = [c for rgb in voc_palette(256) for c in rgb]


def _mask(seed, boundary=False):
    m = np.random.RandomState(seed).randint(0, 21, size=(H, W)).astype(np.uint8)
    if boundary:
        m[0] = 255  # VOC marks object boundaries 255; SBD has none
    return m


def _tree(root, write_png):
    """VOC: train v1 v2, val v3 (v1..v3 annotated). SBD: train s1 v3, val s2 v2 (v3 is VOC val,
    so it must be left out); s2's image is only in SBD's img/."""
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    rgb = np.zeros((H, W, 3), np.uint8)
    voc_masks, sbd_masks = {}, {}
    for k, i in enumerate(["v1", "v2", "v3"]):
        write_png(voc / "JPEGImages" / f"{i}.jpg", rgb)
        voc_masks[i] = _mask(k, boundary=True)
        write_png(voc / "SegmentationClass" / f"{i}.png", voc_masks[i], mode="P", palette=PALETTE)
    write_png(voc / "JPEGImages" / "s1.jpg", rgb)
    write_png(sbd / "img" / "s2.jpg", rgb)
    os.makedirs(sbd / "cls")
    for k, i in enumerate(["s1", "s2", "v2", "v3"]):
        sbd_masks[i] = _mask(10 + k)
        # SBD's layout: a struct GTcls with Boundaries, Segmentation, CategoriesPresent
        savemat(str(sbd / "cls" / f"{i}.mat"), {"GTcls": {
            "Segmentation": sbd_masks[i], "Boundaries": np.zeros((1, 21), object),
            "CategoriesPresent": np.unique(sbd_masks[i]).astype(np.uint8)}})
    os.makedirs(voc / "ImageSets" / "Segmentation")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("v1\nv2\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("v3\n")
    (sbd / "train.txt").write_text("s1\nv3\n")
    (sbd / "val.txt").write_text("s2\nv2\n")
    return voc, sbd.parent, voc_masks, sbd_masks


def test_read_sbd_mat(datasets_root, write_png, tmp_path):
    _, sbd, _, sbd_masks = _tree(datasets_root, write_png)
    np.testing.assert_array_equal(read_sbd_mat(str(sbd / "dataset" / "cls" / "s1.mat")),
                                  sbd_masks["s1"])
    savemat(str(tmp_path / "inst.mat"), {"GTinst": {"Segmentation": sbd_masks["s1"]}})
    with pytest.raises(PrepareError, match=r"no GTcls.*dataset/cls/, not dataset/inst/"):
        read_sbd_mat(str(tmp_path / "inst.mat"))


@pytest.mark.parametrize("prefer", ["voc", "sbd"])
def test_train_aug_built_and_loaded(datasets_root, write_png, prefer):
    voc, sbd, voc_masks, sbd_masks = _tree(datasets_root, write_png)
    rows, built = prepare_voc(str(voc), str(sbd), prefer=prefer, expect_counts=None)
    # (SBD train ∪ SBD val ∪ VOC train) − VOC val
    expected_ids = ["s1", "s2", "v1", "v2"]
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == expected_ids
    assert built == {"ids": 4, "from_voc": 2 if prefer == "voc" else 1,
                     "from_sbd": 2 if prefer == "voc" else 3, "images_copied": 1}
    assert (voc / "JPEGImages" / "s2.jpg").is_file()
    assert [(r["split"], r["images"]) for r in rows] == [("train", 2), ("val", 1), ("train_aug", 4)]

    dicts = DatasetCatalog.get("voc_2012_sem_seg_train_aug")
    assert [d["image_id"] for d in dicts] == expected_ids
    got = {d["image_id"]: read_mask(d["sem_seg_file_name"]) for d in dicts}
    np.testing.assert_array_equal(got["s1"], sbd_masks["s1"])
    np.testing.assert_array_equal(got["v1"], voc_masks["v1"])  # only VOC has it
    np.testing.assert_array_equal(got["v2"], (voc_masks if prefer == "voc" else sbd_masks)["v2"])


def test_official_counts_mismatch(datasets_root, write_png, capsys):
    voc, sbd, _, _ = _tree(datasets_root, write_png)
    assert main(["--root", str(voc), "--sbd", str(sbd)]) == 1
    err = capsys.readouterr().err
    assert "lists 2 ids, the release has 8498" in err and "train.txt" in err
    assert "--expect-counts off" in err
    # the VOC splits against their own numbers: 2 of 1464
    with pytest.raises(PrepareError, match=r"train: found 2 images, the official release has 1464"):
        prepare_voc(str(voc), None)
    # explicit counts pass where they hold
    assert main(["--root", str(voc), "--sbd", str(sbd), "--expect-counts",
                 "train=2,val=1,train_aug=4"]) == 0
    out = capsys.readouterr().out
    # the table row: images found, images expected
    assert re.search(r"\| train_aug \|\s+4 \|\s+4 \| 0-20", out), out
    assert "labels from VOC 2, from SBD 2; 1 images copied from SBD" in out


def test_bad_label_named(datasets_root, write_png):
    voc, sbd, _, _ = _tree(datasets_root, write_png)
    bad = np.full((H, W), 3, np.uint8)
    bad[2, 2] = 40
    Image.fromarray(bad, mode="L").save(voc / "SegmentationClass" / "v3.png")
    with pytest.raises(PrepareError, match=r"v3\.png' holds value\(s\) \[40\] outside the "
                                           r"allowed 0-20, 255.*RGB"):
        prepare_voc(str(voc), str(sbd), expect_counts=None)
