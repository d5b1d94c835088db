"""Augmentations for semantic segmentation, on top of fvcore's deterministic transforms.

An :class:`Augmentation` looks at the current image (and label map, for label-aware crops) and
returns an fvcore ``Transform``; the same transform is then applied to the image (bilinear) and to
the label map (nearest), which keeps the two aligned by construction. Geometry comes from fvcore
(``CropTransform``, ``HFlipTransform``, ``VFlipTransform``, ``BlendTransform``) and OpenCV
(:class:`ResizeTransform`, :class:`PadTransform` with a per-channel fill).

Images are H×W×C numpy arrays (uint8 or float), label maps H×W integer arrays.
"""
import logging
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from fvcore.transforms.transform import (BlendTransform, CropTransform, HFlipTransform,
                                         NoOpTransform, Transform, TransformList, VFlipTransform)

__all__ = [
    "Augmentation", "ResizeTransform", "PadTransform", "ResizeShortestEdge", "RandomCropPad",
    "RandomCropCategoryAreaConstraint", "RandomFlip", "ColorJitter", "apply_augmentations",
    "RandomScale", "RotateTransform", "RandomRotate", "GaussianBlurTransform", "RandomGaussianBlur",
    "CropTransform", "HFlipTransform", "VFlipTransform", "NoOpTransform", "TransformList",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Transforms (deterministic, fvcore Transform API)
# ----------------------------------------------------------------------------------------------
class ResizeTransform(Transform):
    """Resize H×W -> new_h×new_w with OpenCV: bilinear for images, nearest for label maps.

    Label maps use ``INTER_NEAREST_EXACT`` (pixel-centre aligned, like PIL), so the label sampled
    for an output pixel is the source pixel nearest to where bilinear samples the image; plain
    ``INTER_NEAREST`` is shifted by half a source pixel.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int = cv2.INTER_LINEAR):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: Optional[int] = None) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), f"expected {(self.h, self.w)}, got {img.shape[:2]}"
        if (self.new_h, self.new_w) == (self.h, self.w):
            return img
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=self.interp if interp is None else interp)
        if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel
            out = out[:, :, None]
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        dtype = segmentation.dtype
        # cv2.resize has no int64 support; labels fit in int32/uint8
        seg = segmentation.astype(np.int32) if dtype in (np.int64, np.uint32) else segmentation
        return self.apply_image(seg, interp=cv2.INTER_NEAREST_EXACT).astype(dtype, copy=False)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h / self.h)
        return coords

    def inverse(self) -> Transform:
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class PadTransform(Transform):
    """Pad ``top, bottom, left, right`` pixels; images with ``pad_value`` (a scalar or one value per
    channel, e.g. the pixel mean), label maps with ``seg_pad_value`` (the ignore label).
    ``orig_h, orig_w`` (the unpadded size) are only needed for ``inverse()``."""

    def __init__(self, top: int, bottom: int, left: int, right: int,
                 pad_value: Union[float, Sequence[float]] = 0.0, seg_pad_value: int = 255,
                 orig_h: Optional[int] = None, orig_w: Optional[int] = None):
        super().__init__()
        self._set_attributes(locals())

    def _pad(self, img: np.ndarray, value) -> np.ndarray:
        if not (self.top or self.bottom or self.left or self.right):
            return img
        h, w = img.shape[:2]
        out_shape = (h + self.top + self.bottom, w + self.left + self.right) + img.shape[2:]
        out = np.empty(out_shape, dtype=img.dtype)
        out[...] = value  # a per-channel value broadcasts over the last axis
        out[self.top:self.top + h, self.left:self.left + w] = img
        return out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        value = self.pad_value
        if img.ndim == 3 and np.ndim(value) == 1:
            assert len(value) == img.shape[2], f"pad_value {value} vs {img.shape[2]} channels"
        if img.dtype == np.uint8:
            value = np.clip(np.round(np.asarray(value, np.float64)), 0, 255)
        return self._pad(img, value)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._pad(segmentation, self.seg_pad_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] += self.left
        coords[:, 1] += self.top
        return coords

    def inverse(self) -> Transform:
        if self.orig_h is None or self.orig_w is None:
            raise ValueError("PadTransform.inverse needs the unpadded size: build the transform "
                             "with orig_h=..., orig_w=...")
        return CropTransform(self.left, self.top, self.orig_w, self.orig_h,
                             orig_w=self.orig_w + self.left + self.right,
                             orig_h=self.orig_h + self.top + self.bottom)


# ----------------------------------------------------------------------------------------------
# Augmentations (random policies producing transforms)
# ----------------------------------------------------------------------------------------------
class Augmentation:
    """Base class: ``get_transform(image, sem_seg=None) -> Transform``; ``__call__`` is an alias.

    ``image``: H×W×C array; ``sem_seg``: H×W integer array or None. Randomness comes from
    ``np.random`` (seeded per data-loader worker)."""

    def get_transform(self, image: np.ndarray, sem_seg: Optional[np.ndarray] = None) -> Transform:
        raise NotImplementedError

    __call__ = get_transform

    def __repr__(self):
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({attrs})"


def _shortest_edge_size(h: int, w: int, short: int, max_size: int) -> Tuple[int, int]:
    """Output (h, w) with the shorter side = ``short`` and the longer one <= ``max_size``."""
    scale = short / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


class ResizeShortestEdge(Augmentation):
    """Resize so the shorter side is a length drawn from ``short_edge_length`` (``"choice"``: one of
    the values; ``"range"``: uniform integer in [min, max]) while the longer side stays <=
    ``max_size`` (0: no limit). A drawn length of 0 keeps the image size."""

    def __init__(self, short_edge_length: Union[int, Sequence[int]], max_size: int = 0,
                 sample_style: str = "range"):
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style must be 'range' or 'choice', got {sample_style!r}")
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"sample_style 'range' needs [min, max], got {list(short_edge_length)} "
                             "(INPUT.MIN_SIZE_TRAIN with INPUT.MIN_SIZE_TRAIN_SAMPLING)")
        self.short_edge_length, self.max_size, self.sample_style = short_edge_length, max_size, sample_style

    def get_transform(self, image, sem_seg=None):
        h, w = image.shape[:2]
        if self.sample_style == "range":
            short = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            short = self.short_edge_length[np.random.randint(len(self.short_edge_length))]
        if short == 0:
            return NoOpTransform()
        new_h, new_w = _shortest_edge_size(h, w, short, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)


def _crop_then_pad(h, w, x0, y0, ch, cw, crop_h, crop_w, pad_value, seg_pad_value) -> Transform:
    """Crop (x0, y0, cw, ch) then pad bottom/right up to crop_h×crop_w."""
    ts = [CropTransform(x0, y0, cw, ch, orig_w=w, orig_h=h)]
    if ch < crop_h or cw < crop_w:
        ts.append(PadTransform(0, crop_h - ch, 0, crop_w - cw, pad_value, seg_pad_value,
                               orig_h=ch, orig_w=cw))
    return TransformList(ts)


class RandomCropPad(Augmentation):
    """A random ``crop_size = (h, w)`` window; where the image is smaller than the window it is
    padded (bottom/right) with ``pad_value`` (e.g. the pixel mean, so it normalises to ~0) and the
    labels with ``seg_pad_value`` (ignore). Output is always exactly crop_h×crop_w."""

    def __init__(self, crop_size: Sequence[int], pad_value=0.0, seg_pad_value: int = 255):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.pad_value, self.seg_pad_value = pad_value, seg_pad_value

    def _window(self, h, w):
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        y0 = np.random.randint(h - ch + 1)
        x0 = np.random.randint(w - cw + 1)
        return x0, y0, ch, cw

    def get_transform(self, image, sem_seg=None):
        h, w = image.shape[:2]
        x0, y0, ch, cw = self._window(h, w)
        return _crop_then_pad(h, w, x0, y0, ch, cw, *self.crop_size, self.pad_value, self.seg_pad_value)


class RandomCropCategoryAreaConstraint(RandomCropPad):
    """DeepLab's crop: redraw the window (up to ``max_tries`` times) while a single category covers
    more than ``single_category_max_area`` of its labelled (non-ignore) pixels or only one
    category is present; keeps the last draw if none qualifies. Needs ``sem_seg``."""

    def __init__(self, crop_size, single_category_max_area: float, ignore_value: int = 255,
                 pad_value=0.0, seg_pad_value: int = 255, max_tries: int = 10):
        super().__init__(crop_size, pad_value, seg_pad_value)
        self.single_category_max_area, self.ignore_value = single_category_max_area, ignore_value
        self.max_tries = max_tries

    def get_transform(self, image, sem_seg=None):
        h, w = image.shape[:2]
        if self.single_category_max_area >= 1.0 or sem_seg is None:
            return super().get_transform(image, sem_seg)
        for _ in range(self.max_tries):
            x0, y0, ch, cw = self._window(h, w)
            window = sem_seg[y0:y0 + ch, x0:x0 + cw]
            labels, counts = np.unique(window, return_counts=True)
            counts = counts[labels != self.ignore_value]
            if len(counts) > 1 and counts.max() < self.single_category_max_area * counts.sum():
                break
        return _crop_then_pad(h, w, x0, y0, ch, cw, *self.crop_size, self.pad_value, self.seg_pad_value)


class RandomFlip(Augmentation):
    """Flip with probability ``prob``, horizontally or vertically."""

    def __init__(self, prob: float = 0.5, horizontal: bool = True):
        self.prob, self.horizontal = prob, horizontal

    def get_transform(self, image, sem_seg=None):
        if np.random.rand() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class ColorJitter(Augmentation):
    """Photometric jitter as blends (labels untouched): brightness (towards black), contrast
    (towards the mean grey), saturation (towards the grey image); each factor is drawn from
    ``[1 - x, 1 + x]``. Expects RGB images."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    @staticmethod
    def _factor(x):
        return float(np.random.uniform(1 - x, 1 + x))

    def get_transform(self, image, sem_seg=None):
        ts: List[Transform] = []
        img = image.astype(np.float32)
        grey = img @ np.array([0.299, 0.587, 0.114], np.float32) if img.ndim == 3 and img.shape[2] == 3 \
            else img.reshape(img.shape[:2] + (-1,)).mean(-1)
        if self.brightness > 0:
            a = self._factor(self.brightness)
            ts.append(BlendTransform(src_image=0.0, src_weight=1 - a, dst_weight=a))
        if self.contrast > 0:
            a = self._factor(self.contrast)
            ts.append(BlendTransform(src_image=float(grey.mean()), src_weight=1 - a, dst_weight=a))
        if self.saturation > 0:
            a = self._factor(self.saturation)
            # grey image of the current input (after brightness/contrast its hue is unchanged)
            ts.append(_SaturationBlend(1 - a, a))
        if not ts:
            return NoOpTransform()
        order = np.random.permutation(len(ts))
        return TransformList([ts[i] for i in order])


class _SaturationBlend(Transform):
    """Blend an RGB image with its own grey version (computed at apply time); labels unchanged."""

    def __init__(self, src_weight: float, dst_weight: float):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        f = img.astype(np.float32)
        grey = (f @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        out = self.src_weight * grey + self.dst_weight * f
        return np.clip(out, 0, 255).astype(np.uint8) if img.dtype == np.uint8 else out.astype(img.dtype)

    def apply_segmentation(self, segmentation):
        return segmentation

    def apply_coords(self, coords):
        return coords


class RandomScale(Augmentation):
    """Resize by a factor drawn from U[``min_scale``, ``max_scale``] (both sides, aspect kept):
    semseg's ``RandScale``, relative to each image's own size (``ResizeShortestEdge`` sets an
    absolute side)."""

    def __init__(self, min_scale: float, max_scale: float):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"RandomScale: need 0 < min_scale <= max_scale, got "
                             f"[{min_scale}, {max_scale}]")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)

    def get_transform(self, image, sem_seg=None):
        h, w = image.shape[:2]
        s = float(np.random.uniform(self.min_scale, self.max_scale))
        return ResizeTransform(h, w, max(int(round(h * s)), 1), max(int(round(w * s)), 1))


