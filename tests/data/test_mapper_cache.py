"""SemSegDatasetMapper(cache_decoded=True): each file is decoded once, the outputs are those of the
uncached mapper, and an augmentation writing into its input does not change the cache."""
import numpy as np
import torch
from fvcore.transforms.transform import Transform

from dl_lib.config.defaults import get_default_cfg
from dl_lib.data import SemSegDatasetMapper
from dl_lib.data import mapper as mapper_module
from dl_lib.data import transforms as T


def _dicts(tmp_path, write_png, n=2, h=40, w=60):
    rng = np.random.RandomState(0)
    dicts = []
    for i in range(n):
        label = rng.randint(0, 19, (h, w)).astype(np.uint8)
        image = np.stack([label * 10, label * 5, np.full_like(label, 3 + i)], -1)
        dicts.append({"file_name": write_png(tmp_path / f"im{i}.png", image), "image_id": f"im{i}",
                      "sem_seg_file_name": write_png(tmp_path / f"gt{i}.png", label)})
    return dicts


def _cfg():
    cfg = get_default_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = [32]
    cfg.INPUT.CROP_PAD.SIZE = [24, 40]
    cfg.INPUT.COLOR_AUG.ENABLED = True
    return cfg


def _counting_reads(monkeypatch):
    calls = []
    for name in ("read_image", "read_mask"):
        real = getattr(mapper_module, name)
        monkeypatch.setattr(mapper_module, name,
                            lambda path, _real=real: calls.append(path) or _real(path))
    return calls


def test_cached_mapper_decodes_each_file_once_and_maps_as_the_uncached_one(tmp_path, write_png,
                                                                           monkeypatch):
    dicts = _dicts(tmp_path, write_png)
    calls = _counting_reads(monkeypatch)
    plain, cached = SemSegDatasetMapper(_cfg(), True), SemSegDatasetMapper(_cfg(), True, cache_decoded=True)
    for mapper in (plain, cached):
        calls.clear()
        np.random.seed(0)  # same crops, flips and colour jitter for both mappers
        outs = [mapper(d) for _ in range(3) for d in dicts]
        if mapper is plain:
            want, plain_calls = outs, len(calls)
    assert plain_calls == 2 * 3 * len(dicts)  # image + mask per item
    assert sorted(calls) == sorted(p for d in dicts for p in (d["file_name"], d["sem_seg_file_name"]))
    for a, b in zip(want, outs):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
        assert (a["height"], a["width"]) == (b["height"], b["width"]) == (40, 60)
    assert SemSegDatasetMapper(_cfg(), True)._decoded is None  # off by default


class _ScribbleInPlace(T.Augmentation):
    """An augmentation whose transform writes into the arrays it is given."""

    def get_transform(self, image, sem_seg=None):
        class Scribble(Transform):
            def apply_image(self, img):
                img[:] = 7
                return img

            def apply_segmentation(self, seg):
                seg[:] = 3
                return seg

            def apply_coords(self, coords):
                return coords

        return Scribble()


def test_in_place_augmentations_leave_the_cache_as_decoded(tmp_path, write_png):
    d = _dicts(tmp_path, write_png, n=1)[0]
    mapper = SemSegDatasetMapper(augmentations=[_ScribbleInPlace()], cache_decoded=True)
    first = mapper(d)
    assert (first["image"] == 7).all() and (first["sem_seg"] == 3).all()
    (image, mask), = mapper._decoded.values()
    assert np.array_equal(image, mapper_module.read_image(d["file_name"]))
    assert np.array_equal(mask, mapper_module.read_mask(d["sem_seg_file_name"]))
