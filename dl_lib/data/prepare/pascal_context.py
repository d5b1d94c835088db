"""Pascal Context 59: draw the label PNGs from ``trainval_merged.json`` and check the tree.

The json (PASCAL in Detail) holds, per VOC 2010 image, segments of 459 categories as COCO
run-length encodings. An image's class mask is what the Detail API's ``getMask(img)`` returns:
zeros, then each of the image's segments (in file order, later ones on top) painted with its
``category_id``. The 59-class setting keeps the 59 most frequent categories, numbered 1..59 in
the order of their ids (``CONTEXT_59_CATEGORY_IDS``, the alphabetical order of
``PASCAL_CONTEXT_59_CLASSES``), every other pixel 0 = background. Written as 8-bit PNGs into
``SegmentationClassContext/`` with the split lists ``ImageSets/SegmentationContext/{train,val}.txt``
(4,996 / 5,104 images, the json's ``phase``).

With the Detail API installed (``--backend detail``, or ``auto``) it draws the masks; otherwise
the json is decoded here with the same rule. Label PNGs made elsewhere (e.g. by
mmsegmentation's converter, same layout) are only checked: run without ``--json``.

    python tools/prepare_pascal_context.py --json trainval_merged.json \
        [--root $DL_DATASETS/VOCdevkit/VOC2010]
"""
import argparse
import json
import os
import shutil
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from dl_lib.data.datasets.common import dataset_path
from dl_lib.data.prepare.common import (PrepareError, add_common_arguments, check_split,
                                        format_report, image_size, listed_pairs,
                                        parse_expect_counts, read_list, require, run_main)

__all__ = ["OFFICIAL_COUNTS", "CONTEXT_59_CATEGORY_IDS", "decode_rle", "category_lut",
           "class_mask", "write_context_labels", "prepare_pascal_context", "main"]

OFFICIAL_COUNTS = {"train": 4996, "val": 5104}
# The ids (of the 459 categories in trainval_merged.json) of the 59 classes, ascending: class
# k + 1 is CONTEXT_59_CATEGORY_IDS[k] (2 = aeroplane, ..., 458 = wood).
CONTEXT_59_CATEGORY_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
    115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326,
    347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)
assert len(CONTEXT_59_CATEGORY_IDS) == 59
DOWNLOAD = ("download VOCtrainval_03-May-2010.tar from "
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/ (untar into $DL_DATASETS) and "
            "trainval_merged.json from "
            "https://codalabuser.blob.core.windows.net/public/trainval_merged.json "
            "(datasets/README.md, section 'Pascal Context')")


