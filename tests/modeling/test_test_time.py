"""Test-time options (dl_lib.modeling.test_time) against hand-built expectations: multi-scale +
flip (TEST.AUG) average softmax probabilities over views, the flip is undone, sliding windows
average overlapping logits by a count map, and DefaultTrainer.test uses them when enabled."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dl_lib.config import get_cfg
from dl_lib.data import DatasetCatalog, MetadataCatalog, build_test_loader
from dl_lib.engine import DefaultTrainer
from dl_lib.modeling import SemanticSegmentor
from dl_lib.modeling.test_time import (TestTimeSegmentor, build_test_time_model, slide_logits,
                                       window_starts)


class FunctionModel(nn.Module):
    """``predict_logits(x)`` = ``fn(x)``; records the input sizes it saw. Identity statistics
    unless given, so the normalised input is the image itself."""

    def __init__(self, fn, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.fn = fn
        self.seen = []
        self.register_buffer("pixel_mean", torch.tensor(mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(std).view(-1, 1, 1), False)

    def predict_logits(self, x, native_resolution=False):
        self.seen.append(tuple(x.shape[-2:]))
        return self.fn(x)


def _two_class(channel1):
    """N×2×H×W logits: class 0 = 0, class 1 = ``channel1`` (N×1×H×W)."""
    return torch.cat([torch.zeros_like(channel1), channel1], dim=1)


def _p1(out):
    """Probability of class 1 from a returned ``sem_seg`` (log-probabilities)."""
    return out.softmax(dim=0)[1]


def _input(h, w, height=None, width=None, image=None):
    image = torch.zeros(3, h, w) if image is None else image
    return {"image": image, "height": height or h, "width": width or w}


# ---- multi-scale -------------------------------------------------------------------------------
def height_logit(x):
    """Class-1 logit = the input's height / 10, everywhere (a global term: scale-dependent)."""
    n, _, h, w = x.shape
    return _two_class(torch.full((n, 1, h, w), h / 10.0))


def test_multi_scale_averages_softmax_over_scales_from_the_original_size():
    model = FunctionModel(height_logit)
    tta = TestTimeSegmentor(model, min_sizes=[10, 20], max_size=0, flip=False).eval()
    # the mapper gave a 5x10 image of a 10x20 original: scales come from the original size
    out = tta([_input(5, 10, height=10, width=20)])[0]
    assert model.seen == [(10, 20), (20, 40)]
    assert out["sem_seg"].shape == (2, 10, 20)
    expected = (torch.sigmoid(torch.tensor(1.0)) + torch.sigmoid(torch.tensor(2.0))) / 2
    torch.testing.assert_close(_p1(out["sem_seg"]), torch.full((10, 20), float(expected)))
    # softmax averaged, not logits (which would give sigmoid(1.5) = 0.818 instead of 0.806)
    assert abs(float(expected) - float(torch.sigmoid(torch.tensor(1.5)))) > 0.01


def test_max_size_caps_the_long_side():
    model = FunctionModel(height_logit)
    tta = TestTimeSegmentor(model, min_sizes=[20], max_size=30).eval()
    tta([_input(10, 20)])
    assert model.seen == [(15, 30)]


def test_without_scales_uses_the_mapped_image_and_resizes_to_the_original():
    model = FunctionModel(height_logit)
    out = TestTimeSegmentor(model, flip=True).eval()([_input(5, 10, height=10, width=20)])[0]
    assert model.seen == [(5, 10), (5, 10)]
    assert out["sem_seg"].shape == (2, 10, 20)


# ---- flip --------------------------------------------------------------------------------------
def column_logit(x):
    """Class-1 logit = the column index in the input the model sees (0..W-1)."""
    n, _, h, w = x.shape
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(n, 1, h, w)
    return _two_class(cols)


