"""HRNetV2 backbones (``dl_lib/modeling/backbone/hrnet.py``) against the ADP-C reference
(``anytime.md`` sections 1 and 6, key dumps ``keys/anytime_keys_{w18,w48}_*.txt``): the branch,
block, transition and fuse layout written out from section 1, the exact state_dict of the
original's backbone, per-attribute parameter counts, output shapes and strides, the order of a
module's fuse sum, and HRNet-Image-Classification files through ``MODEL.PRETRAINED``.
"""
import json
import logging
import os
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from toy_data import write_split
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from dl_lib import playground
from dl_lib.checkpoint import PretrainedWeightsError, find_backbone
from dl_lib.data import DatasetCatalog, MetadataCatalog, register_sem_seg
from dl_lib.engine import DefaultTrainer
from dl_lib.modeling.backbone import HighResolutionNet
from dl_lib.modeling.backbone.hrnet import HighResolutionModule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = os.path.join(REPO, "tests", "modeling", "anytime")  # copies of reference/keys/anytime_keys_*
W18_PLAYGROUND = os.path.join(REPO, "playground", "Anytime", "HRNet_W18")

# Reference section 1.5: Bottlenecks of layer1, then per stage 2..4 (modules, blocks, widths).
LAYOUT = {
    "w18_small_v2": (2, [(1, 2, [18, 36]), (3, 2, [18, 36, 72]), (2, 2, [18, 36, 72, 144])]),
    "w48": (4, [(1, 4, [48, 96]), (4, 4, [48, 96, 192]), (3, 4, [48, 96, 192, 384])]),
}
DUMP = {"w18_small_v2": "anytime_keys_w18_RH.txt", "w48": "anytime_keys_w48_RH.txt"}
# The original's backbone attributes (the key dumps' per-attribute header), ours by the same name.
BACKBONE_ATTRS = {"stem(conv1)": "conv1", "stem(bn1)": "bn1", "stem(conv2)": "conv2",
                  "stem(bn2)": "bn2", "layer1": "layer1", "transition1": "transition1",
                  "stage2": "stage2", "transition2": "transition2", "stage3": "stage3",
                  "transition3": "transition3", "stage4": "stage4"}
HEADS = re.compile(r"(exit\d|last_layer)\.")


def read_dump(name):
    """``(header lines, [(key, shape, dtype name)])`` of a reference key dump."""
    header, rows = [], []
    with open(os.path.join(KEYS, name)) as f:
        for line in f:
            if line.startswith("#"):
                header.append(line)
            elif line.strip():
                key, shape, dtype = line.rstrip("\n").split("\t")
                rows.append((key, tuple(int(s) for s in re.findall(r"\d+", shape)), dtype))
    return header, rows


def attribute_params(header):
    line = next(h for h in header if "per top-level attribute" in h)
    return json.loads(line.split(":", 1)[1])


@pytest.fixture(autouse=True)
def _one_thread():
    # Several intra-op threads on a loaded 2-core machine wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nets():
    """One HighResolutionNet per variant of LAYOUT (built once: W48 has 65.3M parameters)."""
    torch.manual_seed(0)
    return {v: HighResolutionNet(v).eval() for v in LAYOUT}


