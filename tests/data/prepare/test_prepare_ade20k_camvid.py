"""tools/prepare_ade20k.py and tools/prepare_camvid.py on tiny trees in the releases' layouts."""
import numpy as np
import pytest

from dl_lib.data.datasets.common import read_mask
from dl_lib.data.prepare.ade20k import main as ade20k_main
from dl_lib.data.prepare.ade20k import prepare_ade20k
from dl_lib.data.prepare.camvid import main as camvid_main
from dl_lib.data.prepare.camvid import prepare_camvid
from dl_lib.data.prepare.common import PrepareError

H, W = 6, 8
RGB = np.zeros((H, W, 3), np.uint8)


def _ade20k(root, write_png):
    ade = root / "ADEChallengeData2016"
    for split, names in (("training", ["ADE_train_00000001", "ADE_train_00000002"]),
                         ("validation", ["ADE_val_00000001"])):
        for k, name in enumerate(names):
            write_png(ade / "images" / split / f"{name}.jpg", RGB)
            write_png(ade / "annotations" / split / f"{name}.png",
                      np.array([[0, 1, 150, 7 + k, 0, 0, 0, 0]] * H, np.uint8))
    return ade


def test_ade20k(datasets_root, write_png, capsys):
    ade = _ade20k(datasets_root, write_png)
    assert ade20k_main(["--root", str(ade)]) == 1
    assert "train: found 2 images, the official release has 20210" in capsys.readouterr().err
    assert ade20k_main(["--root", str(ade), "--expect-counts", "train=2,val=1"]) == 0
    out = capsys.readouterr().out
    assert "0-1, 7-8, 150" in out and "annotations_trainIds/ written" in out
    # converted by the loader's rule (0 -> 255, v -> v - 1)
    np.testing.assert_array_equal(
        read_mask(str(ade / "annotations_trainIds/validation/ADE_val_00000001.png"))[0],
        [255, 0, 149, 6, 255, 255, 255, 255])
    write_png(ade / "annotations" / "validation" / "ADE_val_00000001.png",
              np.full((H, W), 151, np.uint8))
    with pytest.raises(PrepareError, match=r"ADE_val_00000001\.png' holds value\(s\) \[151\] "
                                           r"outside the allowed 0-150"):
        prepare_ade20k(str(ade), None)


def _camvid(root, write_png, lists=True):
    cam = root / "CamVid"
    for split, names in (("train", ["0001TP_006690", "0001TP_006720"]), ("val", ["0016E5_07959"]),
                         ("test", ["0001TP_008550"])):
        for name in names:
            write_png(cam / split / f"{name}.png", RGB)
            write_png(cam / f"{split}annot" / f"{name}.png",
                      np.array([[0, 10, 11, 3, 3, 3, 3, 3]] * H, np.uint8))
        if lists:  # the tutorial's lists name absolute /SegNet/CamVid/... paths
            (cam / f"{split}.txt").write_text("".join(
                f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png\n"
                for n in names))
    return cam


def test_camvid(datasets_root, write_png, capsys):
    cam = _camvid(datasets_root, write_png)
    assert camvid_main(["--root", str(cam)]) == 1
    assert "train: found 2 images, the official release has 367" in capsys.readouterr().err
    rows = prepare_camvid(str(cam), {"train": 2, "val": 1, "test": 1})
    assert [(r["split"], r["images"], r["list"]) for r in rows] == [
        ("train", 2, "train.txt: 2 lines, match"), ("val", 1, "val.txt: 1 lines, match"),
        ("test", 1, "test.txt: 1 lines, match")]
    assert rows[0]["label values"] == "0, 3, 10-11"
    np.testing.assert_array_equal(read_mask(str(cam / "valannot_trainIds/0016E5_07959.png"))[0],
                                  [0, 10, 255, 3, 3, 3, 3, 3])
    # an image the list does not name
    write_png(cam / "val" / "0016E5_08000.png", RGB)
    write_png(cam / "valannot" / "0016E5_08000.png", np.zeros((H, W), np.uint8))
    with pytest.raises(PrepareError, match=r"val\.txt' does not list 'val/0016E5_08000\.png'"):
        prepare_camvid(str(cam), None)
    (cam / "val.txt").unlink()
    assert prepare_camvid(str(cam), None, convert=False)[1]["list"] == "absent"
    write_png(cam / "testannot" / "0001TP_008550.png", np.full((H, W), 12, np.uint8))
    with pytest.raises(PrepareError, match=r"\[12\] outside the allowed 0-11.*colour-coded"):
        prepare_camvid(str(cam), None)