def test_flip_is_undone_before_averaging():
    w = 4
    out = TestTimeSegmentor(FunctionModel(column_logit), flip=True).eval()([_input(2, w)])[0]
    # view 1 sees column j at j; the flipped view sees it at w-1-j: average both sigmoids
    j = torch.arange(w, dtype=torch.float32)
    expected = (torch.sigmoid(j) + torch.sigmoid(w - 1 - j)) / 2
    torch.testing.assert_close(_p1(out["sem_seg"]), expected.expand(2, w))


def test_normalises_with_the_models_statistics():
    """Red channel 200 with mean 100, std 50 -> normalised 2; logit = the normalised red."""
    model = FunctionModel(lambda x: _two_class(x[:, :1]), mean=(100.0, 0.0, 0.0),
                          std=(50.0, 1.0, 1.0))
    image = torch.zeros(3, 3, 3)
    image[0] = 200
    out = TestTimeSegmentor(model).eval()([_input(3, 3, image=image)])[0]
    torch.testing.assert_close(_p1(out["sem_seg"]), torch.full((3, 3), float(torch.sigmoid(
        torch.tensor(2.0)))))


def test_multi_exit_each_exit_averaged():
    def two_exits(x):
        return [height_logit(x), -height_logit(x)]

    tta = TestTimeSegmentor(FunctionModel(two_exits), min_sizes=[10, 20], flip=True).eval()
    out = tta([_input(10, 20)])[0]
    assert len(out["sem_seg_exits"]) == 2
    torch.testing.assert_close(out["sem_seg"], out["sem_seg_exits"][1])
    expected = (torch.sigmoid(torch.tensor(1.0)) + torch.sigmoid(torch.tensor(2.0))) / 2
    torch.testing.assert_close(_p1(out["sem_seg_exits"][0]), torch.full((10, 20), float(expected)))
    torch.testing.assert_close(_p1(out["sem_seg_exits"][1]),
                               torch.full((10, 20), float(1 - expected)))


# ---- sliding windows ---------------------------------------------------------------------------
def test_window_starts_shift_the_last_window_inside():
    assert window_starts(25, 10, 6) == [0, 6, 12, 15]
    assert window_starts(10, 10, 6) == [0]
    assert window_starts(7, 10, 6) == [0]  # smaller than the crop: padded by the caller
    assert window_starts(22, 10, 6) == [0, 6, 12]


def start_column_logit(x):
    """Class-1 logit = the smallest value of the window's first channel (its start column when
    the image holds column indices)."""
    n, _, h, w = x.shape
    return _two_class(x[:, :1].amin(dim=(2, 3), keepdim=True).expand(n, 1, h, w))


def test_slide_averages_overlapping_logits_by_count():
    w = 25
    image = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 3, 4, w)
    logits = slide_logits(start_column_logit, image, crop_size=(4, 10), stride=(4, 6))
    # windows start at columns 0, 6, 12, 15 (the last shifted inside); each pixel gets the mean
    # start of the windows covering it
    expected = [0.0] * 6 + [3.0] * 4 + [6.0] * 2 + [9.0] * 3 + [11.0] + [13.5] * 6 + [15.0] * 3
    torch.testing.assert_close(logits[0, 1], torch.tensor(expected).expand(4, w))
    assert logits.shape == (1, 2, 4, w)


def test_slide_pads_small_images_to_the_crop():
    model = FunctionModel(column_logit)
    out = TestTimeSegmentor(model, mode="slide", crop_size=[8, 8], stride=[4, 4]).eval()(
        [_input(5, 7)])[0]
    assert model.seen == [(8, 8)]
    assert out["sem_seg"].shape == (2, 5, 7)
    torch.testing.assert_close(_p1(out["sem_seg"]), torch.sigmoid(torch.arange(7.0)).expand(5, 7))


class _Features(nn.Module):
    size_divisibility = 1

    def forward(self, x):
        return {"x": x}