def _check_conv(m, cin, cout, k, stride):
    assert isinstance(m, nn.Conv2d) and m.bias is None
    assert (m.in_channels, m.out_channels) == (cin, cout)
    assert m.kernel_size == (k, k) and m.stride == (stride, stride)
    assert m.padding == (k // 2, k // 2)


def _check_new_branch(t, cin, cout):
    """A transition to a new branch: one stride-2 3x3 conv + BN + ReLU from the last branch."""
    assert isinstance(t, nn.Sequential) and len(t) == 1 and len(t[0]) == 3
    _check_conv(t[0][0], cin, cout, 3, 2)
    assert isinstance(t[0][1], nn.BatchNorm2d) and isinstance(t[0][2], nn.ReLU)


@pytest.mark.parametrize("variant", sorted(LAYOUT))
def test_stem_layer1_and_transitions(nets, variant):
    net = nets[variant]
    layer1_blocks, stages = LAYOUT[variant]
    _check_conv(net.conv1, 3, 64, 3, 2)
    _check_conv(net.conv2, 64, 64, 3, 2)
    assert len(net.layer1) == layer1_blocks and all(isinstance(b, Bottleneck) for b in net.layer1)
    down = net.layer1[0].downsample
    _check_conv(down[0], 64, 256, 1, 1)
    assert isinstance(down[1], nn.BatchNorm2d) and len(down) == 2
    assert all(b.downsample is None for b in net.layer1[1:])

    # transition1: branch 0 changes width (3x3 conv stride 1), branch 1 is new (stride 2).
    t1 = net.transition1
    w0, w1 = stages[0][2]
    assert len(t1) == 2 and len(t1[0]) == 3
    _check_conv(t1[0][0], 256, w0, 3, 1)
    assert isinstance(t1[0][1], nn.BatchNorm2d) and isinstance(t1[0][2], nn.ReLU)
    _check_new_branch(t1[1], 256, w1)
    # transition2/3: existing branches keep their width (None), one new branch from the last.
    for s in (2, 3):
        widths_pre, widths = stages[s - 2][2], stages[s - 1][2]
        t = getattr(net, f"transition{s}")
        assert len(t) == len(widths) == len(widths_pre) + 1
        assert all(t[i] is None for i in range(len(widths_pre)))
        _check_new_branch(t[-1], widths_pre[-1], widths[-1])


@pytest.mark.parametrize("variant", sorted(LAYOUT))
def test_modules_branches_blocks_and_fuse_layers(nets, variant):
    net = nets[variant]
    sd = net.state_dict()
    for s, (modules, blocks, widths) in enumerate(LAYOUT[variant][1], start=2):
        stage = getattr(net, f"stage{s}")
        assert len(stage) == modules
        for m, module in enumerate(stage):
            assert isinstance(module, HighResolutionModule)
            assert len(module.branches) == len(widths) == s
            for branch, w in zip(module.branches, widths):
                assert len(branch) == blocks
                for block in branch:
                    assert isinstance(block, BasicBlock) and block.downsample is None
                    _check_conv(block.conv1, w, w, 3, 1)
                    _check_conv(block.conv2, w, w, 3, 1)
            assert len(module.fuse_layers) == len(widths)  # every output (multi-scale, stage 4 too)
            for i, row in enumerate(module.fuse_layers):
                assert len(row) == len(widths)
                for j, f in enumerate(row):
                    if j == i:  # identity, and no keys
                        assert f is None
                        own = f"stage{s}.{m}.fuse_layers.{i}.{i}."
                        assert not any(k.startswith(own) for k in sd)
                    elif j > i:  # 1x1 conv C_j -> C_i + BN (upsampled in forward)
                        assert len(f) == 2 and isinstance(f[1], nn.BatchNorm2d)
                        _check_conv(f[0], widths[j], widths[i], 1, 1)
                    else:  # i - j stride-2 3x3 convs; ReLU between, not after the last
                        assert len(f) == i - j
                        for k, step in enumerate(f):
                            last = k == i - j - 1
                            _check_conv(step[0], widths[j], widths[i] if last else widths[j], 3, 2)
                            assert isinstance(step[1], nn.BatchNorm2d)
                            assert len(step) == (2 if last else 3)
                            if not last:
                                assert isinstance(step[2], nn.ReLU)


@pytest.mark.parametrize("variant", sorted(LAYOUT))
def test_state_dict_is_the_original_backbone(nets, variant):
    """Keys, order, shapes and dtypes of the original's model less its exits and last_layer."""
    _, rows = read_dump(DUMP[variant])
    expected = [r for r in rows if not HEADS.match(r[0])]
    ours = [(k, tuple(v.shape), str(v.dtype)) for k, v in nets[variant].state_dict().items()]
    assert len(ours) == len(expected)
    assert ours == expected


@pytest.mark.parametrize("variant", sorted(LAYOUT))
def test_parameters_per_attribute_equal_the_original(nets, variant):
    header, _ = read_dump(DUMP[variant])
    reference = attribute_params(header)
    ours = {attr: sum(p.numel() for p in getattr(nets[variant], attr).parameters())
            for attr in BACKBONE_ATTRS.values()}
    assert ours == {BACKBONE_ATTRS[k]: v for k, v in reference.items() if k in BACKBONE_ATTRS}
    # 3,860,720 (W18-Small-v2) and 65,325,120 (W48) trainable backbone parameters.
    total = {"w18_small_v2": 3_860_720, "w48": 65_325_120}[variant]
    assert sum(p.numel() for p in nets[variant].parameters()) == total


@pytest.mark.parametrize("variant", sorted(LAYOUT))
def test_output_shapes_and_strides(nets, variant):
    net = nets[variant]
    widths = LAYOUT[variant][1][-1][2]
    spec = net.output_shape()
    assert [(n, s.channels, s.stride) for n, s in spec.items()] == [
        (f"hr{i}", w, 4 * 2 ** i) for i, w in enumerate(widths)]
    assert net.size_divisibility == 32
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        out = net(x)
        stem = net.forward_stem(x)
        assert stem.shape == (1, 256, 16, 32)
        features = [stem]
        for s, (_, _, ws) in enumerate(LAYOUT[variant][1], start=2):
            features = net.forward_stage(s, features)
            assert [tuple(f.shape) for f in features] == [
                (1, w, 64 // (4 * 2 ** i), 128 // (4 * 2 ** i)) for i, w in enumerate(ws)]
    assert [tuple(t.shape) for t in out.values()] == [
        (1, w, 64 // spec[n].stride, 128 // spec[n].stride) for n, w in zip(out, widths)]
    for a, b in zip(out.values(), features):  # forward = the stage-wise chain
        assert torch.equal(a, b)


def test_out_features_subset_and_unknown_names():
    net = HighResolutionNet("w18_small_v2", out_features=["hr0", "hr2"])
    assert list(net.output_shape()) == ["hr0", "hr2"]
    with torch.no_grad():
        assert list(net(torch.randn(1, 3, 64, 64))) == ["hr0", "hr2"]
    with pytest.raises(ValueError, match=r"unknown out_features \['res5'\]"):
        HighResolutionNet("w18_small_v2", out_features=["res5"])
    with pytest.raises(ValueError, match=r"variant 'w64' is unknown.*w18_small_v2"):
        HighResolutionNet("w64")


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, nn.SyncBatchNorm])
def test_hrnet_initialisation_and_bn_momentum(norm):
    """N(0, 0.001) conv weights, BN weight 1 / bias 0, momentum 0.01 on every BN: also on
    nn.SyncBatchNorm (what SyncBN is under NCCL), which is not a BatchNorm2d subclass."""
    torch.manual_seed(0)
    net = HighResolutionNet("w18_small_v2", norm=norm)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(m) is norm for m in bns)
    assert {m.momentum for m in bns} == {0.01}
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
    assert weights.std().item() == pytest.approx(1e-3, rel=0.01)


# ------------------------------------------------------------------ the fuse sum of a module
def _bn(t, bn):
    return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _fuse_reference(module, xs, align_corners=False):
    """Output i = ReLU(sum over j = 0, 1, ... of fuse_ij(x_j)), written with functional ops."""
    xs = [branch(x) for branch, x in zip(module.branches, xs)]
    outs = []
    for i in range(len(xs)):
        terms = []
        for j, x in enumerate(xs):
            if j == i:
                t = x
            elif j > i:
                conv, bn = module.fuse_layers[i][j]
                t = F.interpolate(_bn(F.conv2d(x, conv.weight), bn), size=xs[i].shape[-2:],
                                  mode="bilinear", align_corners=align_corners)
            else:
                t = x
                for k, step in enumerate(module.fuse_layers[i][j]):
                    t = _bn(F.conv2d(t, step[0].weight, stride=2, padding=1), step[1])
                    if k < i - j - 1:
                        t = F.relu(t)
            terms.append(t)
        y = terms[0]
        for t in terms[1:]:
            y = y + t
        outs.append(F.relu(y))
    return outs


def test_fuse_sums_in_the_original_order_with_bilinear_upsampling():
    torch.manual_seed(0)
    module = HighResolutionModule([4, 8, 16], blocks=1, norm=nn.BatchNorm2d).eval()
    for bn in module.modules():  # non-trivial statistics, so every term matters
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.normal_()
            bn.bias.data.normal_()
    xs = [torch.randn(2, 4, 16, 24), torch.randn(2, 8, 8, 12), torch.randn(2, 16, 4, 6)]
    with torch.no_grad():
        ours = module(xs)
        expected = _fuse_reference(module, xs)
        corners = _fuse_reference(module, xs, align_corners=True)
    assert [tuple(t.shape) for t in ours] == [tuple(x.shape) for x in xs]
    for a, b in zip(ours, expected):
        assert torch.equal(a, b)  # bit-exact: the same ops summed in the same order
    # The reference tells bilinear interpolation modes apart (outputs 0 and 1 upsample).
    assert not torch.allclose(ours[0], corners[0]) and not torch.allclose(ours[1], corners[1])


# ------------------------------------------------------------------ MODEL.PRETRAINED (ImageNet)
TOY = "hrnet_pretrained_toy"


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hrnet_toy"))
    write_split(root, "train", 2, seed=0, size=(48, 80))
    register_sem_seg(TOY, os.path.join(root, "train", "images"),
                     os.path.join(root, "train", "labels"),
                     classes=[f"class{i}" for i in range(19)], image_ext=".png")
    yield TOY
    DatasetCatalog.remove(TOY)
    MetadataCatalog.remove(TOY)


@pytest.fixture
def logs():
    """Messages of the MODEL.PRETRAINED loader's logger."""
    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("dl_lib.checkpoint.pretrained")
    handler, level = Capture(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _imagenet_file(backbone):
    """HRNet-Image-Classification's layout: the backbone's names plus its classification head
    (shapes of ``hrnet_w18_small_model_v2.pth``)."""
    sd = {k: v.clone() for k, v in backbone.state_dict().items()}
    sd["incre_modules.0.0.conv1.weight"] = torch.randn(32, 18, 1, 1)
    sd["incre_modules.0.0.bn1.running_mean"] = torch.randn(32)
    sd["downsamp_modules.0.0.weight"] = torch.randn(256, 128, 3, 3)
    sd["downsamp_modules.0.0.bias"] = torch.randn(256)
    sd["final_layer.0.weight"] = torch.randn(2048, 1024, 1, 1)
    sd["final_layer.1.num_batches_tracked"] = torch.tensor(5)
    sd["classifier.weight"] = torch.randn(1000, 2048)
    sd["classifier.bias"] = torch.randn(1000)
    return sd


def _trainer(toy, *opts):
    cfg = playground.load_config(W18_PLAYGROUND, [
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{toy}',)", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", *opts])
    return DefaultTrainer(cfg, playground.build_model(W18_PLAYGROUND, cfg))


def _trained_like(seed):
    torch.manual_seed(seed)
    net = HighResolutionNet("w18_small_v2")
    for m in net.modules():  # BN statistics as trained (the loader must copy buffers too)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.num_batches_tracked.fill_(7)
    return net


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_convert_pretrained_drops_the_classification_head(wrap):
    source = _trained_like(1)
    flat = _imagenet_file(source)
    sd = flat
    if wrap == "state_dict":
        sd = {"state_dict": flat}
    elif wrap == "module_prefix":
        sd = {"module." + k: v for k, v in flat.items()}
    converted = HighResolutionNet.convert_pretrained(sd)
    assert list(converted) == list(source.state_dict())  # the backbone's keys, nothing else
    assert all(v is flat[k] for k, v in converted.items())


def test_imagenet_file_loads_through_model_pretrained(toy_dataset, tmp_path, monkeypatch, logs):
    """A DDP-saved ``{"state_dict": {"module.<key>": ...}}`` file, through the trainer's
    ``resume_or_load`` as ``dl_train`` runs it, into the HRNet_W18 playground's model."""
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    source = _trained_like(1)
    sd = _imagenet_file(source)
    expected = source.state_dict()
    dropped = [k for k in sd if k not in expected]
    path = tmp_path / "hrnet_w18_small_model_v2.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)

    torch.manual_seed(2)
    trainer = _trainer(toy_dataset, "MODEL.PRETRAINED", str(path))
    model = trainer.model
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    trainer.resume_or_load(resume=False)
    backbone = find_backbone(model)
    assert backbone is model.backbone
    loaded = backbone.state_dict()
    for k, v in loaded.items():
        assert torch.equal(v, expected[k]), k
    # Every backbone tensor matched; the classification head was dropped, not reported unused.
    counted = [k for k in loaded if not k.endswith("num_batches_tracked")]
    assert f"{len(counted)}/{len(counted)} backbone tensors matched, 0 missing, 0 shape " \
        "mismatches, 0 unexpected in the file" in logs[-1]
    assert len(dropped) == 8 and not any(d in logs[-1] for d in dropped)
    for k, v in model.head.state_dict().items():  # the segmentation head stays as built
        assert torch.equal(v, head_before[k]), k


def test_a_resnet_file_is_refused_naming_it(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    trainer = _trainer(toy_dataset, "MODEL.PRETRAINED", str(path))
    before = trainer.model.backbone.conv1.weight.detach().clone()
    with pytest.raises(PretrainedWeightsError) as e:
        trainer.resume_or_load(resume=False)
    msg = str(e.value)
    assert "resnet18-imagenet.pth" in msg and "does not fit the backbone HighResolutionNet" in msg
    assert "22/720 backbone tensors matched, 695 missing, 3 shape mismatches" in msg
    assert "conv1.weight (64, 3, 7, 7) in the file vs (64, 3, 3, 3)" in msg
    assert torch.equal(trainer.model.backbone.conv1.weight, before)  # nothing copied
