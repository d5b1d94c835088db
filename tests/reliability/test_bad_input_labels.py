"""Bad data: a labelIds mask past the first ones checked, a truncated PNG, a size mismatch, a
missing root. Each stops with the file's name and the fix, at the sample or before training,
not in the loss at iteration ~58 (see docs/RELIABILITY.md)."""
import itertools
import os

import numpy as np
import pytest
from PIL import Image

from dl_lib.config import get_cfg
from dl_lib.data import DatasetCatalog, build_train_loader, register_sem_seg
from dl_lib.data.datasets.common import (NUM_CHECKED_MASKS, ImageReadError, LabelValueError,
                                         check_all_masks, out_of_range_labels)
from dl_lib.data.mapper import SemSegDatasetMapper
from dl_lib.tools import train_net

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "playground",
                       "Registered", "TinyFPN")
_names = itertools.count()
BAD = NUM_CHECKED_MASKS + 1  # past the masks register_sem_seg checks when the set is requested


def _dataset(root, n=6, bad_value=None, bad_index=BAD):
    """Register ``n`` 32x64 images with 2-class masks (a row of 255); mask ``bad_index`` gets
    ``bad_value`` in a corner (a Cityscapes labelIds value such as 23 or 40). Returns (name, dicts
    as the catalog gives them)."""
    rng = np.random.RandomState(0)
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n):
        image = rng.randint(0, 256, size=(32, 64, 3)).astype(np.uint8)
        label = (image[:, :, 0] > 128).astype(np.uint8)
        label[0] = 255
        if i == bad_index and bad_value is not None:
            label[5:9, 5:9] = bad_value
        Image.fromarray(image).save(os.path.join(root, "images", f"{i}.png"))
        Image.fromarray(label).save(os.path.join(root, "labels", f"{i}.png"))
    name = f"bad_input_labels_{next(_names)}"
    register_sem_seg(name, os.path.join(root, "images"), os.path.join(root, "labels"),
                     classes=["dark", "red"], image_ext=".png")
    return name, DatasetCatalog.get(name)  # the first-masks check passes


def _cfg(name, *opts):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 2, "DATASETS.TRAIN", (name,),
                         "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2,
                         "INPUT.MIN_SIZE_TRAIN", [32], "INPUT.CROP_PAD.SIZE", [32, 32], *opts])
    return cfg


@pytest.mark.parametrize("value", [23, 40])
def test_mapper_names_a_labelids_mask(tmp_path, value):
    name, dicts = _dataset(str(tmp_path), bad_value=value)
    mapper = SemSegDatasetMapper(_cfg(name), is_train=True)
    for d in dicts[:BAD]:
        mapper(d)
    with pytest.raises(LabelValueError) as e:
        mapper(dicts[BAD])
    message = str(e.value)
    assert dicts[BAD]["sem_seg_file_name"] in message and dicts[BAD]["file_name"] in message
    assert f"[{value}]" in message and "NUM_CLASSES 2" in message and "labelTrainIds" in message


def test_check_labels_none_turns_the_check_off(tmp_path):
    name, dicts = _dataset(str(tmp_path), bad_value=23)
    out = SemSegDatasetMapper(_cfg(name, "DATASETS.CHECK_LABELS", "none"), is_train=True)(dicts[BAD])
    assert int(out["sem_seg"].max()) == 255


def test_check_labels_all_reads_every_mask_before_training(tmp_path):
    name, dicts = _dataset(str(tmp_path), bad_value=40, bad_index=5)
    with pytest.raises(LabelValueError, match=r"labels/5\.png'.*\[40\]"):
        build_train_loader(_cfg(name, "DATASETS.CHECK_LABELS", "all"))
    clean, dicts = _dataset(str(tmp_path / "clean"))
    assert check_all_masks([d["sem_seg_file_name"] for d in dicts], 2, 255) == 6
    build_train_loader(_cfg(clean, "DATASETS.CHECK_LABELS", "all"))


def test_out_of_range_labels_is_exact():
    mask = np.array([[0, 1, 255], [255, 3, 1]], np.uint8)
    assert out_of_range_labels(mask, 2, 255) == [3]
    assert out_of_range_labels(mask, 4, 255) == []
    assert out_of_range_labels(np.full((2, 2), 255, np.uint8), 2, 255) == []
    assert out_of_range_labels(np.array([[-1, 0]], np.int32), 2, 255) == [-1]
    assert out_of_range_labels(np.array([[0, 255]], np.uint8), 2, 0) == [255]  # ignore 0
    rng = np.random.RandomState(0)  # the fast uint8 path against the definition
    for _ in range(500):
        num_classes, ignore = int(rng.randint(1, 260)), int(rng.choice([255, 0, rng.randint(256), 300]))
        dtype = [np.uint8, np.uint16, np.int32][rng.randint(3)]
        mask = rng.choice(rng.randint(0, 256, size=rng.randint(1, 6)), (3, 4)).astype(dtype)
        expected = sorted(int(v) for v in np.unique(mask) if v >= num_classes and v != ignore)
        assert out_of_range_labels(mask, num_classes, ignore) == expected, (mask, num_classes, ignore)


def test_dl_train_stops_at_the_labelids_sample_naming_it(tmp_path, monkeypatch):
    """The library's loader and mapper (Registered/TinyFPN), a labelIds mask as the 5th of 6:
    training stops when that sample is read, naming it, instead of `Target 23 is out of bounds`
    in the loss; no checkpoint is written."""
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    name, dicts = _dataset(str(tmp_path / "data"), bad_value=23)
    with pytest.raises(LabelValueError, match=r"labels/4\.png'.*\[23\].*labelTrainIds"):
        train_net.main_train(["--playground", FIXTURE, "DATASETS.TRAIN", f"('{name}',)",
                              "DATASETS.TEST", "()"])
    out = tmp_path / "out" / "Registered" / "TinyFPN"
    assert not list(out.glob("*.pth"))


def test_truncated_image_and_mask_name_the_file(tmp_path):
    name, dicts = _dataset(str(tmp_path))
    mapper = SemSegDatasetMapper(_cfg(name), is_train=False)
    for key in ("file_name", "sem_seg_file_name"):
        path = dicts[1][key]
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        with pytest.raises(ImageReadError, match=r"Cannot read the (image|label mask) '"
                           + path.replace(".", r"\.") + r"'.*truncated"):
            mapper(dicts[1])
        with open(path, "wb") as f:
            f.write(data)
    mapper(dicts[1])


def test_image_label_size_mismatch_names_both(tmp_path):
    name, dicts = _dataset(str(tmp_path))
    Image.fromarray(np.zeros((16, 64), np.uint8)).save(dicts[0]["sem_seg_file_name"])
    with pytest.raises(ValueError, match=r"Mask '.*0\.png' is 64x16 but image '.*0\.png' is 64x32"):
        SemSegDatasetMapper(_cfg(name), is_train=True)(dicts[0])


def test_missing_dataset_root_names_the_folder(tmp_path, monkeypatch):
    register_sem_seg("bad_input_missing_root", str(tmp_path / "nowhere" / "images"),
                     str(tmp_path / "nowhere" / "labels"), classes=["a", "b"])
    with pytest.raises(FileNotFoundError, match=r"the image folder '.*nowhere/images' does not exist"):
        DatasetCatalog.get("bad_input_missing_root")
    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"\$DL_DATASETS.*datasets/README\.md"):
        DatasetCatalog.get("cityscapes_fine_sem_seg_train")