def _rle_counts_from_string(s: Union[str, bytes]) -> List[int]:
    """COCO's compressed RLE string -> run lengths: 5 bits per character (offset 48), bit 0x20 =
    more characters follow, sign from bit 0x10 of the last; from the fourth run on, each value is
    a difference to the run two before."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(segmentation: dict) -> np.ndarray:
    """A COCO RLE (``{"size": [h, w], "counts": str | list}``) -> H x W uint8 0/1 mask. Runs
    alternate background / foreground starting with background, in column-major order."""
    try:
        h, w = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
    except (KeyError, TypeError, ValueError):
        raise PrepareError(f"Pascal Context: a segmentation is not a COCO RLE with 'size' and "
                           f"'counts': {str(segmentation)[:80]!r}") from None
    if not isinstance(counts, list):
        counts = _rle_counts_from_string(counts)
    if sum(counts) != h * w or min(counts, default=0) < 0:
        raise PrepareError(f"Pascal Context: an RLE's runs add up to {sum(counts)}, not its "
                           f"size {h}x{w}: the json is damaged; download it again ({DOWNLOAD}).")
    flat = np.zeros(h * w, dtype=np.uint8)
    values = np.arange(len(counts)) % 2
    flat[:] = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()  # column-major


def category_lut(max_category_id: int) -> np.ndarray:
    """Category id (of 459) -> 59-class label (0 = background / any other category)."""
    lut = np.zeros(max(max_category_id, max(CONTEXT_59_CATEGORY_IDS)) + 1, dtype=np.uint8)
    lut[list(CONTEXT_59_CATEGORY_IDS)] = np.arange(1, 60)
    return lut


def class_mask(image: dict, segments: Sequence[dict], lut: np.ndarray) -> np.ndarray:
    """The 59-class label (H x W uint8, 0..59) of one json ``image`` from its ``segments``."""
    mask = np.zeros((int(image["height"]), int(image["width"])), dtype=np.int64)
    for seg in segments:
        m = decode_rle(seg["segmentation"])
        if m.shape != mask.shape:
            raise PrepareError(f"Pascal Context: a segment of {image['file_name']} is "
                               f"{m.shape[1]}x{m.shape[0]}, the image "
                               f"{mask.shape[1]}x{mask.shape[0]}.")
        mask[m > 0] = int(seg["category_id"])
    return lut[mask]


def _masks_from_json(json_path: str):
    """(image dicts by phase, mask function) decoding the json here."""
    with open(json_path) as f:
        data = json.load(f)
    for key in ("images", "annos_segmentation"):
        if key not in data:
            raise PrepareError(f"Pascal Context: {json_path!r} has no {key!r}; it is not "
                               f"trainval_merged.json: {DOWNLOAD}.")
    segments = defaultdict(list)
    for seg in data["annos_segmentation"]:
        segments[seg["image_id"]].append(seg)
    max_id = max((int(s["category_id"]) for s in data["annos_segmentation"]), default=0)
    lut = category_lut(max_id)
    phases = defaultdict(list)
    for image in data["images"]:
        phases[image.get("phase")].append(image)
    return phases, lambda image: class_mask(image, segments[image["image_id"]], lut)


def _masks_from_detail(json_path: str, jpeg_dir: str):
    """The same through the Detail API (``from detail import Detail``)."""
    from detail import Detail

    detail = Detail(json_path, jpeg_dir, "trainval")
    lut = category_lut(max(detail.cats))
    phases = {p: detail.getImgs(phase=p) for p in ("train", "val")}
    return phases, lambda image: lut[detail.getMask(image).astype(np.int64)]


def write_context_labels(voc2010_root: str, json_path: str,
                         backend: str = "auto") -> Dict[str, int]:
    """Write ``SegmentationClassContext/*.png`` and the train / val lists; images per split."""
    jpeg_dir = require(os.path.join(voc2010_root, "JPEGImages"), "Pascal Context", DOWNLOAD)
    require(json_path, "Pascal Context", DOWNLOAD, kind="file")
    if backend == "auto":
        try:  # the Detail API's package; an unrelated PyPI package is also named "detail"
            from detail import Detail  # noqa: F401
            backend = "detail"
        except ImportError:
            backend = "json"
    if backend not in ("detail", "json"):
        raise PrepareError(f"--backend must be auto, detail or json, got {backend!r}")
    phases, mask_of = (_masks_from_detail(json_path, jpeg_dir) if backend == "detail"
                       else _masks_from_json(json_path))
    out_dir = os.path.join(voc2010_root, "SegmentationClassContext")
    os.makedirs(out_dir, exist_ok=True)
    # the loader's converted copy of older labels: its marker only knows their count
    shutil.rmtree(out_dir + "_trainIds", ignore_errors=True)
    sets = os.path.join(voc2010_root, "ImageSets", "SegmentationContext")
    os.makedirs(sets, exist_ok=True)
    written = {}
    for split in ("train", "val"):
        ids = []
        images = sorted(phases.get(split, []), key=lambda im: im["file_name"])
        for image in tqdm(images, desc=f"Pascal Context {split} labels", unit="label"):
            stem = os.path.splitext(image["file_name"])[0]
            jpeg = os.path.join(jpeg_dir, image["file_name"])
            if not os.path.isfile(jpeg):
                raise PrepareError(f"Pascal Context: {jpeg!r} (in the json) is missing: the "
                                   f"images are VOC 2010's; {DOWNLOAD}.")
            if image_size(jpeg) != (int(image["width"]), int(image["height"])):
                raise PrepareError(f"Pascal Context: {jpeg!r} is {image_size(jpeg)} but the json "
                                   f"says {image['width']}x{image['height']}: use VOC 2010's "
                                   "images.")
            Image.fromarray(mask_of(image), mode="L").save(os.path.join(out_dir, stem + ".png"))
            ids.append(stem)
        with open(os.path.join(sets, split + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
        written[split] = len(ids)
    return written


def prepare_pascal_context(voc2010_root: str, json_path: Optional[str] = None,
                           backend: str = "auto", expect_counts: Optional[dict] = OFFICIAL_COUNTS,
                           convert: bool = True, num_threads: int = 4):
    """Draw the labels (with ``json_path``), check both splits, run the loader's conversion
    (0 -> 255, v -> v - 1) once; (rows, images written per split or None)."""
    from dl_lib.data.datasets.pascal_context import load_pascal_context_59

    require(voc2010_root, "Pascal Context", DOWNLOAD)
    written = write_context_labels(voc2010_root, json_path, backend) if json_path else None
    sets = os.path.join(voc2010_root, "ImageSets", "SegmentationContext")
    fix = (f"Run this tool with --json trainval_merged.json ({DOWNLOAD})." if not json_path
           else DOWNLOAD + ".")
    rows = []
    for split in ("train", "val"):
        ids = read_list(os.path.join(sets, split + ".txt"), "Pascal Context", fix)
        pairs = listed_pairs(ids, os.path.join(voc2010_root, "JPEGImages"),
                             os.path.join(voc2010_root, "SegmentationClassContext"), ".jpg", ".png",
                             f"Pascal Context {split}", fix)
        rows.append(check_split(
            "Pascal Context 59", split, pairs,
            None if expect_counts is None else expect_counts.get(split), range(60),
            "Labels hold 0 (background) and 1..59; a 459-class mask (the raw getMask output) "
            f"must be mapped to the 59 classes: {fix}",
            f"The splits are the json's train / val phases: {fix}", num_threads))
    if convert:
        for split in ("train", "val"):
            load_pascal_context_59(voc2010_root, split)
    return rows, written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="default: $DL_DATASETS/VOCdevkit/VOC2010")
    p.add_argument("--json", default=None,
                   help="trainval_merged.json; without it, existing label PNGs are only checked")
    p.add_argument("--backend", choices=("auto", "detail", "json"), default="auto",
                   help="draw masks with the Detail API (detail) or by decoding the json here "
                        "(json); auto: detail when importable")
    p.add_argument("--no-convert", action="store_true",
                   help="only check; the loader converts on first use instead")
    add_common_arguments(p, OFFICIAL_COUNTS)
    args = p.parse_args(argv)

    def prepare():
        root = args.root or dataset_path("VOCdevkit", "VOC2010")
        rows, written = prepare_pascal_context(
            root, args.json, args.backend, parse_expect_counts(args.expect_counts, OFFICIAL_COUNTS),
            not args.no_convert, args.num_threads)
        notes = []
        if written:
            notes.append(f"SegmentationClassContext/ drawn from {args.json}: "
                         + ", ".join(f"{s} {n}" for s, n in written.items()) + " images.")
        if not args.no_convert:
            notes.append("SegmentationClassContext_trainIds/ written (background 0 -> 255 "
                         "ignored, 1..59 -> 0..58).")
        print(format_report(rows, notes + [f"Pascal Context 59 at {root}: ready."]))

    return run_main(prepare)
