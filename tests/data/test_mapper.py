import numpy as np
import torch

from dl_lib.config.defaults import get_default_cfg
from dl_lib.data import SemSegDatasetMapper
from dl_lib.data import transforms as T


def _files(tmp_path, write_png, h=40, w=60):
    rng = np.random.RandomState(0)
    label = np.kron(rng.randint(0, 19, (h // 8 + 1, w // 8 + 1)), np.ones((8, 8), np.uint8))[:h, :w].astype(np.uint8)
    image = np.stack([label * 10, label * 5, np.full_like(label, 3)], -1)  # R encodes the label
    d = {"file_name": write_png(tmp_path / "im.png", image), "image_id": "im",
         "sem_seg_file_name": write_png(tmp_path / "gt.png", label)}
    return d, image, label


def test_train_mapper_output_and_alignment(tmp_path, write_png):
    d, image, label = _files(tmp_path, write_png)
    cfg = get_default_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = [0]            # keep size so the crop pads
    cfg.INPUT.CROP_PAD.SIZE = [48, 64]
    cfg.INPUT.COLOR_AUG.ENABLED = False
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    for _ in range(4):
        out = mapper(d)
        assert set(out) >= {"image", "sem_seg", "height", "width", "file_name", "sem_seg_file_name", "image_id"}
        img, seg = out["image"], out["sem_seg"]
        assert img.dtype == torch.uint8 and img.shape == (3, 48, 64)
        assert seg.dtype == torch.int64 and seg.shape == (48, 64)
        assert (out["height"], out["width"]) == (40, 60)
        pad = seg == 255
        assert pad.sum() == 48 * 64 - 40 * 60
        assert torch.equal(img[0][~pad], (seg[~pad] * 10).to(torch.uint8))  # aligned (flip or not)
        assert torch.equal(img[:, pad][:, 0], torch.tensor([124, 116, 104], dtype=torch.uint8))  # pixel mean
    assert "sem_seg" not in d and "image" not in d  # input dict untouched


def test_test_mapper_resize_and_keep(tmp_path, write_png):
    d, image, label = _files(tmp_path, write_png)
    cfg = get_default_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0
    out = SemSegDatasetMapper(cfg, is_train=False)(d)
    assert out["image"].shape == (3, 40, 60) and torch.equal(out["image"].permute(1, 2, 0), torch.from_numpy(image))
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 20, 1000
    out = SemSegDatasetMapper(cfg, is_train=False)(d)
    assert out["image"].shape == (3, 20, 30) and out["sem_seg"].shape == (20, 30)
    assert (out["height"], out["width"]) == (40, 60)


def test_explicit_args_and_from_config():
    cfg = get_default_cfg()
    cfg.INPUT.CROP_PAD.SINGLE_CATEGORY_MAX_AREA = 0.75
    cfg.INPUT.COLOR_AUG.ENABLED = True
    kinds = [type(a) for a in SemSegDatasetMapper.from_config(cfg, True)["augmentations"]]
    assert kinds == [T.ResizeShortestEdge, T.RandomCropCategoryAreaConstraint, T.RandomFlip, T.ColorJitter]
    m = SemSegDatasetMapper(augmentations=[], ignore_value=0, is_train=False)
    assert m.augmentations == [] and m.ignore_value == 0