class _Head(nn.Module):
    """A 1x1 conv; with ``global_term`` plus the window's mean (not fully convolutional)."""
    output_stride = 1

    def __init__(self, global_term=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.global_term = global_term

    def forward(self, f):
        x = f["x"]
        out = self.conv(x)
        return out + 3 * x.mean(dim=(2, 3), keepdim=True) if self.global_term else out


def _segmentor(global_term):
    torch.manual_seed(0)
    return SemanticSegmentor(backbone=_Features(), head=_Head(global_term),
                             pixel_mean=[120.0, 110.0, 100.0], pixel_std=[60.0, 60.0, 60.0]).eval()


@pytest.mark.parametrize("global_term", [False, True])
def test_slide_equals_whole_only_for_a_fully_convolutional_model(global_term):
    model = _segmentor(global_term)
    g = torch.Generator().manual_seed(0)
    inp = _input(40, 50, image=torch.randint(0, 256, (3, 40, 50), generator=g).float())
    with torch.no_grad():
        whole = TestTimeSegmentor(model).eval()([inp])[0]["sem_seg"]
        slide = TestTimeSegmentor(model, mode="slide", crop_size=[16, 16],
                                  stride=[10, 10]).eval()([inp])[0]["sem_seg"]
        plain = model([inp])[0]["sem_seg"]
    torch.testing.assert_close(whole, plain.log_softmax(dim=0))  # whole = the model's own output
    if global_term:
        assert (slide - whole).abs().max() > 0.1
    else:
        torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


def test_slide_combines_with_scales():
    model = FunctionModel(height_logit)
    TestTimeSegmentor(model, min_sizes=[10, 20], mode="slide", crop_size=[8, 8],
                      stride=[8, 8]).eval()([_input(10, 20)])
    # 10x20: 2x3 windows; 20x40: 3x5 windows; all of the crop size
    assert len(model.seen) == 6 + 15 and set(model.seen) == {(8, 8)}


def test_bad_slide_keys_are_errors():
    with pytest.raises(ValueError, match=r"TEST\.SLIDE\.STRIDE .* must not exceed"):
        TestTimeSegmentor(FunctionModel(column_logit), mode="slide", crop_size=[8, 8],
                          stride=[9, 4])
    with pytest.raises(ValueError, match=r"TEST\.MODE"):
        TestTimeSegmentor(FunctionModel(column_logit), mode="sliding")


# ---- from the config, and in DefaultTrainer.test ---------------------------------------------
def test_build_test_time_model_follows_the_keys():
    cfg = get_cfg()
    model = FunctionModel(column_logit)
    assert build_test_time_model(cfg, model) is model
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = [8]
    cfg.TEST.AUG.FLIP = False
    tta = build_test_time_model(cfg, model)
    assert isinstance(tta, TestTimeSegmentor) and tta.min_sizes == [8] and not tta.flip
    cfg.TEST.AUG.ENABLED = False
    cfg.TEST.MODE = "slide"
    tta = build_test_time_model(cfg, model)
    assert tta.mode == "slide" and tta.min_sizes == [] and tta.crop_size == (768, 768)


class HeightSegmentor(FunctionModel):
    """A whole segmentor (forward too) predicting class 1 iff the input is taller than 15."""

    def __init__(self):
        super().__init__(lambda x: _two_class(torch.full_like(x[:, :1], x.shape[-2] - 15.0)))

    def forward(self, batched_inputs):
        outs = []
        for d in batched_inputs:
            logits = self.predict_logits(d["image"][None].float())
            size = (d["height"], d["width"])
            outs.append({"sem_seg": F.interpolate(logits, size=size)[0]})
        return outs


@pytest.fixture
def all_ones_dataset(tmp_path):
    name = "test_tta_all_ones"
    dicts = []
    for i in range(2):
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / f"{i}.png")
        Image.fromarray(np.ones((10, 12), np.uint8)).save(tmp_path / f"{i}_gt.png")
        dicts.append({"file_name": str(tmp_path / f"{i}.png"), "image_id": str(i),
                      "sem_seg_file_name": str(tmp_path / f"{i}_gt.png")})
    for cat in (DatasetCatalog, MetadataCatalog):
        if name in cat:
            cat.remove(name)
    DatasetCatalog.register(name, lambda: list(dicts))
    MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _test_cfg(tmp_path, name):
    cfg = get_cfg()
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def test_default_trainer_test_uses_test_aug(tmp_path, all_ones_dataset):
    cfg = _test_cfg(tmp_path, all_ones_dataset)
    plain = DefaultTrainer.test(cfg, HeightSegmentor())
    assert plain["sem_seg"]["mIoU"] == pytest.approx(0)  # height 10: class 0 everywhere
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = [40]
    cfg.TEST.AUG.FLIP = False
    model = HeightSegmentor()
    aug = DefaultTrainer.test(cfg, model)
    assert model.seen == [(40, 48), (40, 48)]
    assert aug["sem_seg"]["mIoU"] == pytest.approx(100)


