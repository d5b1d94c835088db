import pytest

from dl_lib.data import DatasetCatalog, MetadataCatalog
from dl_lib.data.catalog import LazyValue


def test_register_get_and_errors(unique_name):
    DatasetCatalog.register(unique_name, lambda: [{"file_name": "a"}])
    assert DatasetCatalog.get(unique_name) == [{"file_name": "a"}]
    with pytest.raises(KeyError, match="already registered"):
        DatasetCatalog.register(unique_name, lambda: [])
    with pytest.raises(KeyError, match="Did you mean 'cityscapes_fine_sem_seg_val'"):
        DatasetCatalog.get("cityscapes_fine_sem_seg_vall")


def test_metadata_set_conflict_and_lazy(unique_name):
    m = MetadataCatalog.get(unique_name).set(ignore_label=255, stuff_classes=["a"])
    assert MetadataCatalog.get(unique_name) is m
    m.ignore_label = 255  # same value: fine
    with pytest.raises(AssertionError, match="refusing to change"):
        m.ignore_label = 0
    with pytest.raises(AttributeError, match="has no attribute 'gt_dir'"):
        m.gt_dir
    calls = []
    m.set(gt_dir=LazyValue(lambda: calls.append(1) or "/x"))
    repr(m)
    assert calls == []  # repr does not resolve
    assert m.gt_dir == "/x" and m.get("gt_dir") == "/x" and m.as_dict()["gt_dir"] == "/x"


def test_builtin_names_registered():
    names = DatasetCatalog.list()
    for n in ["cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val", "cityscapes_fine_sem_seg_test",
              "ade20k_sem_seg_train", "ade20k_sem_seg_val", "voc_2012_sem_seg_train", "voc_2012_sem_seg_val",
              "voc_2012_sem_seg_train_aug", "pascal_context_59_sem_seg_train", "pascal_context_59_sem_seg_val",
              "camvid_sem_seg_train", "camvid_sem_seg_val", "camvid_sem_seg_test",
              "synthetic_cityscapes_train", "synthetic_cityscapes_val"]:
        assert n in names
    m = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert len(m.stuff_classes) == 19 and m.stuff_colors[0] == (128, 64, 128)
    assert m.ignore_label == 255 and m.evaluator_type == "cityscapes_sem_seg"
    assert len(MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes) == 150
    assert len(MetadataCatalog.get("voc_2012_sem_seg_val").stuff_classes) == 21
    assert len(MetadataCatalog.get("pascal_context_59_sem_seg_val").stuff_classes) == 59
    assert len(MetadataCatalog.get("camvid_sem_seg_val").stuff_classes) == 11
