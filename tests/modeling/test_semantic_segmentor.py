"""SemanticSegmentor: the detectron2 batch contract, loss, padding, postprocessing, predict_logits."""
import pytest
import torch
from torch import nn

from dl_lib.config import get_cfg
from dl_lib.modeling import META_ARCH_REGISTRY, SemanticSegmentor, build_model


def _tiny_cfg():
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.WIDTH = 8
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 8
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    return cfg


def _inputs(sizes, out_sizes=None, labels=True, k=5):
    out_sizes = out_sizes or sizes
    batch = []
    for (h, w), (oh, ow) in zip(sizes, out_sizes):
        d = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8), "height": oh, "width": ow}
        if labels:
            d["sem_seg"] = torch.randint(0, k, (h, w))
        batch.append(d)
    return batch


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_tiny_cfg())


def test_train_loss_finite_and_backward(model):
    model.train()
    losses = model(_inputs([(45, 67), (50, 61)]))
    assert set(losses) == {"loss_sem_seg"}
    assert torch.isfinite(losses["loss_sem_seg"]) and losses["loss_sem_seg"].dim() == 0
    model.zero_grad()
    losses["loss_sem_seg"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


class _PixelLogits(nn.Module):
    """Head whose logits are the normalised image itself (3 classes, stride 1): the test sets
    every logit through the pixel values."""

    output_stride = 1

    def forward(self, x):
        return x


def _pixel_logit_segmentor(loss_weight=1.0):
    backbone = nn.Identity()
    backbone.size_divisibility = 1
    # logits = image / 50, in [0, 5.1]: far from saturating the softmax
    return SemanticSegmentor(backbone=backbone, head=_PixelLogits(), pixel_mean=[0, 0, 0],
                             pixel_std=[50, 50, 50], loss_weight=loss_weight).train()


def _hand_cross_entropy(batch):
    """Mean over labelled pixels (label != 255) of -log softmax(logits)[label], logits = image / 50,
    written out per pixel."""
    terms = []
    for d in batch:
        logits = d["image"].double() / 50
        for y, x in (d["sem_seg"] != 255).nonzero().tolist():
            z = logits[:, y, x]
            terms.append(float(torch.log(torch.exp(z).sum()) - z[d["sem_seg"][y, x]]))
    return sum(terms) / len(terms)


def test_ignore_value_is_excluded():
    torch.manual_seed(0)
    # two sizes, so the smaller image's label is padded (padding must be ignored too)
    batch = _inputs([(5, 7), (4, 6)], k=3)
    batch[0]["sem_seg"][1:4, 2:6] = 255
    batch[1]["sem_seg"][:, 0] = 255
    model = _pixel_logit_segmentor(loss_weight=2.0)
    loss = model(batch)["loss_sem_seg"]
    assert float(loss) == pytest.approx(2.0 * _hand_cross_entropy(batch), rel=1e-5)

    # other logits at ignored pixels: the same loss
    changed = [dict(d, image=d["image"].clone()) for d in batch]
    changed[0]["image"][:, 1:4, 2:6] = torch.randint(0, 256, (3, 3, 4), dtype=torch.uint8)
    changed[1]["image"][:, :, 0] = 255 - changed[1]["image"][:, :, 0]
    torch.testing.assert_close(model(changed)["loss_sem_seg"], loss)
    # other logits at one labelled pixel: another loss
    y, x = 0, 0
    k = int(batch[0]["sem_seg"][y, x])
    changed[0]["image"][:, y, x] = 0
    changed[0]["image"][k, y, x] = 255  # the labelled class becomes the most likely one there
    assert float(model(changed)["loss_sem_seg"]) < float(loss) - 1e-3


def test_eval_outputs_at_original_size_for_odd_sizes(model):
    model.eval()
    with torch.no_grad():
        out = model(_inputs([(37, 53), (64, 31)], out_sizes=[(75, 107), (64, 31)], labels=False))
    assert [o["sem_seg"].shape for o in out] == [(5, 75, 107), (5, 64, 31)]


def test_eval_is_independent_of_batch_padding(model):
    """An image's prediction must not change when a larger image pads the batch."""
    model.eval()
    small, big = _inputs([(40, 40), (96, 128)], labels=False)
    with torch.no_grad():
        alone = model([small])[0]["sem_seg"]
        padded = model([small, big])[0]["sem_seg"]
    # BN in eval mode and zero (mean) padding: the receptive field sees padding, so allow a
    # small difference near the border but the argmax must agree almost everywhere.
    agree = (alone.argmax(0) == padded.argmax(0)).float().mean()
    assert agree > 0.9


def test_padding_to_size_divisibility(model):
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    model.eval()
    with torch.no_grad():
        model(_inputs([(33, 70), (20, 20)], labels=False))
        model.predict_logits(torch.randn(1, 3, 33, 70))
    hook.remove()
    assert model.size_divisibility == 32
    assert seen == [(2, 3, 64, 96), (1, 3, 64, 96)]


@pytest.mark.parametrize("h,w", [(64, 96), (33, 70)])
def test_predict_logits_shapes(model, h, w):
    model.eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        full = model.predict_logits(x)
        native = model.predict_logits(x, native_resolution=True)
    assert full.shape == (2, 5, h, w)
    assert native.shape == (2, 5, -(-h // 4), -(-w // 4))
    assert model.output_stride == 4


def test_predict_logits_matches_forward(model):
    model.eval()
    batch = _inputs([(64, 96)], labels=False)
    x = (batch[0]["image"].float() - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        a = model(batch)[0]["sem_seg"]
        b = model.predict_logits(x[None])[0]
    torch.testing.assert_close(a, b)


class _TwoExitSegmentor(SemanticSegmentor):
    """A subclass that only changes how logits are produced (two exits)."""

    def forward_logits(self, x):
        logits = super().forward_logits(x)
        return [logits * 0.5, logits]


def test_subclass_with_several_exits():
    cfg = _tiny_cfg()
    model = _TwoExitSegmentor(**_TwoExitSegmentor.from_config(cfg))
    losses = model.train()(_inputs([(32, 48), (32, 48)]))
    assert set(losses) == {"loss_sem_seg_0", "loss_sem_seg_1"}
    model.eval()
    batch = _inputs([(32, 48)], labels=False)
    x = (batch[0]["image"].float() - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        logits = model.predict_logits(x[None])
        out = model(batch)
    assert isinstance(logits, list) and [t.shape for t in logits] == [(1, 5, 32, 48)] * 2
    torch.testing.assert_close(out[0]["sem_seg"], logits[1][0], rtol=1e-4, atol=1e-4)


def test_explicit_arguments_without_config():
    backbone = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    backbone.size_divisibility = 2

    class Head(nn.Module):
        output_stride = 2

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            return self.conv(x)

    model = SemanticSegmentor(backbone=backbone, head=Head(), pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1],
                              loss_weight=2.0)
    assert model.size_divisibility == 2
    out = model.eval()(_inputs([(7, 9)], labels=False, k=3))
    assert out[0]["sem_seg"].shape == (3, 7, 9)


def test_registry_and_missing_labels():
    assert "SemanticSegmentor" in META_ARCH_REGISTRY
    cfg = _tiny_cfg()
    cfg.MODEL.META_ARCHITECTURE = "NoSuchSegmentor"
    with pytest.raises(KeyError, match="MODEL.META_ARCHITECTURE"):
        build_model(cfg)
    model = build_model(_tiny_cfg()).train()
    with pytest.raises(KeyError, match="sem_seg"):
        model(_inputs([(64, 64)], labels=False))