def test_test_loader_keeps_original_size_under_test_aug(tmp_path, all_ones_dataset):
    cfg = _test_cfg(tmp_path, all_ones_dataset)
    cfg.INPUT.MIN_SIZE_TEST = 20
    assert tuple(next(iter(build_test_loader(cfg, all_ones_dataset)))[0]["image"].shape) == (3, 20, 24)
    cfg.TEST.AUG.ENABLED = True
    assert tuple(next(iter(build_test_loader(cfg, all_ones_dataset)))[0]["image"].shape) == (3, 10, 12)


def test_every_test_key_is_read_somewhere():
    """No TEST.* key that does nothing: each leaf is named in the library's code outside the
    defaults (``TEST.A.B``, or ``TEST.A`` taken into a variable and its ``.B`` read)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "dl_lib"
    source = "\n".join(p.read_text() for p in root.rglob("*.py")
                       if p.name != "defaults.py" or p.parent.name != "config")

    def leaves(node, prefix):
        for k, v in node.items():
            if hasattr(v, "items"):
                yield from leaves(v, f"{prefix}.{k}")
            else:
                yield f"{prefix}.{k}"

    unread = []
    for key in leaves(get_cfg().TEST, "TEST"):
        parent, leaf = key.rsplit(".", 1)
        direct = re.search(re.escape(key) + r"\b", source)
        via_parent = parent != "TEST" and re.search(re.escape(parent) + r"\b", source) \
            and re.search(r"\." + leaf + r"\b", source)
        if not (direct or via_parent):
            unread.append(key)
    assert unread == [], f"config keys nothing reads: {unread}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_wrapper_follows_the_models_device():
    model = _segmentor(global_term=False).cuda()
    inp = _input(20, 30, image=torch.randint(0, 256, (3, 20, 30)).float())
    cfg = get_cfg()
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = [20, 24]
    cfg.MODEL.PIXEL_MEAN = [120.0, 110.0, 100.0]
    cfg.MODEL.PIXEL_STD = [60.0, 60.0, 60.0]
    with torch.no_grad():
        out = build_test_time_model(cfg, model).eval()([inp])[0]["sem_seg"]
        ref = build_test_time_model(cfg, model.cpu()).eval()([inp])[0]["sem_seg"]
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


def test_from_config_prefers_the_models_statistics():
    cfg = get_cfg()
    cfg.TEST.MODE = "slide"
    own = build_test_time_model(cfg, FunctionModel(column_logit, mean=(1.0, 2.0, 3.0)))
    assert own.pixel_mean.flatten().tolist() == [1.0, 2.0, 3.0]

    class Bare(nn.Module):
        def predict_logits(self, x):
            return column_logit(x)

    bare = build_test_time_model(cfg, Bare())
    assert bare.pixel_mean.flatten().tolist() == pytest.approx(list(cfg.MODEL.PIXEL_MEAN))
