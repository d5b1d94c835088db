"""tools/prepare_pascal_context.py on a tiny VOC 2010 tree with a json in trainval_merged.json's
format (images with phase, annos_segmentation as COCO compressed RLE strings)."""
import json
import os

import numpy as np
import pytest

from dl_lib.data import DatasetCatalog
from dl_lib.data.datasets.common import read_mask
from dl_lib.data.datasets.pascal_context import PASCAL_CONTEXT_59_CLASSES
from dl_lib.data.prepare.common import PrepareError
from dl_lib.data.prepare.pascal_context import (CONTEXT_59_CATEGORY_IDS, _rle_counts_from_string,
                                                decode_rle, main, prepare_pascal_context)

H, W = 5, 7
# Category ids of trainval_merged.json (the Detail API's names for them)
AEROPLANE, PERSON, TVMONITOR, WOOD, NOT_IN_59 = 2, 284, 427, 458, 3


def test_rle_strings_by_hand():
    # Each run is 5-bit groups + 48; 0x20 = more groups follow. "321" = runs 3, 2, 1.
    assert _rle_counts_from_string("321") == [3, 2, 1]
    # 40 = 8 + 1*32 -> 'X' (8 | 0x20, + 48 = 88) then '1'; the 4th run is stored as 4 - 3 = 1
    assert _rle_counts_from_string("53X11") == [5, 3, 40, 4]
    # a negative difference: 2 - 5 = -3 -> 29 (sign bit 0x10 set) -> 'M'
    assert _rle_counts_from_string(b"151M") == [1, 5, 1, 2]


def test_decode_rle_column_major():
    # runs 1 zero, 2 ones, 3 zeros, filled down the columns of a 2x3 mask
    np.testing.assert_array_equal(decode_rle({"size": [2, 3], "counts": [1, 2, 3]}),
                                  [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(decode_rle({"size": [2, 3], "counts": "123"}),
                                  [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(PrepareError, match="add up to 5, not its size 2x3"):
        decode_rle({"size": [2, 3], "counts": [1, 4]})


def _encode(mask):
    """COCO's compressed RLE string of a 0/1 mask (the encoder side of the format, written from
    its definition: column-major runs starting with zeros; from the 4th run on the difference to
    the run two before; 5-bit groups, 0x20 = continue, sign in 0x10 of the last group)."""
    flat = mask.T.reshape(-1)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _tree(root, write_png, json_width=W):
    """Two train images and one val image; segments overlap (later on top) and one category is
    outside the 59."""
    voc = root / "VOCdevkit" / "VOC2010"
    rng = np.random.RandomState(0)
    images, annos, expected = [], [], {}
    for k, (name, phase) in enumerate([("2008_000002", "train"), ("2008_000003", "val"),
                                       ("2008_000007", "train")]):
        write_png(voc / "JPEGImages" / f"{name}.jpg", np.zeros((H, W, 3), np.uint8))
        image_id = int(name.replace("_", ""))
        images.append({"image_id": image_id, "file_name": f"{name}.jpg", "height": H,
                       "width": json_width, "phase": phase})
        want = np.zeros((H, W), np.uint8)
        for cat in (PERSON, AEROPLANE, NOT_IN_59, TVMONITOR, WOOD):
            m = (rng.rand(H, W) > 0.6).astype(np.uint8)
            annos.append({"id": len(annos) + 1, "image_id": image_id, "category_id": cat,
                          "segmentation": {"size": [H, W], "counts": _encode(m)}})
            label = 0 if cat == NOT_IN_59 else CONTEXT_59_CATEGORY_IDS.index(cat) + 1
            want[m > 0] = label
        expected[name] = want
    json_path = root / "trainval_merged.json"
    json_path.write_text(json.dumps({"images": images, "annos_segmentation": annos}))
    return voc, json_path, expected


def test_category_ids_are_the_59_classes_in_order():
    assert list(CONTEXT_59_CATEGORY_IDS) == sorted(CONTEXT_59_CATEGORY_IDS)
    names = dict(zip(CONTEXT_59_CATEGORY_IDS, PASCAL_CONTEXT_59_CLASSES))
    assert (names[AEROPLANE], names[PERSON], names[TVMONITOR], names[WOOD]) == (
        "aeroplane", "person", "tvmonitor", "wood")


def test_labels_from_json_and_loader(datasets_root, write_png):
    voc, json_path, expected = _tree(datasets_root, write_png)
    rows, written = prepare_pascal_context(str(voc), str(json_path), backend="json",
                                           expect_counts={"train": 2, "val": 1})
    assert written == {"train": 2, "val": 1}
    assert (voc / "ImageSets/SegmentationContext/train.txt").read_text().split() == [
        "2008_000002", "2008_000007"]
    for name, want in expected.items():
        label = voc / "SegmentationClassContext" / f"{name}.png"
        np.testing.assert_array_equal(read_mask(str(label)), want)
    assert [(r["split"], r["images"], r["expected"]) for r in rows] == [
        ("train", 2, 2), ("val", 1, 1)]
    # the loader's 59-class view: background ignored, classes shifted to 0..58
    (d,) = DatasetCatalog.get("pascal_context_59_sem_seg_val")
    want = expected["2008_000003"].astype(np.int64) - 1
    want[want < 0] = 255
    np.testing.assert_array_equal(read_mask(d["sem_seg_file_name"]), want)
    # labels drawn again (another json, same number of images): the loader converts them anew
    _, json2, _ = _tree(datasets_root / "other", write_png)
    data = json.loads(json2.read_text())
    for seg in data["annos_segmentation"]:
        seg["category_id"] = WOOD
    json_path.write_text(json.dumps(data))
    prepare_pascal_context(str(voc), str(json_path), backend="json", expect_counts=None)
    (d,) = DatasetCatalog.get("pascal_context_59_sem_seg_val")
    assert set(np.unique(read_mask(d["sem_seg_file_name"]))) <= {255, 58}


def test_errors(datasets_root, write_png, capsys):
    voc, json_path, _ = _tree(datasets_root, write_png)
    assert main(["--root", str(voc), "--json", str(json_path), "--backend", "json"]) == 1
    err = capsys.readouterr().err
    assert "train: found 2 images, the official release has 4996" in err
    assert "--expect-counts off" in err
    assert main(["--root", str(voc), "--expect-counts", "off"]) == 0  # labels exist now: check only
    assert "| val " in capsys.readouterr().out
    voc2, json2, _ = _tree(datasets_root / "other", write_png, json_width=W + 1)
    with pytest.raises(PrepareError, match=r"2008_000002\.jpg' is \(7, 5\) but the json says 8x5"):
        prepare_pascal_context(str(voc2), str(json2), backend="json", expect_counts=None)
    os.remove(voc / "SegmentationClassContext" / "2008_000007.png")
    with pytest.raises(PrepareError, match=r"2008_000007\.png' is listed in the split file but missing.*--json"):
        prepare_pascal_context(str(voc), None, expect_counts=None)
