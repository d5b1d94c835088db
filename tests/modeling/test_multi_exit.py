"""SemanticSegmentor with several exits: eval outputs carry ``sem_seg`` (last) and
``sem_seg_exits`` (all); training losses are weighted per exit by ``MODEL.EXIT_LOSS_WEIGHTS``."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.config import get_cfg
from dl_lib.modeling import SemanticSegmentor

K = 3


class Identity(nn.Module):
    size_divisibility = 1

    def forward(self, x):
        return {"x": x}


class TwoExitHead(nn.Module):
    """Exit 0: a 1x1 conv at stride 2 (cheap); exit 1: a 1x1 conv at stride 1."""
    output_stride = 1

    def __init__(self):
        super().__init__()
        self.cheap = nn.Conv2d(3, K, 1)
        self.full = nn.Conv2d(3, K, 1)

    def forward(self, features):
        x = features["x"]
        return [self.cheap(x[..., ::2, ::2]), self.full(x)]


def _model(exit_loss_weights=()):
    torch.manual_seed(0)
    return SemanticSegmentor(backbone=Identity(), head=TwoExitHead(), pixel_mean=[0.0] * 3,
                             pixel_std=[1.0] * 3, exit_loss_weights=exit_loss_weights)


def _batch(labels=True):
    g = torch.Generator().manual_seed(1)
    batch = []
    for h, w in [(6, 8), (5, 7)]:
        d = {"image": torch.randint(0, 256, (3, h, w), generator=g).float() / 255, "height": h,
             "width": w}
        if labels:
            d["sem_seg"] = torch.randint(0, K, (h, w), generator=g)
        batch.append(d)
    return batch


def test_eval_outputs_last_exit_and_all_exits():
    model = _model().eval()
    with torch.no_grad():
        outs = model(_batch(labels=False))
        # the largest image of the batch: its padded size is its own size
        x = _batch(labels=False)[0]["image"][None]
        cheap, full = model.predict_logits(x)  # predict_logits keeps returning the list
    out = outs[0]
    assert set(out) == {"sem_seg", "sem_seg_exits"}
    assert len(out["sem_seg_exits"]) == 2
    assert all(t.shape == (K, 6, 8) for t in out["sem_seg_exits"])
    assert outs[1]["sem_seg_exits"][0].shape == (K, 5, 7)
    torch.testing.assert_close(out["sem_seg"], out["sem_seg_exits"][-1])
    torch.testing.assert_close(out["sem_seg_exits"][1], full[0])
    torch.testing.assert_close(out["sem_seg_exits"][0], cheap[0], atol=1e-5, rtol=1e-5)


def _ce(logits, target):
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, target, ignore_index=255)


def test_exit_loss_weights_multiply_each_exit():
    batch = _batch()
    plain = _model().train()(batch)
    weighted = _model([0.25, 2.0]).train()(batch)
    assert set(plain) == {"loss_sem_seg_0", "loss_sem_seg_1"}
    torch.testing.assert_close(weighted["loss_sem_seg_0"], 0.25 * plain["loss_sem_seg_0"])
    torch.testing.assert_close(weighted["loss_sem_seg_1"], 2.0 * plain["loss_sem_seg_1"])
    # and the unweighted loss is the plain cross-entropy of each exit
    model = _model()
    images, _ = model.preprocess_images(batch)
    targets = model.preprocess_targets(batch, images.shape[-2:])
    cheap, full = model.forward_logits(images)
    torch.testing.assert_close(plain["loss_sem_seg_1"], _ce(full, targets))


def test_wrong_number_of_exit_weights_names_key_and_counts():
    model = _model([1.0, 1.0, 1.0]).train()
    with pytest.raises(ValueError, match=r"MODEL\.EXIT_LOSS_WEIGHTS has 3 values.*2 exits"):
        model(_batch())


def test_from_config_reads_exit_loss_weights():
    cfg = get_cfg()
    assert list(cfg.MODEL.EXIT_LOSS_WEIGHTS) == []
    cfg.MODEL.BACKBONE.WIDTH = 8
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 8
    cfg.MODEL.EXIT_LOSS_WEIGHTS = [0.5, 1.0]
    assert SemanticSegmentor.from_config(cfg)["exit_loss_weights"] == [0.5, 1.0]
