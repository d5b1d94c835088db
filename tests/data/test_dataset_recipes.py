"""The registered datasets give the CondNet / ACoSP recipes what they assume (class counts, ignore
255 after conversion), and a missing prepared part names the tool that makes it."""
import os

import numpy as np
import pytest

from dl_lib.data import DatasetCatalog, MetadataCatalog

RGB = np.zeros((4, 6, 3), np.uint8)


@pytest.mark.parametrize("name,num_classes,first,last", [
    ("ade20k_sem_seg_train", 150, "wall", "flag"),
    ("pascal_context_59_sem_seg_train", 59, "aeroplane", "wood"),
    ("voc_2012_sem_seg_train_aug", 21, "background", "tvmonitor"),
    ("camvid_sem_seg_train", 11, "sky", "bicyclist"),
    ("cityscapes_fine_sem_seg_train", 19, "road", "bicycle"),
])
def test_metadata_matches_recipes(name, num_classes, first, last):
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == num_classes == len(meta.stuff_colors)
    assert (meta.stuff_classes[0], meta.stuff_classes[-1]) == (first, last)
    assert meta.ignore_label == 255


def test_train_aug_missing_names_the_tool(datasets_root, write_png):
    voc = datasets_root / "VOCdevkit" / "VOC2012"
    write_png(voc / "JPEGImages" / "2007_000032.jpg", RGB)
    os.makedirs(voc / "ImageSets" / "Segmentation")
    with pytest.raises(FileNotFoundError, match=r"train_aug\.txt.*tools/prepare_voc\.py --sbd"):
        DatasetCatalog.get("voc_2012_sem_seg_train_aug")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2007_000032\n")
    with pytest.raises(FileNotFoundError, match=r"SegmentationClassAug.*tools/prepare_voc\.py"):
        DatasetCatalog.get("voc_2012_sem_seg_train_aug")
    # a ready-made SegmentationClassAug (plain L index PNGs, as DeepLab's zip) is read as it is
    write_png(voc / "SegmentationClassAug" / "2007_000032.png",
              np.array([[0, 20, 255, 7, 7, 7]] * 4, np.uint8))
    (d,) = DatasetCatalog.get("voc_2012_sem_seg_train_aug")
    assert d["sem_seg_file_name"].endswith("SegmentationClassAug/2007_000032.png")


def test_pascal_context_missing_labels_names_the_tool(datasets_root, write_png):
    write_png(datasets_root / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000002.jpg", RGB)
    with pytest.raises(FileNotFoundError, match=r"SegmentationContext.*prepare_pascal_context\.py "
                                                r"--json"):
        DatasetCatalog.get("pascal_context_59_sem_seg_val")
