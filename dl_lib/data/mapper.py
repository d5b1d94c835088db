"""Dataset dict -> model input: read the image and its label map, augment both, make tensors."""
import copy
import logging
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from dl_lib.data.datasets.common import check_label_array, read_error, read_mask
from dl_lib.data.transforms import (Augmentation, ColorJitter, RandomCropCategoryAreaConstraint,
                                    RandomCropPad, RandomFlip, ResizeShortestEdge, apply_augmentations)

__all__ = ["SemSegDatasetMapper", "read_image", "build_augmentations"]

logger = logging.getLogger(__name__)


def read_image(path: str) -> np.ndarray:
    """An image file as an H×W×3 uint8 RGB array (grey images are expanded to 3 channels).

    A missing file is a FileNotFoundError, one that cannot be decoded (truncated, not an image)
    an ``ImageReadError``; both name the path."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR, drops alpha, expands grey
    if img is None:  # cv2 returns None instead of raising; PIL says why
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise  # PIL's message names the path
        except (OSError, SyntaxError) as e:  # "image file is truncated", unidentified, ...
            raise read_error(path, e) from e
    return np.ascontiguousarray(img[:, :, ::-1])


def build_augmentations(cfg, is_train: bool) -> List[Augmentation]:
    """The augmentation list described by ``cfg.INPUT`` (and ``MODEL.PIXEL_MEAN`` for padding).

    Train: ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING) ->
    crop/pad to CROP_PAD.SIZE (category-area constrained if SINGLE_CATEGORY_MAX_AREA < 1) ->
    RANDOM_FLIP -> COLOR_AUG. Test: ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) (0 = keep).
    """
    inp = cfg.INPUT
    if not is_train:
        return [ResizeShortestEdge(inp.MIN_SIZE_TEST, inp.MAX_SIZE_TEST, "choice")]
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    augs: List[Augmentation] = [
        ResizeShortestEdge(inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING)]
    if inp.CROP_PAD.ENABLED:
        mean = list(cfg.MODEL.PIXEL_MEAN)
        if inp.CROP_PAD.SINGLE_CATEGORY_MAX_AREA < 1.0:
            augs.append(RandomCropCategoryAreaConstraint(
                inp.CROP_PAD.SIZE, inp.CROP_PAD.SINGLE_CATEGORY_MAX_AREA, ignore_value=ignore,
                pad_value=mean, seg_pad_value=ignore))
        else:
            augs.append(RandomCropPad(inp.CROP_PAD.SIZE, pad_value=mean, seg_pad_value=ignore))
    flip = inp.RANDOM_FLIP
    if flip not in ("none", "horizontal", "vertical"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {flip!r}")
    if flip != "none":
        augs.append(RandomFlip(0.5, horizontal=flip == "horizontal"))
    if inp.COLOR_AUG.ENABLED:
        augs.append(ColorJitter(inp.COLOR_AUG.BRIGHTNESS, inp.COLOR_AUG.CONTRAST, inp.COLOR_AUG.SATURATION))
    return augs


class SemSegDatasetMapper:
    """Callable mapping a dataset dict to the model's input dict (see docs/CONTRACTS.md).

    Input: ``file_name``, ``sem_seg_file_name`` (optional at test), ``image_id``.
    Output: the input keys plus ``image`` (uint8 3×H×W RGB tensor, after augmentation), ``sem_seg``
    (int64 H×W train ids, ``ignore_value`` where padded), ``height``/``width`` (original size, the
    size the prediction must have).

    With ``num_classes`` (from a config: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` unless
    ``DATASETS.CHECK_LABELS`` is "none"), a mask value outside ``0..num_classes-1`` and
    ``ignore_value`` raises ``LabelValueError`` naming the mask (~1 ms per 1024x2048 mask); image
    and mask files that cannot be decoded raise ``ImageReadError`` naming the file.

    ``cache_decoded=True`` keeps every decoded (and checked) image and mask in memory, keyed by
    file name, and augments copies of them: each file is decoded once per loader worker instead
    of once per epoch (PNG decoding is ~70% of the mapper's time on the 256x512 street scenes).
    For small datasets only: the cache grows to the whole decoded dataset in every worker.

    Build with explicit arguments, or from a config: ``SemSegDatasetMapper(cfg, is_train)``.
    """

    def __init__(self, cfg=None, is_train: bool = True, *, augmentations: Optional[Sequence[Augmentation]] = None,
                 ignore_value: int = 255, image_format: str = "RGB", num_classes: Optional[int] = None,
                 cache_decoded: bool = False):
        if cfg is not None:
            kw = self.from_config(cfg, is_train)
            if augmentations is None:
                augmentations = kw["augmentations"]
            ignore_value, image_format = kw["ignore_value"], kw["image_format"]
            num_classes = kw["num_classes"]
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {image_format!r}")
        self.is_train = is_train
        self.augmentations = list(augmentations or [])
        self.ignore_value = ignore_value
        self.image_format = image_format
        self.num_classes = num_classes
        # file_name -> (image, mask or None) as decoded and checked; None: no cache
        self._decoded: Optional[dict] = {} if cache_decoded else None
        logger.info("%s mapper augmentations: %s", "Train" if is_train else "Test", self.augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        """The explicit keyword arguments a config describes (``num_classes`` None when
        ``DATASETS.CHECK_LABELS`` is "none": label values are not checked)."""
        check = cfg.DATASETS.CHECK_LABELS != "none"
        return dict(augmentations=build_augmentations(cfg, is_train),
                    ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, image_format=cfg.INPUT.FORMAT,
                    num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if check else None)

    def _decode(self, d: dict):
        """(H×W×3 uint8 RGB image, H×W mask as stored or None), read and checked."""
        image = read_image(d["file_name"])
        h, w = image.shape[:2]
        sem_seg = None
        if d.get("sem_seg_file_name"):
            sem_seg = read_mask(d["sem_seg_file_name"])
            if self.num_classes is not None:  # here, with the file's name, not in the loss
                check_label_array(sem_seg, d["sem_seg_file_name"], self.num_classes,
                                  self.ignore_value, image=d["file_name"])
            if sem_seg.shape != (h, w):
                raise ValueError(f"Mask {d['sem_seg_file_name']!r} is {sem_seg.shape[1]}x{sem_seg.shape[0]} "
                                 f"but image {d['file_name']!r} is {w}x{h}.")
        return image, sem_seg

    def __call__(self, dataset_dict: dict) -> dict:
        d = copy.deepcopy(dataset_dict)  # the dataset's dicts are reused every epoch
        if self._decoded is None:
            image, sem_seg = self._decode(d)
        else:
            key = (d["file_name"], d.get("sem_seg_file_name"))
            if key not in self._decoded:
                self._decoded[key] = self._decode(d)
            image, sem_seg = self._decoded[key]
            image = image.copy()  # augmentations may write into their input
        h, w = image.shape[:2]
        if sem_seg is not None:
            sem_seg = sem_seg.astype(np.int32)  # a copy: the cached mask stays as decoded
        image, sem_seg, _ = apply_augmentations(self.augmentations, image, sem_seg)
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        d["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            d["sem_seg"] = torch.from_numpy(np.ascontiguousarray(sem_seg).astype(np.int64))
        d["height"], d["width"] = h, w
        return d
