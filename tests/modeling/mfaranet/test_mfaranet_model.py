"""MFARANet: parameter counts and names against the original's key dump, stage shapes, the
alignment grid, ASFM fusion, the scale-choice options, eval outputs and training losses."""
import os

import pytest
import torch
import torch.nn.functional as F

from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.mfaranet import (MFARANet, OffsetGrid, StemMaxPool, backbone_config,
                                      identity_grid,
                                      mfaranet_r18_deep_stem, mfaranet_r50_deep_stem,
                                      offset_grid, warp)
from dl_lib.modeling.mfaranet.convert import scale_choice_to_released, to_released
from mfaranet_original_reference import read_key_dump

DUMP = read_key_dump(os.path.join(os.path.dirname(__file__), "mfaranet_keys.txt"))
MAIN = next(v for k, v in DUMP.items() if k.startswith("MFARANet (model_MFARANet.py)"))
SCALE_CHOICE = next(v for k, v in DUMP.items() if k.startswith("MFARANet_Scale_Choice ("))


def _params(module):
    return sum(p.numel() for p in module.parameters())


def mfaranet_cfg(**mfaranet):
    return config_from_delta(dict(MODEL=dict(META_ARCHITECTURE="MFARANet",
                                             BACKBONE=backbone_config("r18_deep_stem"),
                                             MFARANET=mfaranet)), family="mfaranet")


def test_parameter_counts_of_the_reference():
    model = build_model(mfaranet_cfg())
    assert isinstance(model, MFARANet)
    assert _params(model) == 12_997_264
    assert _params(model) - _params(model.head.boundary_heads) == 12_996_748  # inference
    assert _params(model.backbone) == 11_324_992
    # The BN-free Speed copy the authors count FLOPs on, built without the training-only heads.
    assert _params(build_model(mfaranet_cfg(NORM="", BOUNDARY_HEADS=False))) == 12_993_164
    # Branch_Choose=[2]: no attention heads (the dump's scale-choice count).
    assert _params(build_model(mfaranet_cfg(FUSED_BRANCHES=[2]))) == 12_696_976
    # The R50 count of the reference is without boundary heads (the constructor's default).
    assert _params(mfaranet_r50_deep_stem(boundary_heads=False)) == 25_672_204


def test_names_and_shapes_are_the_key_dumps():
    ours = mfaranet_r18_deep_stem().state_dict()
    assert len(ours) == len(MAIN) == 263
    released = to_released(ours)
    assert list(released) == list(MAIN)  # same names, same order
    for key, shape in MAIN.items():
        assert tuple(released[key].shape) == shape, key
    assert list(scale_choice_to_released(dict.fromkeys(SCALE_CHOICE))) == list(MAIN)


def _dump_line(prefix):
    lines = open(os.path.join(os.path.dirname(__file__), "mfaranet_keys.txt")).read().splitlines()
    return next(line.strip() for line in lines if line.strip().startswith(prefix + ":"))


def test_dilation_without_stride_removal_and_stage_shapes():
    model = mfaranet_r18_deep_stem().eval()
    b = model.backbone
    for name in ["layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2",
                 "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1",
                 "layer4.1.conv2"]:
        m = b.get_submodule(name)
        assert _dump_line(name) == (f"{name}: k={m.kernel_size} s={m.stride} d={m.dilation} "
                                    f"p={m.padding}")
    # Stage shapes of the dump at 1024x1024, here at 256x256 (every side / 4).
    stem = []
    handle = b.maxpool.register_forward_hook(lambda m, i, o: stem.append(o))
    with torch.no_grad():
        stages = model.encode(torch.randn(1, 3, 256, 256))
    handle.remove()
    shapes = [tuple(t.shape) for t in stem + stages]
    assert shapes == [(1, 128, 64, 64), (1, 64, 64, 64), (1, 128, 32, 32), (1, 256, 16, 16),
                      (1, 512, 8, 8)]
    assert b.size_divisibility == 32


