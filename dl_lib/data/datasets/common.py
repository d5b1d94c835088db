"""Shared pieces of the dataset loaders: where roots live, pairing images with masks, and a cheap
check of label values on the first few masks (the most common silent mistake in segmentation)."""
import hashlib
import json
import logging
import os
from typing import Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

from dl_lib.data.datasets.file_lock import exclusive_lock, replace_dir
from dl_lib.utils.env import datasets_root

__all__ = ["dataset_path", "require_dir", "load_sem_seg", "check_mask_values", "read_mask",
           "NUM_CHECKED_MASKS", "ImageReadError", "LabelValueError", "out_of_range_labels",
           "check_label_array", "check_all_masks", "read_error", "LABEL_HINT"]

logger = logging.getLogger(__name__)

# Masks read by check_mask_values: enough to catch a wrong label format, cheap enough to run
# every time a dataset is requested.
NUM_CHECKED_MASKS = 3


def dataset_path(*parts: str) -> str:
    """``$DL_DATASETS/<parts...>`` (default ``<repo>/datasets``), resolved at call time."""
    return os.path.join(datasets_root(), *parts)


def require_dir(path: str, dataset: str, readme_section: str) -> str:
    """Return ``path`` if it is a directory, else raise a FileNotFoundError that names the expected
    path, ``$DL_DATASETS`` and the section of ``datasets/README.md`` that says how to prepare it."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{dataset}: expected the directory {path!r}, which does not exist. Datasets are read "
            f"from $DL_DATASETS (now {datasets_root()!r}; default: <repo>/datasets). See "
            f"datasets/README.md, section '{readme_section}', for the layout and how to prepare it.")
    return path


class ImageReadError(OSError):
    """An image or label file that exists but cannot be decoded (truncated, not an image)."""


class LabelValueError(ValueError):
    """A label mask holding a value that is neither a class index nor the ignore value."""


def read_error(path: str, error: BaseException, what: str = "image") -> ImageReadError:
    """The error for a file PIL / OpenCV failed on: its path, the decoder's words and the fix."""
    return ImageReadError(
        f"Cannot read the {what} {path!r} ({type(error).__name__}: {error}). The file is "
        "truncated, corrupted or not an image: copy or extract it again, or remove it from the "
        "dataset.")