class RotateTransform(Transform):
    """Rotate by ``angle`` degrees (counter-clockwise, OpenCV's sign) about the image centre,
    size kept: images bilinear with the uncovered corners set to ``pad_value`` (e.g. the pixel
    mean), label maps nearest with ``seg_pad_value`` (ignore)."""

    def __init__(self, h: int, w: int, angle: float, pad_value=0.0, seg_pad_value: int = 255):
        super().__init__()
        self._set_attributes(locals())
        self.matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0)

    def _warp(self, img, interp, value):
        if img.ndim == 3 and img.shape[2] > 4:  # cv2.warpAffine takes at most 4 channels
            return np.stack([self._warp(img[..., c], interp, value) for c in range(img.shape[2])], -1)
        out = cv2.warpAffine(img, self.matrix, (self.w, self.h), flags=interp,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=value)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_image(self, img):
        value = self.pad_value
        value = tuple(float(v) for v in value) if np.ndim(value) == 1 else float(value)
        return self._warp(img, cv2.INTER_LINEAR, value)

    def apply_segmentation(self, segmentation):
        dtype = segmentation.dtype
        seg = segmentation.astype(np.int32) if dtype in (np.int64, np.uint32) else segmentation
        return self._warp(seg, cv2.INTER_NEAREST, float(self.seg_pad_value)).astype(dtype, copy=False)

    def apply_coords(self, coords):
        xy1 = np.concatenate([coords, np.ones((len(coords), 1), coords.dtype)], 1)
        return xy1 @ self.matrix.T.astype(coords.dtype)


