"""Norm layers: get_norm names, FrozenBN, SyncBN resolution, NaiveSyncBN over 2 Gloo ranks."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dl_lib.engine.launch import _exit_spawned_worker
from dl_lib.layers import (
    NORM_NAMES,
    FrozenBatchNorm2d,
    NaiveSyncBatchNorm,
    convert_frozen_batchnorm,
    get_norm,
    revert_sync_batchnorm,
)


@pytest.mark.parametrize("name,cls", [
    ("BN", nn.BatchNorm2d), ("FrozenBN", FrozenBatchNorm2d), ("GN", nn.GroupNorm),
    ("NaiveSyncBN", NaiveSyncBatchNorm),
    # not distributed: nothing to synchronise, so plain BN
    ("SyncBN", nn.BatchNorm2d), ("nnSyncBN", nn.BatchNorm2d)])
def test_get_norm_names(name, cls):
    m = get_norm(name, 64)
    assert type(m) is cls
    if name == "GN":
        assert (m.num_groups, m.num_channels) == (32, 64)
    else:
        assert m.num_features == 64


def test_get_norm_empty_callable_and_errors():
    assert get_norm("", 8) is None
    assert get_norm(None, 8) is None
    m = get_norm(lambda c: nn.GroupNorm(2, c), 8)
    assert isinstance(m, nn.GroupNorm) and m.num_groups == 2
    with pytest.raises(ValueError) as e:
        get_norm("LayerNormX", 8)
    assert all(n in str(e.value) for n in NORM_NAMES)
    with pytest.raises(ValueError, match="multiple of 32"):
        get_norm("GN", 48)


def _trained_bn(channels=4):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
    bn.train()
    for _ in range(3):  # non-trivial running statistics
        bn(torch.randn(8, channels, 5, 5) * 3 + 1)
    return bn.eval()


def test_frozen_bn_equals_bn_in_eval():
    bn = _trained_bn()
    frozen = FrozenBatchNorm2d(4)
    # a BN state dict (with num_batches_tracked) loads strictly
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 4, 6, 7)
    frozen.train()  # frozen means frozen, in training too
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.parameters()) == []
    assert {k for k, _ in frozen.named_buffers()} == {"weight", "bias", "running_mean",
                                                       "running_var"}


def test_convert_frozen_batchnorm():
    bn = _trained_bn()
    net = nn.Sequential(nn.Conv2d(3, 4, 1), bn, nn.Sequential(nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 5, 5)
    ref = net.eval()(x)
    net = convert_frozen_batchnorm(net)
    assert isinstance(net[1], FrozenBatchNorm2d) and isinstance(net[2][0], FrozenBatchNorm2d)
    torch.testing.assert_close(net(x), ref)
    assert isinstance(FrozenBatchNorm2d.convert_frozen_batchnorm(nn.BatchNorm2d(3)),
                      FrozenBatchNorm2d)


def test_revert_sync_batchnorm():
    sync = nn.SyncBatchNorm(4)
    naive = NaiveSyncBatchNorm(4)
    with torch.no_grad():
        sync.weight.fill_(2.0)
        naive.running_mean.fill_(0.5)
    sync.weight.requires_grad_(False)
    net = nn.Sequential(sync, nn.Sequential(naive)).eval()
    x = torch.randn(2, 4, 3, 3)
    ref = net(x)
    net = revert_sync_batchnorm(net)
    assert not isinstance(net[0], nn.SyncBatchNorm) and isinstance(net[0], nn.BatchNorm2d)
    assert type(net[1][0]) is nn.BatchNorm2d
    assert not net[0].weight.requires_grad and not net[0].training
    torch.testing.assert_close(net(x), ref)
    # SyncBN accepts any N×C×... input, so its replacement does too
    assert net[0](torch.randn(3, 4)).shape == (3, 4)


# ------------------------------------------------------------------- 2-process Gloo NaiveSyncBN
_SIZES = (2, 4)  # uneven per-rank batches: ranks must be weighted by batch size


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sum(_SIZES), 3, 4, 5, generator=g) * 2 + 0.5
    target = torch.randn(sum(_SIZES), 3, 4, 5, generator=g)  # makes the loss non-trivial
    weight = torch.rand(3, generator=g) + 0.5
    bias = torch.randn(3, generator=g)
    return x, target, weight, bias


def _worker(rank, world, init, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        resolved = {n: type(get_norm(n, 3)).__name__ for n in ("SyncBN", "nnSyncBN")}
        x, target, weight, bias = _data()
        start = sum(_SIZES[:rank])
        xs = x[start:start + _SIZES[rank]].clone().requires_grad_(True)
        bn = NaiveSyncBatchNorm(3, momentum=0.3)
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
        out = bn(xs)
        ((out - target[start:start + _SIZES[rank]]) ** 2).sum().backward()
        torch.save({"out": out.detach(), "x_grad": xs.grad, "w_grad": bn.weight.grad,
                    "b_grad": bn.bias.grad, "running_mean": bn.running_mean,
                    "running_var": bn.running_var, "resolved": resolved},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # leave together: destroying a Gloo group under a live peer aborts it
    finally:
        dist.destroy_process_group()
    # As dl_lib's launcher does: skip interpreter finalisation, which now and then aborts a Gloo
    # worker whose work is done (see dl_lib.engine.launch._exit_spawned_worker).
    _exit_spawned_worker()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_naive_sync_bn_matches_bn_on_concatenated_batch(tmp_path):
    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert res[0]["resolved"] == {"SyncBN": "NaiveSyncBatchNorm", "nnSyncBN": "NaiveSyncBatchNorm"}

    x, target, weight, bias = _data()
    x = x.clone().requires_grad_(True)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    out = bn(x)
    ((out - target) ** 2).sum().backward()

    torch.testing.assert_close(torch.cat([r["out"] for r in res]), out.detach(),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in res]), x.grad,
                               rtol=1e-4, atol=1e-4)
    # each rank holds its share of the parameter gradients; DDP sums them
    torch.testing.assert_close(res[0]["w_grad"] + res[1]["w_grad"], bn.weight.grad,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res[0]["b_grad"] + res[1]["b_grad"], bn.bias.grad,
                               rtol=1e-4, atol=1e-4)
    for r in res:
        torch.testing.assert_close(r["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)


def test_naive_sync_bn_single_process_is_bn():
    torch.manual_seed(0)
    naive, bn = NaiveSyncBatchNorm(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(naive(x), bn(x))
    torch.testing.assert_close(naive.running_var, bn.running_var)