def read_mask(path: str) -> np.ndarray:
    """A label PNG as an H×W integer array. Palette ("P") images give their indices, not colours;
    "L"/"I" images their values. A 3-channel mask is an error (labels must be single-channel);
    a file that cannot be decoded is an ``ImageReadError`` naming it."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                raise ValueError(
                    f"Mask {path!r} has {len(im.getbands())} channels ({im.mode}); label images "
                    "must be single-channel (mode L, P or I) holding class indices, not colours.")
            return np.asarray(im)
    except FileNotFoundError:
        raise  # PIL's message names the path
    except (OSError, SyntaxError) as e:  # truncated / unidentified (PIL raises both kinds)
        raise read_error(path, e, "label mask") from e


# Why a mask holds values beyond the classes, most likely first; every label error ends with it.
LABEL_HINT = (
    "Masks must hold train ids (0..NUM_CLASSES-1, and the ignore value for unlabelled pixels). "
    "Raw dataset ids are the usual cause: for Cityscapes use the *_gtFine_labelTrainIds.png "
    "files, not *_labelIds.png (create them with cityscapesscripts' createTrainIdLabelImgs, "
    "see datasets/README.md); otherwise set MODEL.SEM_SEG_HEAD.NUM_CLASSES / IGNORE_VALUE to the "
    "dataset's. DATASETS.CHECK_LABELS all checks every training mask before training starts.")


def _has_value_in(mask: np.ndarray, lo: int, hi: int) -> bool:
    """Whether a uint8 ``mask`` holds a value in ``[lo, hi]``: one subtraction that wraps around
    (``v - lo`` mod 256 is ``<= hi - lo`` exactly for those values) and one min, no copy of
    booleans, no sort."""
    return lo <= hi and int(np.subtract(mask, np.uint8(lo)).min()) <= hi - lo


def out_of_range_labels(mask: np.ndarray, num_classes: int, ignore_value: int) -> List[int]:
    """The values of ``mask`` that are neither in ``0..num_classes-1`` nor ``ignore_value``
    (sorted, ``[]`` when it is clean). Cheap when clean, what every sample pays: for uint8 masks
    two passes of a subtraction and a min (~1 ms for 1024x2048); other types a max and a min
    (plus a masked max when the ignore value is the extreme). Sorting happens only on an error."""
    if mask.size == 0:
        return []
    if mask.dtype == np.uint8 and 0 <= ignore_value <= 255:
        if ignore_value >= num_classes:
            clean = not (_has_value_in(mask, num_classes, ignore_value - 1)
                         or _has_value_in(mask, ignore_value + 1, 255))
        else:  # the ignore value is a class index: any value >= num_classes is bad
            clean = num_classes > 255 or int(mask.max()) < num_classes
        if clean:
            return []
    else:
        hi, lo = int(mask.max()), int(mask.min())
        if hi == ignore_value:  # the usual case: 255 marks unlabelled pixels
            hi = int(np.where(mask == ignore_value, lo, mask).max())
        if lo == ignore_value:
            lo = int(np.where(mask == ignore_value, hi, mask).min())
        if hi < num_classes and lo >= 0:
            return []
    values = np.unique(mask[(mask >= num_classes) | (mask < 0)])
    return [int(v) for v in values if int(v) != ignore_value]


def check_label_array(mask: np.ndarray, path: str, num_classes: int, ignore_value: int,
                      image: str = "") -> None:
    """Raise ``LabelValueError`` naming ``path`` (and its ``image``) when ``mask`` holds a value
    outside the classes and the ignore value (see :func:`out_of_range_labels`)."""
    bad = out_of_range_labels(mask, num_classes, ignore_value)
    if bad:
        of_image = f" (label of {image!r})" if image else ""
        raise LabelValueError(
            f"Mask {path!r}{of_image} holds label value(s) {bad[:8]}"
            f"{' ...' if len(bad) > 8 else ''} outside 0..{num_classes - 1} "
            f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES {num_classes}) and the ignore value {ignore_value} "
            f"(MODEL.SEM_SEG_HEAD.IGNORE_VALUE). {LABEL_HINT}")


def check_all_masks(files: Sequence[str], num_classes: int, ignore_value: int,
                    num_threads: int = 4) -> int:
    """Read every mask of ``files`` once and raise ``LabelValueError`` naming the first bad one
    (in the order of ``files``); returns the number checked. PNG decoding releases the GIL, so
    a few threads read in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def bad_values(f):
        return out_of_range_labels(read_mask(f), num_classes, ignore_value)

    files = list(files)
    pool = ThreadPoolExecutor(max_workers=max(1, num_threads))
    try:
        for f, bad in zip(files, pool.map(bad_values, files)):
            if bad:
                check_label_array(read_mask(f), f, num_classes, ignore_value)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # stop at the first bad mask
    logger.info("DATASETS.CHECK_LABELS all: %d masks hold only classes 0..%d and %d", len(files),
                num_classes - 1, ignore_value)
    return len(files)


def _strip_ext(rel: str, ext: str) -> Optional[str]:
    return rel[: -len(ext)] if rel.endswith(ext) else None