def test_zero_offsets_grid_is_plain_bilinear_resizing():
    torch.manual_seed(0)
    coarse = torch.randn(2, 5, 4, 6)
    grid = offset_grid(torch.zeros(2, 2, 8, 12))
    expected = F.interpolate(coarse, size=(8, 12), mode="bilinear", align_corners=True)
    torch.testing.assert_close(warp(coarse, grid), expected, atol=1e-5, rtol=1e-5)
    # The module: zero offset conv -> the same resize of the coarse level onto the fine one.
    align = OffsetGrid(5, 3)
    torch.nn.init.zeros_(align.offset.weight)
    g = align(torch.randn(2, 5, 8, 12), coarse)
    torch.testing.assert_close(g, identity_grid(2, 8, 12))
    torch.testing.assert_close(warp(coarse, g), expected, atol=1e-5, rtol=1e-5)


def test_grid_values_against_the_formula():
    torch.manual_seed(0)
    n, h, w = 2, 3, 5
    flow = torch.randn(n, 2, h, w)
    grid = offset_grid(flow)
    assert grid.shape == (n, h, w, 2)
    for b, y, x in [(0, 0, 0), (1, 2, 4), (0, 1, 3), (1, 0, 2)]:
        gx = -1 + 2 * x / (w - 1) + flow[b, 0, y, x] / w  # divided by W (not W/2: the code)
        gy = -1 + 2 * y / (h - 1) + flow[b, 1, y, x] / h
        torch.testing.assert_close(grid[b, y, x], torch.stack([gx, gy]))


def test_grids_are_computed_from_unwarped_levels_and_chained():
    """Branch 4 is warped by grid_3, grid_2 then grid_1, each from the un-warped levels."""
    torch.manual_seed(0)
    model = mfaranet_r18_deep_stem().eval()
    head = model.head
    with torch.no_grad():
        stages = model.encode(torch.randn(1, 3, 128, 128))
        levels = head.levels(stages)
        grids = [head.align[str(j)](levels[j], levels[j + 1]) for j in range(3)]
        f4 = warp(warp(warp(levels[3], grids[2]), grids[1]), grids[0])
        out = head(stages)
    torch.testing.assert_close(out.branches[4], head.branch_heads["3"](f4))
    assert all(t.shape[-2:] == (32, 32) for t in out.branches.values())


def test_asfm_fusion_weights_sum_without_normalisation():
    torch.manual_seed(0)
    model = mfaranet_r18_deep_stem().eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        out = model.forward_outputs(x)
        # Attention with zero last conv: every weight is sigmoid(0) = 1/2, so the fused map is
        # half the plain sum of the four branches (no normalisation across branches).
        for att in model.head.attention:
            torch.nn.init.zeros_(att.score.weight)
        half = model.forward_outputs(x)
    torch.testing.assert_close(half.fused, 0.5 * sum(half.branches.values()))
    assert not torch.allclose(out.fused, half.fused)


def test_single_fused_branch_is_that_branch_and_subsets_fuse_in_order():
    torch.manual_seed(0)
    model = build_model(mfaranet_cfg(FUSED_BRANCHES=[2])).eval()
    assert model.head.attention is None
    with torch.no_grad():
        out = model.forward_outputs(torch.randn(1, 3, 64, 64))
    assert torch.equal(out.fused, out.branches[2])
    model = build_model(mfaranet_cfg(FUSED_BRANCHES=[3, 1])).eval()
    assert len(model.head.attention) == 2
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        out = model.forward_outputs(x)
        stages = model.encode(x)
        levels = model.head.levels(stages)
        grids = [model.head.align[str(j)](levels[j], levels[j + 1]) for j in range(3)]
        f3 = warp(warp(levels[2], grids[1]), grids[0])
        expected = (out.branches[3] * model.head.attention[0](f3)
                    + out.branches[1] * model.head.attention[1](levels[0]))
    torch.testing.assert_close(out.fused, expected)
    with pytest.raises(ValueError, match="FUSED_BRANCHES"):
        build_model(mfaranet_cfg(FUSED_BRANCHES=[0, 5]))


