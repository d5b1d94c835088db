"""dl_lib.engine.Predictor on the embedded street scenes with the FPN quickstart at a tiny size:
the same logits as the model's own evaluation of the mapped dataset image, the test mapper's
resize, BGR / RGB input, INPUT.FORMAT, test-time flip + slide, strict weights and bad input."""
import os

import numpy as np
import pytest
import torch

from dl_lib import playground
from dl_lib.checkpoint import Checkpointer
from dl_lib.checkpoint.checkpointer import IncompatibleCheckpointError
from dl_lib.data import DatasetCatalog
from dl_lib.data.mapper import SemSegDatasetMapper, read_image
from dl_lib.engine import Prediction, Predictor
from dl_lib.engine.predictor import PredictorWeightsError
from dl_lib.modeling.test_time import TestTimeSegmentor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYGROUND = os.path.join(REPO, "playground", "Quickstart", "FPN.R18W32.Synthetic")
H, W = 64, 128  # the scenes' size here
SMALL = ["INPUT.MIN_SIZE_TEST", "48"]  # the test mapper resizes 64x128 -> 48x96


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """(cfg with MODEL.WEIGHTS, the model whose weights it names, in eval mode, first val dict)."""
    from dl_lib.data.datasets import synthetic

    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    for key, value in dict(num_train=2, num_val=2, size=(H, W)).items():
        monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, key, value)
    torch.manual_seed(0)
    cfg, model = playground.build(PLAYGROUND, SMALL)
    with torch.no_grad():  # weights no fresh initialisation can have
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    Checkpointer(model, str(tmp_path / "ckpt"), save_to_disk=True).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "ckpt" / "model_final.pth")
    model.eval()
    return cfg, model, DatasetCatalog.get("synthetic_cityscapes_val")[0]


def _own_eval(model, cfg, d, **mapper_kw):
    with torch.no_grad():
        return model([SemSegDatasetMapper(cfg, False, **mapper_kw)(d)])[0]


def test_predictor_equals_the_models_eval_output(trained):
    cfg, model, d = trained
    image = read_image(d["file_name"])
    predictor = Predictor(cfg, playground=PLAYGROUND)
    assert predictor.input_format == "RGB"  # the config's INPUT.FORMAT
    inputs = predictor.model_input(image)
    assert tuple(inputs["image"].shape) == (3, 48, 96)
    assert (inputs["height"], inputs["width"]) == (H, W)
    pred = predictor(image)
    assert isinstance(pred, Prediction)
    assert tuple(pred.logits.shape) == (19, H, W) and pred.labels.shape == (H, W)
    want = _own_eval(model, cfg, d)["sem_seg"]
    torch.testing.assert_close(pred.logits, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pred.labels, want.argmax(0).numpy())
    assert pred.exit_logits == [] and pred.exit_masks == [] and pred.gates is None
    # without a playground the registry builds the same network from the config
    torch.testing.assert_close(Predictor(cfg)(image).logits, want, rtol=0, atol=1e-6)


def test_bgr_and_rgb_inputs_and_input_format(trained):
    cfg, model, d = trained
    rgb = read_image(d["file_name"])
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    predictor = Predictor(cfg, model=model)
    from_rgb = predictor(rgb).logits
    torch.testing.assert_close(predictor(bgr, input_format="BGR").logits, from_rgb, rtol=0, atol=0)
    assert not torch.allclose(predictor(rgb, input_format="BGR").logits, from_rgb)  # order matters
    torch.testing.assert_close(Predictor(cfg, model=model, input_format="BGR")(bgr).logits,
                               from_rgb, rtol=0, atol=0)
    # INPUT.FORMAT BGR: the predictor expects BGR arrays by default and feeds the model BGR,
    # as the test mapper does
    cfg_bgr = cfg.clone()
    cfg_bgr.INPUT.FORMAT = "BGR"
    predictor_bgr = Predictor(cfg_bgr, model=model)
    assert predictor_bgr.input_format == "BGR"
    torch.testing.assert_close(predictor_bgr(bgr).logits, _own_eval(model, cfg_bgr, d)["sem_seg"],
                               rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="input_format must be 'RGB' or 'BGR'"):
        predictor(rgb, input_format="HSV")


def test_test_time_flip_and_slide(trained):
    cfg, model, d = trained
    cfg = cfg.clone()
    cfg.merge_from_list(["TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", [48],
                         "TEST.AUG.FLIP", True, "TEST.MODE", "slide",
                         "TEST.SLIDE.CROP_SIZE", [32, 64], "TEST.SLIDE.STRIDE", [16, 32]])
    pred = Predictor(cfg, model=model)(read_image(d["file_name"]))
    wrapper = TestTimeSegmentor(model, min_sizes=[48], flip=True, mode="slide",
                                crop_size=[32, 64], stride=[16, 32]).eval()
    # with TEST.AUG the loader keeps the original size; the wrapper resizes per scale
    want = _own_eval(wrapper, cfg, d, augmentations=[])["sem_seg"]
    torch.testing.assert_close(pred.logits, want, rtol=0, atol=1e-6)
    plain = _own_eval(model, cfg, d)["sem_seg"]
    assert not torch.allclose(pred.logits.softmax(0), plain.softmax(0), atol=1e-3)


def test_weights_load_strictly_and_bad_input(trained, tmp_path):
    cfg, model, d = trained
    empty = cfg.clone()
    empty.MODEL.WEIGHTS = ""
    with pytest.raises(PredictorWeightsError, match="MODEL.WEIGHTS is empty"):
        Predictor(empty, playground=PLAYGROUND)
    state = {k: v for k, v in model.state_dict().items()}
    dropped = sorted(state)[0]
    del state[dropped]
    torch.save({"model": state}, tmp_path / "partial.pth")
    partial = cfg.clone()
    partial.MODEL.WEIGHTS = str(tmp_path / "partial.pth")
    with pytest.raises(IncompatibleCheckpointError, match=dropped.replace(".", r"\.")):
        Predictor(partial, playground=PLAYGROUND)
    predictor = Predictor(cfg, model=model)
    with pytest.raises(ValueError, match=r"H x W x 3.*\(64, 128, 4\)"):
        predictor(np.zeros((64, 128, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((64, 128, 3), np.float32))
