"""compress: the compressed network computes what the hard-masked one does (residual streams,
concatenation, max-unpool; both placements; tied and independent stream masks), its channel
configuration rebuilds it from a fresh model, and bad input is refused clearly."""
import pytest
import torch
from torch import nn

from compress_nets import ResidualNet, UnpoolNet, randomize_norms
from dl_lib.modeling.pruning import attach_channel_masks, channel_masks, to_hard_masks
from dl_lib.modeling.pruning.channels import (FoldedConv2d, apply_channel_config,
                                              channel_config_of, parse_entry)
from dl_lib.modeling.pruning.compress import (CompressError, compress, stream_mask_groups,
                                              tie_stream_masks)

X = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(1))


def masked(net_cls, placement, tie=False, sparsity=0.5, seed=0):
    torch.manual_seed(seed)
    model = randomize_norms(net_cls(), seed)
    attach_channel_masks(model, sparsity, placement=placement, min_channels=2)
    if tie:
        tie_stream_masks(model, X)
    to_hard_masks(model)
    return model.eval()


def params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("net_cls", [ResidualNet, UnpoolNet])
@pytest.mark.parametrize("placement", ["original", "after_bn"])
@pytest.mark.parametrize("tie", [False, True])
def test_compressed_equals_masked(net_cls, placement, tie):
    model = masked(net_cls, placement, tie)
    small = compress(model, X)
    with torch.no_grad():
        expected, got = model(X), small(X)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()
    assert not any(isinstance(m, type(next(iter(channel_masks(model).values()))))
                   for m in small.modules())
    assert params(small) < 0.6 * params(net_cls())
    # Another input size through the same compressed network (FoldedConv2d's cache per size).
    y = torch.randn(1, 3, 24, 12)
    with torch.no_grad():
        assert torch.allclose(small(y), model(y), atol=1e-5, rtol=1e-5)


def test_original_placement_folds_constants_exactly_at_padded_borders():
    model = masked(ResidualNet, "original")
    small = compress(model, X)
    entries = channel_config_of(small)
    folded = [e for e in entries if e.endswith(",fold")]
    assert folded and all(isinstance(small.get_submodule(e.partition("=")[0]), FoldedConv2d)
                          for e in folded)
    # A plain bias (the interior constant) would be wrong at the zero-padded border.
    with torch.no_grad():
        conv = small.get_submodule(folded[0].partition("=")[0])
        kernel = conv.fold_kernel.clone()
        interior = kernel.sum(dim=(1, 2, 3))
        term = torch.nn.functional.conv2d(torch.ones(1, 1, 8, 8), kernel, None, conv.stride,
                                          conv.padding, conv.dilation)[0]
    assert torch.allclose(term[:, 4, 4], interior, atol=1e-6)
    assert not torch.allclose(term[:, 0, 0], interior, atol=1e-3)
    # after BN nothing is left to fold
    assert not any("," in e.partition("=")[2].partition(",")[2]
                   for e in channel_config_of(compress(masked(ResidualNet, "after_bn"), X)))


def test_residual_stream_keeps_the_union_or_one_tied_mask():
    groups = stream_mask_groups(masked(ResidualNet, "after_bn"), X)
    assert groups == [["layer.0.conv3", "layer.0.downsample.0", "layer.1.conv3"]]
    untied = masked(ResidualNet, "after_bn")
    union = torch.zeros(32, dtype=torch.bool)
    for path in groups[0]:
        union |= channel_masks(untied)[path].keep_mask()
    small = compress(untied, X)
    assert small.layer[0].conv3.out_channels == int(union.sum()) > 16
    assert small.layer[1].conv1.in_channels == int(union.sum())
    tied = compress(masked(ResidualNet, "after_bn", tie=True), X)
    assert tied.layer[0].conv3.out_channels == tied.layer[0].downsample[0].out_channels == 16
    assert params(tied) < params(small)


def test_unpool_keeps_the_nonzero_constants_of_the_original_placement():
    # e3 feeds the unpool (with e2's pool indices, one space): after BN its cut channels are 0
    # and go; before BN they carry beta' != 0, which the unpool scatters: they stay.
    model = masked(UnpoolNet, "original", tie=True)
    keep = channel_masks(model)["e3.0"].keep_mask()
    bn = model.e3[1]
    constant = torch.relu(-bn.running_mean / torch.sqrt(bn.running_var + bn.eps) * bn.weight
                          + bn.bias)
    expected = int((keep | (constant > 0)).sum())
    assert compress(model, X).e3[0].out_channels == expected > int(keep.sum())
    after = masked(UnpoolNet, "after_bn", tie=True)
    small = compress(after, X)
    assert small.e3[0].out_channels == small.e2[0].out_channels == int(
        channel_masks(after)["e3.0"].keep_mask().sum())


@pytest.mark.parametrize("placement", ["original", "after_bn"])
def test_channel_config_rebuilds_a_fresh_model_that_loads_strictly(placement):
    small = compress(masked(ResidualNet, placement), X)
    fresh = apply_channel_config(ResidualNet(), channel_config_of(small))
    fresh.load_state_dict(small.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(X), small(X), atol=1e-6)
    assert channel_config_of(fresh) == channel_config_of(small)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="expected 'module.path=in,out'"):
        parse_entry("stem.0.0=3")
    with pytest.raises(ValueError, match="has no module 'nope'"):
        apply_channel_config(ResidualNet(), ["nope=3,8"])
    with pytest.raises(ValueError, match="not a Conv2d or a BatchNorm"):
        apply_channel_config(ResidualNet(), ["layer=3,8"])
    soft = randomize_norms(ResidualNet())
    attach_channel_masks(soft, 0.5)
    with pytest.raises(CompressError, match="still soft"):
        compress(soft, X)


def test_an_unknown_op_keeps_its_input_channels():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.b = nn.Conv2d(8, 4, 1)
            self.b.unprunable = True

        def forward(self, x):
            y = self.a(x)
            return self.b(y * torch.sigmoid(y.mean(dim=1, keepdim=True)))

    torch.manual_seed(0)
    model = Odd()
    attach_channel_masks(model, 0.5, min_channels=2)
    to_hard_masks(model)
    model.eval()
    small = compress(model, X)
    with torch.no_grad():
        assert torch.allclose(small(X), model(X), atol=1e-6)
    assert small.a.out_channels == 8  # the mean over channels reads all of them
