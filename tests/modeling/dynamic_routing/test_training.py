"""Training the dynamic-routing family with the library's trainer and optimizer: scheduled drop
path driven by ``set_training_progress``, the gates' learning-rate multiplier in a handful of
param groups, labels padded with 255, and one real ``dl_train`` run that logs and evaluates the
routing FLOPs. Narrow supernets (width 8, 4 layers) on tiny inputs.
"""
import itertools
import json
import os

import pytest
import torch
import torch.nn.functional as F
from toy_data import write_split

from dl_lib import playground
from dl_lib.config import config_from_delta
from dl_lib.data import DatasetCatalog, MetadataCatalog, register_sem_seg
from dl_lib.engine import SimpleTrainer, hooks
from dl_lib.modeling import build_model
from dl_lib.modeling.dynamic_routing.dynamic_routing import MixedOp
from dl_lib.solver import build_lr_scheduler, build_optimizer
from dl_lib.tools import train_net
from dl_lib.utils.events import get_event_storage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DYNAMIC = os.path.join(REPO, "playground", "Dynamic")
LAYERS = 4


@pytest.fixture(autouse=True)
def _one_thread():
    # Several intra-op threads on a loaded 2-core machine wait on each other (30x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _narrow(solver=None, **model):
    """A 4-layer, width-8 supernet (3 classes) built from a config, as dl_train builds it."""
    delta = dict(DEVICE="cpu", META_ARCHITECTURE="DynamicRoutingSegmentor",
                 PIXEL_MEAN=[123.675, 116.28, 103.53], PIXEL_STD=[1.0, 1.0, 1.0],
                 BACKBONE=dict(LAYER_NUM=LAYERS, INIT_CHANNEL=8, NORM="BN"),
                 SEM_SEG_HEAD=dict(NUM_CLASSES=3, NORM="BN"))
    for key, value in model.items():
        delta[key] = {**delta.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = config_from_delta(dict(MODEL=delta, SOLVER=solver or {}), family="dynamic_routing")
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _batch(sizes, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
             "height": h, "width": w,
             "sem_seg": torch.randint(0, num_classes, (h, w), generator=g)} for h, w in sizes]


# ------------------------------------------------------------------------------ drop path
def test_drop_path_drops_whole_images_and_keeps_the_expectation():
    torch.manual_seed(0)
    op = MixedOp(8, "BN").eval()
    x = torch.randn(200, 8, 8, 8)
    with torch.no_grad():
        branch = op._ops[0](x)
        out = op(x, keep_prob=0.6)
    # Per image: the separable branch is dropped (x alone) or kept and rescaled by 1/0.6.
    dropped = torch.isclose(out, x, atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, x + branch / 0.6, atol=1e-5).flatten(1).all(1)
    assert bool((dropped ^ kept).all())
    assert 0.25 < dropped.float().mean() < 0.55  # Bernoulli(0.6) over 200 images
    with torch.no_grad():
        torch.testing.assert_close(op(x, keep_prob=1.0), x + branch)


def test_trainer_drives_the_drop_path_schedule_in_training_only(monkeypatch):
    """keep = 1 - iter/max_iter * (l+1)/L * DROP_PROB for layer l, set by the trainer through
    set_training_progress(iter, max_iter) before each step; 1 at inference whatever the progress."""
    cfg, model = _narrow(BACKBONE=dict(DROP_PROB=0.3))
    layer_of = {id(cell.cell_ops): int(name.split(".")[0])
                for name, cell in model.backbone.cells() if name != "init"}
    calls = []
    forward = MixedOp.forward

    def recording(self, x, keep_prob=1.0):
        if id(self) in layer_of:
            it = get_event_storage().iter if self.training else None
            calls.append((it, layer_of[id(self)], keep_prob, self.training))
        return forward(self, x, keep_prob)

    monkeypatch.setattr(MixedOp, "forward", recording)
    data = _batch([(64, 64), (64, 64)])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = SimpleTrainer(model, itertools.repeat(data), optimizer)
    max_iter = 5
    trainer.train(0, max_iter)
    assert {c[0] for c in calls} == set(range(max_iter))
    for it, layer, keep, training in calls:
        assert training
        assert keep == pytest.approx(1 - it / max_iter * (layer + 1) / LAYERS * 0.3), (it, layer)
    assert min(c[2] for c in calls) == pytest.approx(1 - 4 / 5 * 0.3)  # last layer, last step

    model.eval()
    assert model.step_rate == pytest.approx(4 / 5)
    for mode in ("subbatch", "per_image", "dense"):  # every inference path
        calls.clear()
        model.backbone.skip_mode = mode
        with torch.no_grad():
            model(data)
        assert all(keep == 1.0 and not training for _, _, keep, training in calls), mode
        assert len(calls) >= (len(layer_of) if mode == "dense" else 1), mode


