"""RandomScale, RandomRotate and RandomGaussianBlur (semseg's RandScale / RandRotate /
RandomGaussianBlur, the ACoSP recipes' augmentation): sizes, probabilities, fill values, label
alignment and coordinates."""
import cv2
import numpy as np
import pytest

from dl_lib.data.transforms import (GaussianBlurTransform, NoOpTransform, RandomGaussianBlur,
                                    RandomRotate, RandomScale, RotateTransform,
                                    apply_augmentations)


def test_random_scale_draws_a_relative_factor():
    img = np.zeros((40, 60, 3), np.uint8)
    np.random.seed(3)
    s = np.random.uniform(0.5, 2.0)
    np.random.seed(3)
    t = RandomScale(0.5, 2.0).get_transform(img)
    assert (t.new_h, t.new_w) == (int(round(40 * s)), int(round(60 * s)))
    out, seg, _ = apply_augmentations([RandomScale(0.5, 0.5)], img, np.zeros((40, 60), np.int64))
    assert out.shape == (20, 30, 3) and seg.shape == (20, 30) and seg.dtype == np.int64
    with pytest.raises(ValueError, match="min_scale"):
        RandomScale(2.0, 1.0)


def test_rotation_keeps_labels_aligned_and_fills_corners():
    h, w = 31, 41
    seg = np.zeros((h, w), np.uint8)
    seg[10, 30] = 7
    img = np.full((h, w, 3), 200, np.uint8)
    t = RotateTransform(h, w, 30.0, pad_value=(1, 2, 3), seg_pad_value=255)
    rotated = t.apply_segmentation(seg)
    assert set(np.unique(rotated)) <= {0, 7, 255}
    # The labelled pixel lands where apply_coords sends its coordinates (nearest sampling).
    (x, y), = t.apply_coords(np.array([[30.0, 10.0]]))
    ys, xs = np.nonzero(rotated == 7)
    assert len(ys) >= 1 and abs(xs.mean() - x) <= 1 and abs(ys.mean() - y) <= 1
    out = t.apply_image(img)
    assert out.shape == img.shape and tuple(out[0, 0]) == (1, 2, 3) and rotated[0, 0] == 255
    assert tuple(out[h // 2, w // 2]) == (200, 200, 200)
    # 0 degrees: identity.
    z = RotateTransform(h, w, 0.0)
    assert np.array_equal(z.apply_segmentation(seg), seg) and np.array_equal(z.apply_image(img), img)


def test_random_rotate_probability_and_range():
    img = np.zeros((8, 8, 3), np.uint8)
    assert isinstance(RandomRotate(-10, 10, prob=0.0).get_transform(img), NoOpTransform)
    np.random.seed(0)
    angles = [RandomRotate(-10, 10, prob=1.0).get_transform(img).angle for _ in range(50)]
    assert min(angles) >= -10 and max(angles) <= 10 and np.std(angles) > 3
    np.random.seed(1)
    applied = sum(not isinstance(RandomRotate(-10, 10).get_transform(img), NoOpTransform)
                  for _ in range(400))
    assert 150 < applied < 250  # p = 0.5


def test_gaussian_blur_image_only():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (20, 24, 3)).astype(np.uint8)
    seg = rng.randint(0, 5, (20, 24)).astype(np.uint8)
    out, seg_out, _ = apply_augmentations([RandomGaussianBlur(5, prob=1.0)], img, seg)
    assert np.array_equal(out, cv2.GaussianBlur(img, (5, 5), 0)) and not np.array_equal(out, img)
    assert np.array_equal(seg_out, seg)
    assert isinstance(RandomGaussianBlur(5, prob=0.0).get_transform(img), NoOpTransform)
    with pytest.raises(ValueError, match="odd"):
        RandomGaussianBlur(4)
