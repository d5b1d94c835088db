"""Loaders on tiny trees written in the datasets' real formats."""
import os

import numpy as np
import pytest

from dl_lib.data import DatasetCatalog, MetadataCatalog, register_sem_seg
from dl_lib.data.datasets.common import read_mask
from dl_lib.data.datasets.voc import voc_palette

RGB = np.zeros((6, 8, 3), np.uint8)


def _cityscapes_tree(root, write_png, split="train", mask=None, trainids=True):
    for city, k in (("aachen", 0), ("bonn", 1)):
        stem = f"{city}_{k:06d}_000019"
        write_png(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", RGB)
        # the download holds labelIds; trainIds are made by csCreateTrainIdLabelImgs
        write_png(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                  np.full((6, 8), 7, np.uint8))
        if trainids:
            m = np.full((6, 8), 0 if k == 0 else 255, np.uint8) if mask is None else mask
            write_png(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", m)


def test_cityscapes_loads(datasets_root, write_png):
    _cityscapes_tree(datasets_root, write_png, "val")
    dicts = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    assert [d["image_id"] for d in dicts] == ["aachen_000000_000019", "bonn_000001_000019"]
    assert dicts[0]["sem_seg_file_name"].endswith("aachen_000000_000019_gtFine_labelTrainIds.png")
    assert os.path.isfile(dicts[1]["file_name"])
    # gt_dir follows $DL_DATASETS at use time
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").gt_dir == str(datasets_root / "cityscapes/gtFine/val")


def test_cityscapes_missing_trainids(datasets_root, write_png):
    _cityscapes_tree(datasets_root, write_png, "train", trainids=False)
    with pytest.raises(FileNotFoundError, match="csCreateTrainIdLabelImgs") as e:
        DatasetCatalog.get("cityscapes_fine_sem_seg_train")
    assert "CITYSCAPES_DATASET" in str(e.value) and "aachen_000000_000019_gtFine_labelTrainIds.png" in str(e.value)


def test_cityscapes_labelids_instead_of_trainids(datasets_root, write_png):
    mask = np.full((6, 8), 7, np.uint8)
    mask[:3] = 26  # car as a labelId
    _cityscapes_tree(datasets_root, write_png, "train", mask=mask)
    with pytest.raises(ValueError, match=r"\[26\].*labelIds") as e:
        DatasetCatalog.get("cityscapes_fine_sem_seg_train")
    assert "aachen_000000_000019_gtFine_labelTrainIds.png" in str(e.value)


@pytest.mark.parametrize("name,section,path", [
    ("cityscapes_fine_sem_seg_train", "Cityscapes", "cityscapes"),
    ("ade20k_sem_seg_val", "ADE20K", "ADEChallengeData2016"),
    ("voc_2012_sem_seg_val", "Pascal VOC 2012", "VOCdevkit/VOC2012"),
    ("pascal_context_59_sem_seg_val", "Pascal Context", "VOCdevkit/VOC2010"),
    ("camvid_sem_seg_val", "CamVid", "CamVid"),
])
def test_missing_root_error(datasets_root, name, section, path):
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert os.path.join(str(datasets_root), path) in msg and "$DL_DATASETS" in msg
    assert f"section '{section}'" in msg and "datasets/README.md" in msg


def test_ade20k_shift_and_ignore(datasets_root, write_png):
    root = datasets_root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        write_png(root / "images" / split / "ADE_x_0001.jpg", RGB)
        write_png(root / "annotations" / split / "ADE_x_0001.png",
                  np.array([[0, 1, 150, 20]] * 2, np.uint8))
    dicts = DatasetCatalog.get("ade20k_sem_seg_val")
    assert len(dicts) == 1 and dicts[0]["image_id"] == "ADE_x_0001"
    np.testing.assert_array_equal(read_mask(dicts[0]["sem_seg_file_name"])[0], [255, 0, 149, 19])
    assert "annotations_trainIds" in dicts[0]["sem_seg_file_name"]
    # the conversion is reused, not redone
    mtime = os.path.getmtime(dicts[0]["sem_seg_file_name"])
    assert os.path.getmtime(DatasetCatalog.get("ade20k_sem_seg_val")[0]["sem_seg_file_name"]) == mtime


def test_voc_palette_masks(datasets_root, write_png):
    root = datasets_root / "VOCdevkit" / "VOC2012"
    pal = [c for rgb in voc_palette(256) for c in rgb]
    for i, name in enumerate(["2007_000032", "2007_000039"]):
        write_png(root / "JPEGImages" / f"{name}.jpg", RGB)
        write_png(root / "SegmentationClass" / f"{name}.png",
                  np.array([[0, 15, 255, 20]] * 3, np.uint8), mode="P", palette=pal)
    os.makedirs(root / "ImageSets" / "Segmentation")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000039\n")
    dicts = DatasetCatalog.get("voc_2012_sem_seg_val")
    assert [d["image_id"] for d in dicts] == ["2007_000039"]
    np.testing.assert_array_equal(read_mask(dicts[0]["sem_seg_file_name"])[0], [0, 15, 255, 20])
    assert MetadataCatalog.get("voc_2012_sem_seg_val").stuff_colors[15] == (192, 128, 128)


def test_pascal_context_59(datasets_root, write_png):
    root = datasets_root / "VOCdevkit" / "VOC2010"
    write_png(root / "JPEGImages" / "2008_000002.jpg", RGB)
    write_png(root / "SegmentationClassContext" / "2008_000002.png", np.array([[0, 1, 59, 30]] * 2, np.uint8))
    os.makedirs(root / "ImageSets" / "SegmentationContext")
    (root / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000002\n")
    (d,) = DatasetCatalog.get("pascal_context_59_sem_seg_train")
    np.testing.assert_array_equal(read_mask(d["sem_seg_file_name"])[0], [255, 0, 58, 29])


def test_camvid_void(datasets_root, write_png):
    root = datasets_root / "CamVid"
    write_png(root / "test" / "0001TP_008550.png", RGB)
    write_png(root / "testannot" / "0001TP_008550.png", np.array([[0, 10, 11, 3]] * 2, np.uint8))
    (d,) = DatasetCatalog.get("camvid_sem_seg_test")
    np.testing.assert_array_equal(read_mask(d["sem_seg_file_name"])[0], [0, 10, 255, 3])


def test_register_sem_seg(tmp_path, write_png, unique_name):
    for rel in ("a/x1", "b/x2"):
        write_png(tmp_path / "img" / f"{rel}.jpg", RGB)
        write_png(tmp_path / "gt" / f"{rel}.png", np.full((6, 8), 1, np.uint8))
    register_sem_seg(unique_name, str(tmp_path / "img"), str(tmp_path / "gt"), ["bg", "fg"])
    dicts = DatasetCatalog.get(unique_name)
    assert [d["image_id"] for d in dicts] == ["a/x1", "b/x2"]
    assert dicts[1]["sem_seg_file_name"] == str(tmp_path / "gt" / "b" / "x2.png")
    m = MetadataCatalog.get(unique_name)
    assert m.stuff_classes == ["bg", "fg"] and m.ignore_label == 255 and m.evaluator_type == "sem_seg"
    assert len(m.stuff_colors) == 2


def test_register_sem_seg_errors(tmp_path, write_png, request):
    from dl_lib.data import DatasetCatalog as DC

    names = []

    def reg(suffix, img, gt, classes=("a", "b"), **kw):
        name = f"test_regerr_{suffix}"
        names.append(name)
        register_sem_seg(name, str(img), str(gt), list(classes), **kw)
        return name

    try:
        write_png(tmp_path / "img" / "x1.jpg", RGB)
        write_png(tmp_path / "img" / "x2.jpg", RGB)
        write_png(tmp_path / "gt" / "x1.png", np.full((6, 8), 5, np.uint8))
        with pytest.raises(FileNotFoundError, match="no mask") as e:
            DC.get(reg("missing", tmp_path / "img", tmp_path / "gt"))
        assert "x2.jpg" in str(e.value) and str(tmp_path / "gt") in str(e.value)
        with pytest.raises(FileNotFoundError, match=r"no '\*\.png' images found under"):
            DC.get(reg("noimg", tmp_path / "img", tmp_path / "gt", image_ext=".png"))
        with pytest.raises(FileNotFoundError, match="does not exist"):
            DC.get(reg("noroot", tmp_path / "nothere", tmp_path / "gt"))
        os.remove(tmp_path / "img" / "x2.jpg")
        with pytest.raises(ValueError, match=r"\[5\] outside 0..1"):
            DC.get(reg("badlabel", tmp_path / "img", tmp_path / "gt"))
    finally:
        for n in names:
            DC.remove(n)
            MetadataCatalog.remove(n)