def test_precise_bn_runs_without_drop_path(monkeypatch):
    """Precise BN at the end of training (SDP0_3 has it) gathers the statistics of the network
    that runs at inference: keep = 1, as the original's precise BN at progress 0."""
    cfg, model = _narrow(BACKBONE=dict(DROP_PROB=0.3))
    keeps = []
    forward = MixedOp.forward

    def recording(self, x, keep_prob=1.0):
        keeps.append(keep_prob)
        return forward(self, x, keep_prob)

    monkeypatch.setattr(MixedOp, "forward", recording)
    data = _batch([(64, 64), (64, 64)])
    hook = hooks.PreciseBN(0, model, itertools.repeat(data), num_iter=2)
    trainer = SimpleTrainer(model, itertools.repeat(data), torch.optim.SGD(model.parameters(), lr=0.0))
    trainer.register_hooks([hook])
    trainer.train(9, 10)  # the last iteration: training at progress 0.9, then precise BN
    n = len(list(model.backbone.cells()))
    assert len(keeps) == 3 * n  # one training step, two precise-BN batches
    assert min(keeps[:n]) == pytest.approx(1 - 0.9 * 0.3)
    assert keeps[n:] == [1.0] * (2 * n)


# ------------------------------------------------------------------------------ optimizer
def test_gate_lr_multi_scales_the_gate_parameters_in_four_groups():
    cfg, model = _narrow(solver=dict(OPTIMIZER=dict(BASE_LR=0.02, GATE_LR_MULTI=2.5),
                                      LR_SCHEDULER=dict(MAX_ITER=100, WARMUP_ITERS=10)))
    optimizer = build_optimizer(cfg, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
             for p in m.parameters()}
    gates = 0
    for name, p in model.named_parameters():
        is_gate = ".gate_conv_beta." in name
        gates += is_gate
        group = group_of[id(p)]
        assert group["lr"] == pytest.approx(0.02 * (2.5 if is_gate else 1.0)), name
        assert group["weight_decay"] == (0.0 if id(p) in norms else 1e-4), name
    # Gate networks: 1x1 conv + BN (weight, bias) + 1x1 conv with bias, in every cell.
    assert gates == 5 * len(list(model.backbone.cells()))
    # (lr, decay): base/decayed, base/norms, gates/decayed, gate norms/no decay.
    assert len(optimizer.param_groups) == 4

    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(7):  # into the warm-up and the poly decay: the ratio stays 2.5
        optimizer.step()
        scheduler.step()
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert len(lrs) == 2 and lrs[1] / lrs[0] == pytest.approx(2.5) and lrs[0] < 0.02

    cfg, model = _narrow(solver=dict(OPTIMIZER=dict(BASE_LR=0.02)))  # GATE_LR_MULTI 0: none
    assert {g["lr"] for g in build_optimizer(cfg, model).param_groups} == {0.02}


def test_imagenet_playground_has_four_param_groups_not_one_per_tensor():
    # The original made one group per parameter tensor: 1,092 for Layer16.
    cfg, model = playground.build(os.path.join(DYNAMIC, "Seg.Layer16.ImageNet"), ["MODEL.DEVICE", "cpu"])
    assert len(list(model.parameters())) == 1092
    groups = build_optimizer(cfg, model).param_groups
    assert len(groups) == 4
    assert sorted({g["lr"] for g in groups}) == pytest.approx([0.02, 0.05])


