"""Tiny sem-seg splits in the ``register_sem_seg`` layout, written by the tests that run the real
``dl_train``/``dl_test`` on a fixture playground (``import toy_data``: tests/ is on sys.path)."""
import contextlib
import os

import numpy as np
from PIL import Image


def write_split(root: str, split: str, n: int, seed: int, size=(32, 64)) -> None:
    """``n`` random RGB PNGs under ``root/split/images`` and their masks under
    ``root/split/labels``: class 1 where the red channel is bright, 0 elsewhere, the top row
    ignored (255)."""
    rng = np.random.RandomState(seed)
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    for i in range(n):
        image = rng.randint(0, 256, size=(*size, 3)).astype(np.uint8)
        label = (image[:, :, 0] > 128).astype(np.uint8)
        label[0] = 255
        Image.fromarray(image).save(os.path.join(root, split, "images", f"{i}.png"))
        Image.fromarray(label).save(os.path.join(root, split, "labels", f"{i}.png"))


def without_timing(results):
    """``results`` (a results.json dict, or a flattened metrics line) without the measured
    latency (``time`` / ``time/...`` keys at any depth): wall-clock values differ run to run."""
    if not isinstance(results, dict):
        return results
    return {k: without_timing(v) for k, v in results.items()
            if not (k == "time" or k.startswith("time/") or "/time/" in k)}


@contextlib.contextmanager
def registered_split(name: str, root: str, n: int, seed: int = 0, size=(48, 80),
                     num_classes: int = 19):
    """``write_split(root, "train", n, seed, size)`` registered as the sem-seg data set ``name``
    (classes ``class0`` .. ``class{num_classes - 1}``) for the ``with`` block; removed after."""
    from dl_lib.data import DatasetCatalog, MetadataCatalog, register_sem_seg

    write_split(root, "train", n, seed=seed, size=size)
    register_sem_seg(name, os.path.join(root, "train", "images"),
                     os.path.join(root, "train", "labels"),
                     classes=[f"class{i}" for i in range(num_classes)], image_ext=".png")
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
