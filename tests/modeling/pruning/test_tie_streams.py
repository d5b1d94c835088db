"""MODEL.PRUNING.TIE_STREAMS: prepare_model makes the masks of each residual stream one mask
(shared logits), so a trained model's compression can remove stream channels; without it every
mask learns its own subset, as the original."""
import pytest
import torch

from dl_lib.analysis.flops import flop_count
from dl_lib.config import get_cfg
from dl_lib.modeling.acosp.pspnet import pspnet18
from dl_lib.modeling.pruning import channel_masks, prepare_model, to_hard_masks
from dl_lib.modeling.pruning.compress import compress, stream_mask_groups
from dl_lib.modeling.pruning.config import add_pruning_config

pytestmark = [pytest.mark.usefixtures("one_thread")]


def _masked(tie: bool):
    cfg = get_cfg()
    add_pruning_config(cfg)
    cfg.MODEL.PRUNING.ENABLED = True
    cfg.MODEL.PRUNING.SPARSITY = 0.75
    cfg.MODEL.PRUNING.PLACEMENT = "after_bn"
    cfg.MODEL.PRUNING.TIE_STREAMS = tie
    torch.manual_seed(0)
    model = prepare_model(cfg, pspnet18())
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_stream_masks_share_logits_only_when_tied(tie):
    model = _masked(tie)
    assert model.training  # prepare_model traced in eval mode and restored the mode
    x = torch.randn(1, 3, 33, 33)
    groups = stream_mask_groups(model.eval(), x)
    assert len(groups) == 4  # one stream per stage of the ResNet
    masks = channel_masks(model)
    for group in groups:
        logits = [masks[path].weight for path in group]
        assert all((w is logits[0]) == tie for w in logits[1:]), group
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))


def test_tied_streams_compress_further_with_equal_outputs():
    x = torch.randn(1, 3, 33, 33)
    macs = {}
    for tie in (False, True):
        model = _masked(tie).eval()
        to_hard_masks(model)
        small = compress(model, x)
        with torch.no_grad():
            torch.testing.assert_close(small.forward_logits(x), model.forward_logits(x),
                                       atol=1e-4, rtol=1e-4)
        macs[tie] = flop_count(small.to("meta"), (65, 65)).total
    assert macs[True] < 0.9 * macs[False]  # the streams keep k channels instead of a union
