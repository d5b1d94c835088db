"""What every dataset preparation shares: the check of a prepared split and its report.

A preparation tool (``tools/prepare_<dataset>.py``) writes what the loaders read, then checks
the result the way a training job would meet it: every listed image has its label, the number of
images per split is the official one, every label holds only the values the format allows, and
every label has its image's size. It prints one table row per split and raises
:class:`PrepareError` naming the first bad file and the fix.
"""
import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from dl_lib.data.datasets.common import pairs_from_list, read_mask

__all__ = ["PrepareError", "SplitReport", "check_split", "format_values", "format_report",
           "parse_expect_counts", "add_common_arguments", "run_main", "image_size"]

# A partial or test tree has other counts: said in every count error.
COUNTS_HINT = "(for a partial or test tree pass --expect-counts off, or the counts: train=N,val=M)"


class PrepareError(RuntimeError):
    """A prepared dataset that a loader would reject, or input a preparation cannot use; the
    message names the file and the fix."""


class SplitReport(dict):
    """One split's findings (a table row): ``dataset``, ``split``, ``images``, ``expected``,
    ``label values``, ``sizes``."""


def parse_expect_counts(text: str, official: Mapping[str, int]) -> Optional[Dict[str, int]]:
    """``"official"`` -> ``official``; ``"off"`` -> None (no count check); ``"train=3,val=2"``
    -> those counts (splits not named are not checked)."""
    text = text.strip()
    if text == "official":
        return dict(official)
    if text == "off":
        return None
    counts = {}
    for item in text.split(","):
        split, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit() or split.strip() not in official:
            raise PrepareError(
                f"--expect-counts {text!r}: expected 'official', 'off' or SPLIT=N pairs separated "
                f"by commas with SPLIT in {sorted(official)}, e.g. "
                + ",".join(f"{s}={n}" for s, n in official.items()) + ".")
        counts[split.strip()] = int(n)
    return counts


def image_size(path: str) -> Tuple[int, int]:
    """``(width, height)`` from the file's header (no decoding)."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise PrepareError(f"{path!r} does not exist.") from None
    except (OSError, SyntaxError) as e:
        raise PrepareError(f"Cannot read {path!r} ({type(e).__name__}: {e}): the file is truncated "
                           "or not an image; extract or copy it again.") from e


def format_values(values: Iterable[int]) -> str:
    """Sorted values with runs collapsed: ``[0, 1, 2, 5, 255]`` -> ``"0-2, 5, 255"``."""
    values = sorted(set(int(v) for v in values))
    runs, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            runs.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(runs) if runs else "-"


def _label_facts(pair: Tuple[str, str]):
    """(label values, label (w, h), image (w, h)) of one (image, label) pair."""
    image, label = pair
    mask = read_mask(label)
    return np.unique(mask), (mask.shape[1], mask.shape[0]), image_size(image)


def check_split(dataset: str, split: str, pairs: Sequence[Tuple[str, str]],
                expected: Optional[int], valid_values: Iterable[int], value_hint: str,
                count_hint: str, num_threads: int = 4) -> SplitReport:
    """Check one split: ``pairs`` of (image file, label file), all of which must exist.

    ``expected``: the number of images the split must have (None: not checked); ``valid_values``:
    the values a label may hold; ``value_hint`` / ``count_hint``: the fix, appended to the error.
    Every label is read (a few threads: PNG decoding releases the GIL) and its size compared
    with its image's. Returns the split's :class:`SplitReport`; raises :class:`PrepareError`.
    """
    if expected is not None and len(pairs) != expected:
        raise PrepareError(
            f"{dataset} {split}: found {len(pairs)} images, the official release has {expected}. "
            f"{count_hint} {COUNTS_HINT}")
    if not pairs:
        raise PrepareError(f"{dataset} {split}: no images found. {count_hint}")
    valid = np.asarray(sorted(set(int(v) for v in valid_values)))
    seen = set()
    pool = ThreadPoolExecutor(max_workers=max(1, num_threads))
    try:
        facts = tqdm(pool.map(_label_facts, pairs), total=len(pairs), unit="label",
                     desc=f"checking {dataset} {split}", leave=False)
        for (image, label), (values, label_wh, image_wh) in zip(pairs, facts):
            bad = values[~np.isin(values, valid)]
            if bad.size:
                raise PrepareError(
                    f"{dataset} {split}: label {label!r} holds value(s) "
                    f"{[int(v) for v in bad[:8]]} outside the allowed {format_values(valid)}. "
                    f"{value_hint}")
            if label_wh != image_wh:
                raise PrepareError(
                    f"{dataset} {split}: label {label!r} is {label_wh[0]}x{label_wh[1]} but its "
                    f"image {image!r} is {image_wh[0]}x{image_wh[1]}; a label must have its "
                    "image's size. Re-extract both from the release (a resized copy of one of "
                    "them is the usual cause).")
            seen.update(int(v) for v in values)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return SplitReport(dataset=dataset, split=split, images=len(pairs),
                       expected="-" if expected is None else expected,
                       **{"label values": format_values(seen), "sizes": "all match"})


def format_report(rows: Sequence[Mapping], notes: Sequence[str] = ()) -> str:
    """The rows as a table (tabulate, GitHub style), then the notes."""
    from tabulate import tabulate

    text = tabulate([dict(r) for r in rows], headers="keys", tablefmt="github")
    return "\n".join([text, *notes])


def add_common_arguments(parser: argparse.ArgumentParser, official: Mapping[str, int]) -> None:
    parser.add_argument(
        "--expect-counts", default="official", metavar="official|off|SPLIT=N,...",
        help="images per split to require: the official numbers ("
             + ", ".join(f"{s} {n}" for s, n in official.items())
             + "), 'off' for a partial or test tree, or explicit SPLIT=N pairs")
    parser.add_argument("--num-threads", type=int, default=4,
                        help="threads reading labels for the check (default 4)")


def run_main(prepare) -> int:
    """Call ``prepare()`` (which prints its report); a :class:`PrepareError` is printed as one
    line on stderr and gives exit code 1."""
    import sys

    try:
        prepare()
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def listed_pairs(ids: Sequence[str], image_dir: str, label_dir: str, image_ext: str, label_ext: str,
                 dataset: str, fix: str) -> List[Tuple[str, str]]:
    """(image, label) paths for ``ids``; a missing file is a :class:`PrepareError` naming it.

    The same lookup as the dataset loaders' (:func:`dl_lib.data.datasets.common.pairs_from_list`),
    so a tree the preparer accepts is one the loader reads; only the error adds ``fix``."""
    try:
        dicts = pairs_from_list(ids, image_dir, label_dir, image_ext, label_ext, dataset)
    except FileNotFoundError as e:
        raise PrepareError(f"{e} {fix}") from None
    return [(d["file_name"], d["sem_seg_file_name"]) for d in dicts]


def read_list(path: str, dataset: str, fix: str) -> List[str]:
    """The first word of each non-empty line of a split list."""
    if not os.path.isfile(path):
        raise PrepareError(f"{dataset}: the list {path!r} does not exist. {fix}")
    with open(path) as f:
        return [ln.split()[0] for ln in f if ln.strip()]


def require(path: str, dataset: str, fix: str, kind: str = "folder") -> str:
    ok = os.path.isdir(path) if kind == "folder" else os.path.isfile(path)
    if not ok:
        raise PrepareError(f"{dataset}: the {kind} {path!r} does not exist. {fix}")
    return path