def _walk_files(root: str, ext: str) -> List[str]:
    """Relative paths (with ``/``) under root ending with ext, sorted."""
    out = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.endswith(ext):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def load_sem_seg(image_root: str, gt_root: str, image_ext: str = ".jpg", gt_ext: str = ".png",
                 name: str = "dataset") -> List[dict]:
    """Pair ``image_root/<rel><image_ext>`` with ``gt_root/<rel><gt_ext>`` (same relative stem).

    Returns a list of dicts with ``file_name``, ``sem_seg_file_name`` and ``image_id`` (the stem),
    sorted by stem. Raises FileNotFoundError naming the folder when a root is missing, when it
    holds no image, or when an image has no mask.
    """
    for root, what in ((image_root, "image"), (gt_root, "ground-truth")):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{name}: the {what} folder {root!r} does not exist.")
    images = _walk_files(image_root, image_ext)
    if not images:
        raise FileNotFoundError(
            f"{name}: no '*{image_ext}' images found under {image_root!r} (check image_ext).")
    gts = {_strip_ext(r, gt_ext) for r in _walk_files(gt_root, gt_ext)}
    dicts, missing = [], []
    for rel in images:
        stem = _strip_ext(rel, image_ext)
        if stem not in gts:
            missing.append(rel)
            continue
        dicts.append({
            "file_name": os.path.join(image_root, rel),
            "sem_seg_file_name": os.path.join(gt_root, stem + gt_ext),
            "image_id": stem,
        })
    if missing:
        raise FileNotFoundError(
            f"{name}: {len(missing)} of {len(images)} images under {image_root!r} have no mask "
            f"'<same relative path>{gt_ext}' under {gt_root!r}; first: {missing[0]!r} "
            f"(expected {os.path.join(gt_root, _strip_ext(missing[0], image_ext) + gt_ext)!r}).")
    logger.info("Loaded %d images from %s", len(dicts), image_root)
    return dicts


def check_mask_values(files: Sequence[str], num_classes: int, ignore_label: int,
                      extra_valid: Iterable[int] = (), hint: str = "", n: int = NUM_CHECKED_MASKS) -> None:
    """Read the first ``n`` masks and raise ValueError if one holds a value that is neither a class
    index ``0..num_classes-1`` nor ``ignore_label`` (nor one of ``extra_valid``, raw values the loader
    maps itself). ``hint`` names the likely cause for this dataset."""
    valid = set(range(num_classes)) | {ignore_label} | set(extra_valid)
    for f in list(files)[:n]:
        values = np.unique(read_mask(f))
        bad = [int(v) for v in values if int(v) not in valid]
        if bad:
            raise ValueError(
                f"Mask {f!r} holds label value(s) {bad[:8]} outside 0..{num_classes - 1} "
                f"(num_classes {num_classes}) and the ignore label {ignore_label}. {hint}".rstrip())


def default_colors(num_classes: int, seed: int = 0) -> List[tuple]:
    """Distinct-looking RGB colours for datasets that define none (deterministic)."""
    rng = np.random.RandomState(seed)
    return [tuple(int(c) for c in rng.randint(40, 256, size=3)) for _ in range(num_classes)]


# Written last into a converted folder, so its presence (with the same mask count and lookup
# table) is what says "complete". A file count is not enough: it also matches a folder that another
# process was still filling, or one left behind when a run was killed.
CONVERSION_MARKER = ".conversion_complete.json"


def _conversion_record(num_masks: int, lut: np.ndarray) -> dict:
    return {"num_masks": int(num_masks), "lut_sha1": hashlib.sha1(lut.tobytes()).hexdigest()}


def _conversion_is_complete(dst_dir: str, record: dict) -> bool:
    try:
        with open(os.path.join(dst_dir, CONVERSION_MARKER)) as f:
            return json.load(f) == record
    except (OSError, ValueError):
        return False