def test_stage_dropout_keeps_the_names_and_is_off_in_eval():
    torch.manual_seed(0)
    plain = build_model(mfaranet_cfg())
    dropped = build_model(mfaranet_cfg(STAGE_DROPOUT=[0.0, 0.05, 0.05, 0.05, 0.05]))
    assert list(plain.state_dict()) == list(dropped.state_dict())
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain.eval().predict_logits(x)[-1], dropped.eval().predict_logits(x)[-1])
        dropped.train()
        stages = dropped.encode(x)
    assert (stages[0] == 0).any()  # Dropout2d zeroed channels in training
    with pytest.raises(ValueError, match="STAGE_DROPOUT"):
        build_model(mfaranet_cfg(STAGE_DROPOUT=[0.1]))


def test_eval_outputs_branches_then_fused_at_image_size():
    torch.manual_seed(0)
    model = mfaranet_r18_deep_stem().eval()
    images = [{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8), "height": 64,
               "width": 96}]
    with torch.no_grad():
        result = model(images)[0]
        x = (images[0]["image"].float() - model.pixel_mean) / model.pixel_std
        logits = model.forward_logits(x[None])
    assert result["sem_seg"].shape == (19, 64, 96)
    assert len(result["sem_seg_exits"]) == 5 and result["sem_seg_exits"][-1] is result["sem_seg"]
    for got, t in zip(result["sem_seg_exits"], logits):  # x4, align_corners=True
        up = F.interpolate(t, size=(64, 96), mode="bilinear", align_corners=True)[0]
        torch.testing.assert_close(got, up)


def test_training_losses_fused_and_branches():
    torch.manual_seed(0)
    model = mfaranet_r18_deep_stem().train()
    images = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
               "sem_seg": torch.randint(0, 19, (64, 64))} for _ in range(2)]
    losses = model(images)
    # Fused CE + per branch OHEM, boundary BCE, boundary attention (test_mfaranet_losses.py).
    assert sorted(losses) == sorted(["loss_sem_seg"] + [f"loss_{t}{i}" for i in range(1, 5) for t
                                                         in ("branch", "boundary",
                                                             "boundary_attention")])
    sum(losses.values()).backward()
    assert model.head.attention[0].score.weight.grad is not None
    assert model.head.align["0"].offset.weight.grad.abs().sum() > 0
    single = build_model(mfaranet_cfg(FUSED_BRANCHES=[2])).train()
    assert "loss_sem_seg" not in single(images)  # the original skips the fused CE then


def test_stem_max_pool_equals_max_pool2d_bit_for_bit():
    """The index-free stem max-pool (inference only) gives nn.MaxPool2d's outputs exactly,
    NaN and -inf included; with gradients, odd sizes or channels-last it is nn.MaxPool2d."""
    torch.manual_seed(0)
    native, ours = torch.nn.MaxPool2d(3, 2, 1), StemMaxPool()
    for shape in ((2, 5, 16, 24), (1, 3, 2, 2), (1, 2, 7, 10), (1, 2, 9, 9)):
        x = torch.randn(shape)
        x.view(-1)[::7] = float("-inf")
        x.view(-1)[3] = float("nan")
        with torch.inference_mode():
            got, expected = ours(x), native(x)
        assert got.shape == expected.shape
        assert torch.equal(got.nan_to_num(), expected.nan_to_num()), shape
        assert torch.equal(got.isnan(), expected.isnan()), shape
        with torch.no_grad():
            cl = x.contiguous(memory_format=torch.channels_last)
            assert torch.equal(ours(cl).nan_to_num(), native(cl).nan_to_num())
    # Training: the native kernel, so the gradient goes to one argmax per window.
    x = torch.relu(torch.randn(1, 2, 8, 8)).requires_grad_(True)
    ours(x).sum().backward()
    g = x.grad.clone()
    x.grad = None
    native(x).sum().backward()
    assert torch.equal(g, x.grad)
    model = build_model(mfaranet_cfg())
    assert type(model.backbone.maxpool) is StemMaxPool
    assert not any("maxpool" in k for k in model.state_dict())