# ------------------------------------------------------------------------------ labels
def test_labels_are_padded_with_255_and_the_padding_is_not_in_the_loss():
    """Images of 40x50 and 64x40 are padded to one 64x64 batch (a multiple of 32); the loss is
    the cross-entropy over the real pixels only."""
    cfg, model = _narrow()
    model.train()
    batch = _batch([(40, 50), (64, 40)])
    batch[0]["sem_seg"][0, :5] = 255
    images, _ = model.preprocess_images(batch)
    assert tuple(images.shape[-2:]) == (64, 64)
    targets = model.preprocess_targets(batch, images.shape[-2:])
    assert bool((targets[0, 40:] == 255).all() and (targets[0, :, 50:] == 255).all())
    assert bool((targets[1, :, 40:] == 255).all())
    torch.testing.assert_close(targets[0, :40, :50], batch[0]["sem_seg"])

    loss = model(batch)["loss_sem_seg"]
    # By hand: logits of the padded batch at 64x64, cross-entropy over each image's own pixels.
    logits = F.interpolate(model.forward_logits(images), size=(64, 64), mode="bilinear",
                           align_corners=False)
    per_pixel = [F.cross_entropy(logits[i:i + 1, :, :h, :w], d["sem_seg"][None], ignore_index=255,
                                 reduction="none")
                 for i, (d, (h, w)) in enumerate(zip(batch, [(40, 50), (64, 40)]))]
    valid = sum(int((d["sem_seg"] != 255).sum()) for d in batch)
    expected = sum(p.sum() for p in per_pixel) / valid
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ dl_train
@pytest.mark.parametrize("name,extra", [
    # the budget loss; FLOPS_ALL derived from the 128x128 crop, so the ratio starts near 1
    ("Seg.Layer16.SmallGate.Dynamic_A", ["MODEL.BUDGET.FLOPS_ALL", "0"]),
    # drop path, and precise BN (on in this recipe) over 2 batches before the evaluation
    ("Seg.Layer16.Iter560k.SDP0_3", ["TEST.PRECISE_BN.NUM_ITER", "2"]),
])
def test_dl_train_logs_and_evaluates_the_routing_flops(name, extra, tmp_path, monkeypatch):
    """A published recipe narrowed on the command line: metrics.json has real/expected GFLOPs
    every iteration and loss_budget (Dynamic-A) from 40% of training on, after its ramp starts;
    the final evaluation reports the per-image GFLOPs."""
    data = str(tmp_path / "data")
    write_split(data, "train", 4, seed=0, size=(48, 80))
    write_split(data, "val", 2, seed=1, size=(48, 80))
    names = {}
    for split in ("train", "val"):
        names[split] = f"dynamic_routing_dl_train_{split}"
        register_sem_seg(names[split], os.path.join(data, split, "images"),
                         os.path.join(data, split, "labels"),
                         classes=[f"class{i}" for i in range(19)], image_ext=".png")
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    max_iter = 5
    try:
        rc = train_net.main_train([
            "--playground", os.path.join(DYNAMIC, name),
            "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.LAYER_NUM", str(LAYERS),
            "MODEL.BACKBONE.INIT_CHANNEL", "8",
            "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", f"('{names['val']}',)",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
            "INPUT.MIN_SIZE_TRAIN", "[96, 128]", "INPUT.MAX_SIZE_TRAIN", "512",
            "INPUT.CROP_PAD.SIZE", "[128, 128]", "INPUT.MIN_SIZE_TEST", "128",
            "INPUT.MAX_SIZE_TEST", "512",
            "SOLVER.LR_SCHEDULER.MAX_ITER", str(max_iter), "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "1",
            "SOLVER.CHECKPOINT_PERIOD", "100", "LOG_PERIOD", "1", "SEED", "0", *extra])
    finally:
        for dataset in names.values():
            DatasetCatalog.remove(dataset)
            MetadataCatalog.remove(dataset)
    assert rc in (None, 0)
    budget = "Dynamic_A" in name
    out = tmp_path / "out" / "Dynamic" / name
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    rows = {r["iteration"]: r for r in rows if "loss_sem_seg" in r}
    assert sorted(rows) == list(range(max_iter))
    for it, r in rows.items():
        assert r["real_gflops"] > r["expt_gflops"] > 0
        # UNUPDATE_RATE 0.4: off at progress 0, 0.2, 0.4 (the ramp starts at 0), on at 0.6, 0.8.
        assert ("loss_budget" in r) == (budget and it / max_iter > 0.4), it
        if "loss_budget" in r:  # (metrics.json holds medians over the log window)
            assert 0 < r["loss_budget"] <= 0.8
        if budget:
            assert 0.5 < r["budget_ratio"] <= 1.0  # derived FLOPS_ALL: every route open is 1

    results = json.loads((out / "results.json").read_text())[names["val"]]["sem_seg"]
    for key in ("real_gflops", "real_corrected_gflops", "expt_gflops"):
        assert 0 < results[f"min_{key}"] <= results[f"mean_{key}"] <= results[f"max_{key}"]
    assert "mIoU" in results
    assert ("Running precise-BN" in (out / "log.txt").read_text()) == (not budget)