class RandomRotate(Augmentation):
    """With probability ``prob``, rotate by an angle drawn from U[``min_angle``, ``max_angle``]
    degrees (semseg's ``RandRotate``: p 0.5, image padded with the mean, labels with ignore)."""

    def __init__(self, min_angle: float, max_angle: float, prob: float = 0.5, pad_value=0.0,
                 seg_pad_value: int = 255):
        if min_angle > max_angle:
            raise ValueError(f"RandomRotate: min_angle {min_angle} > max_angle {max_angle}")
        self.min_angle, self.max_angle, self.prob = float(min_angle), float(max_angle), prob
        self.pad_value, self.seg_pad_value = pad_value, seg_pad_value

    def get_transform(self, image, sem_seg=None):
        if np.random.rand() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        angle = float(np.random.uniform(self.min_angle, self.max_angle))
        return RotateTransform(h, w, angle, self.pad_value, self.seg_pad_value)


class GaussianBlurTransform(Transform):
    """OpenCV Gaussian blur of the image with a ``kernel`` x ``kernel`` window (sigma from the
    size, cv2's sigma 0); label maps and coordinates unchanged."""

    def __init__(self, kernel: int = 5):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        out = cv2.GaussianBlur(img, (self.kernel, self.kernel), 0)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_segmentation(self, segmentation):
        return segmentation

    def apply_coords(self, coords):
        return coords


class RandomGaussianBlur(Augmentation):
    """Gaussian blur (``kernel`` 5) with probability ``prob`` (semseg's ``RandomGaussianBlur``)."""

    def __init__(self, kernel: int = 5, prob: float = 0.5):
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"RandomGaussianBlur: kernel must be odd and positive, got {kernel}")
        self.kernel, self.prob = int(kernel), prob

    def get_transform(self, image, sem_seg=None):
        if np.random.rand() >= self.prob:
            return NoOpTransform()
        return GaussianBlurTransform(self.kernel)


def apply_augmentations(augs: Sequence[Augmentation], image: np.ndarray,
                        sem_seg: Optional[np.ndarray] = None):
    """Apply ``augs`` in order to ``image`` and ``sem_seg`` together.

    Returns ``(image, sem_seg, TransformList)``; each augmentation sees the output of the previous
    ones (a crop after a resize draws its window in the resized image).
    """
    done: List[Transform] = []
    for aug in augs:
        t = aug.get_transform(image, sem_seg)
        image = t.apply_image(image)
        if sem_seg is not None:
            sem_seg = t.apply_segmentation(sem_seg)
        done.append(t)
    return image, sem_seg, TransformList(done)
