"""Augmentations keep image and label aligned; padding uses the mean / the ignore value."""
import numpy as np
import pytest

from dl_lib.data import transforms as T

MEAN = (123.675, 116.28, 103.53)


def _coded(h=40, w=60, seed=0):
    """float image: channel 0 = x, channel 1 = y, channel 2 = label; label map of 8x8 blocks."""
    rng = np.random.RandomState(seed)
    blocks = rng.randint(0, 19, size=(h // 8 + 1, w // 8 + 1))
    label = np.kron(blocks, np.ones((8, 8), np.int64))[:h, :w].astype(np.int32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xx, yy, label.astype(np.float32)], -1), label


@pytest.mark.parametrize("aug", [
    T.RandomCropPad((24, 30), pad_value=MEAN),
    T.RandomCropPad((50, 80), pad_value=MEAN),          # larger than the image: pads
    T.RandomCropCategoryAreaConstraint((24, 30), 0.6, pad_value=MEAN),
    T.RandomFlip(1.0, horizontal=True),
    T.RandomFlip(1.0, horizontal=False),
])
def test_geometry_exact_alignment(aug):
    np.random.seed(0)
    for trial in range(5):
        image, label = _coded(seed=trial)
        img, lab, tfm = T.apply_augmentations([aug], image, label)
        assert img.shape[:2] == lab.shape and lab.dtype == label.dtype
        # the pixel's source coordinates say where the label must come from
        src_x, src_y = img[..., 0].astype(int), img[..., 1].astype(int)
        pad = lab == 255
        np.testing.assert_array_equal(lab[~pad], label[src_y[~pad], src_x[~pad]])
        np.testing.assert_array_equal(lab[~pad], img[..., 2][~pad])
        if pad.any():
            np.testing.assert_allclose(img[pad], np.broadcast_to(MEAN, img[pad].shape), rtol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 0.37, 1.6, 2.0])
def test_resize_alignment(scale):
    image, label = _coded(48, 64)
    h2, w2 = int(48 * scale), int(64 * scale)
    t = T.ResizeTransform(48, 64, h2, w2)
    img, lab = t.apply_image(image), t.apply_segmentation(label)
    assert img.shape == (h2, w2, 3) and lab.shape == (h2, w2)
    # bilinear keeps the coordinate ramps linear: the label must come from a source pixel within 1
    x, y = np.clip(img[..., 0], 0, 63), np.clip(img[..., 1], 0, 47)
    cands = [label[np.floor(y).astype(int), np.floor(x).astype(int)],
             label[np.ceil(y).astype(int), np.ceil(x).astype(int)],
             label[np.floor(y).astype(int), np.ceil(x).astype(int)],
             label[np.ceil(y).astype(int), np.floor(x).astype(int)]]
    ok = np.zeros_like(lab, bool)
    for c in cands:
        ok |= c == lab
    assert ok.all(), f"{(~ok).sum()} misaligned label pixels"


def test_resize_uint8_single_channel():
    t = T.ResizeTransform(10, 20, 5, 10)
    assert t.apply_image(np.zeros((10, 20, 1), np.uint8)).shape == (5, 10, 1)
    assert t.apply_segmentation(np.zeros((10, 20), np.int64)).dtype == np.int64


def test_resize_shortest_edge_sizes():
    img = np.zeros((100, 200, 3), np.uint8)
    np.random.seed(0)
    sizes = {T.ResizeShortestEdge([50, 80], 1000, "choice").get_transform(img).new_h for _ in range(30)}
    assert sizes == {50, 80}
    for _ in range(20):
        t = T.ResizeShortestEdge([60, 70], 1000, "range").get_transform(img)
        assert 60 <= t.new_h <= 70 and t.new_w == 2 * t.new_h
    t = T.ResizeShortestEdge([100], 150, "choice").get_transform(img)
    assert (t.new_h, t.new_w) == (75, 150)  # capped by the long side
    assert isinstance(T.ResizeShortestEdge([0], 0, "choice").get_transform(img), T.NoOpTransform)
    with pytest.raises(ValueError, match="range"):
        T.ResizeShortestEdge([1, 2, 3], 0, "range")


def test_pad_uint8_with_mean():
    t = T.PadTransform(1, 2, 3, 4, pad_value=MEAN, seg_pad_value=255)
    img = t.apply_image(np.full((2, 2, 3), 7, np.uint8))
    assert img.shape == (5, 9, 3) and tuple(img[0, 0]) == (124, 116, 104) and tuple(img[1, 3]) == (7, 7, 7)
    seg = t.apply_segmentation(np.zeros((2, 2), np.int32))
    assert seg[0, 0] == 255 and seg[1, 3] == 0
    with pytest.raises(ValueError, match="orig_h"):
        t.inverse()
    sized = T.PadTransform(1, 2, 3, 4, pad_value=MEAN, orig_h=2, orig_w=2)
    restored = sized.inverse().apply_image(sized.apply_image(np.arange(12, dtype=np.uint8).reshape(2, 2, 3)))
    np.testing.assert_array_equal(restored, np.arange(12, dtype=np.uint8).reshape(2, 2, 3))


def test_category_area_crop_constraint():
    # the left half is class 0, the right half mixed: a plain crop is often all class 0
    label = np.zeros((64, 256), np.int32)
    label[:, 128:] = np.arange(64)[:, None] % 3 + 1
    image = np.zeros((64, 256, 3), np.uint8)
    np.random.seed(1)
    constrained = T.RandomCropCategoryAreaConstraint((64, 64), 0.75)
    plain = T.RandomCropPad((64, 64))

    def max_share(aug):
        _, lab, _ = T.apply_augmentations([aug], image, label)
        _, c = np.unique(lab[lab != 255], return_counts=True)
        return c.max() / c.sum()

    shares = [max_share(constrained) for _ in range(30)]
    assert all(s < 0.75 for s in shares)
    assert np.mean([max_share(plain) < 0.75 for _ in range(30)]) < 0.8


def test_color_jitter_changes_image_not_labels():
    np.random.seed(0)
    image = np.random.randint(0, 255, (16, 16, 3), np.uint8)
    label = np.random.randint(0, 19, (16, 16)).astype(np.int32)
    img, lab, _ = T.apply_augmentations([T.ColorJitter(0.4, 0.4, 0.4)], image, label)
    assert img.dtype == np.uint8 and img.shape == image.shape and not np.array_equal(img, image)
    np.testing.assert_array_equal(lab, label)