def convert_label_dir(src_dir: str, dst_dir: str, lut: np.ndarray, ext: str = ".png",
                      desc: str = "converting labels") -> str:
    """Write ``lut[mask]`` for every ``src_dir/**/*<ext>`` into ``dst_dir`` (same relative paths,
    ``.png``) once, and return ``dst_dir``.

    Safe when several processes ask at once (ranks of a job, parallel runs): one converts under
    the lock file ``dst_dir + '.lock'`` while the others wait and then reuse its result. The
    conversion is written into a temporary sibling (``dst_dir + '.tmp-<pid>'``) with the marker
    file ``CONVERSION_MARKER`` last, then renamed into place; a ``dst_dir`` without the marker
    (or with one for another mask count / lookup table) is redone, and temporary siblings left by
    a killed run are removed.

    Used for datasets whose raw masks are not train ids (ADE20K / Pascal Context: 0 = other ->
    255 and shift by -1; CamVid: 11 = void -> 255), so every ``sem_seg_file_name`` downstream
    (mapper, evaluators) holds train ids with 255 = ignore.
    """
    lut = np.asarray(lut, dtype=np.uint8)
    files = _walk_files(src_dir, ext)
    record = _conversion_record(len(files), lut)
    if _conversion_is_complete(dst_dir, record):
        return dst_dir
    try:
        with exclusive_lock(dst_dir + ".lock"):
            if not _conversion_is_complete(dst_dir, record):  # another process may have finished
                _convert_into_place(src_dir, dst_dir, files, lut, ext, desc, record)
    except PermissionError as e:
        # A read-only tree converted before the marker existed: use it as it is.
        if os.path.isdir(dst_dir) and len(_walk_files(dst_dir, ".png")) == len(files):
            logger.warning("Using the converted labels %s as they are (no %s, and the folder is "
                           "not writable: %s)", dst_dir, CONVERSION_MARKER, e)
            return dst_dir
        raise PermissionError(
            f"Cannot write the converted labels {dst_dir!r} ({e}). Make $DL_DATASETS writable, or "
            "run the conversion once where it is (see datasets/README.md).") from e
    return dst_dir


def _convert_into_place(src_dir: str, dst_dir: str, files: Sequence[str], lut: np.ndarray,
                        ext: str, desc: str, record: dict) -> None:
    """The conversion itself; the caller holds the lock."""
    import shutil

    from tqdm import tqdm

    parent, base = os.path.split(os.path.abspath(dst_dir))
    # Under the lock no other process is writing, so every temporary sibling is a leftover.
    for name in os.listdir(parent):
        if name.startswith(base + ".tmp") or name.startswith(base + ".old"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    tmp = f"{dst_dir}.tmp-{os.getpid()}"
    os.makedirs(tmp)
    try:
        for rel in tqdm(files, desc=desc, unit="mask"):
            out = os.path.join(tmp, rel[: -len(ext)] + ".png")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            Image.fromarray(lut[read_mask(os.path.join(src_dir, rel))]).save(out)
        with open(os.path.join(tmp, CONVERSION_MARKER), "w") as f:
            json.dump(record, f)
        replace_dir(tmp, dst_dir)  # also replaces an incomplete or outdated one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reduce_zero_label_lut() -> np.ndarray:
    """0 -> 255 (ignore), v -> v - 1 for 1..254, 255 stays 255."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = 255
    lut[255] = 255
    return lut.astype(np.uint8)


def read_split_list(path: str, dataset: str, readme_section: str) -> List[str]:
    """Non-empty stripped lines of a split file (e.g. VOC ``ImageSets/Segmentation/train.txt``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{dataset}: the split list {path!r} does not exist (under $DL_DATASETS = "
            f"{datasets_root()!r}). See datasets/README.md, section '{readme_section}'.")
    with open(path) as f:
        return [ln.strip().split()[0] for ln in f if ln.strip()]


def pairs_from_list(ids: Sequence[str], image_dir: str, gt_dir: str, image_ext: str, gt_ext: str,
                    dataset: str) -> List[dict]:
    """Dataset dicts for ids listed in a split file; error naming the first missing file."""
    dicts = []
    for i in ids:
        img = os.path.join(image_dir, i + image_ext)
        gt = os.path.join(gt_dir, i + gt_ext)
        for f in (img, gt):
            if not os.path.isfile(f):
                raise FileNotFoundError(f"{dataset}: {f!r} is listed in the split file but missing.")
        dicts.append({"file_name": img, "sem_seg_file_name": gt, "image_id": i})
    return dicts
