"""MODEL.PRETRAINED: ResNet ImageNet layouts through ResNet.convert_pretrained, the report, the
stop when too little matched, and the trainer's order (PRETRAINED, then WEIGHTS; not on resume)."""
import logging

import pytest
import torch
import torchvision

from dl_lib import playground
from dl_lib.checkpoint import PretrainedWeightsError, find_backbone, load_pretrained_backbone
from dl_lib.modeling import ResNet, build_model


@pytest.fixture
def logs():
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


@pytest.mark.parametrize("depth", ["resnet18", "resnet50"])
def test_torchvision_layout(tmp_path, depth, logs):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, depth)()
    path = tmp_path / f"{depth}_tv.pth"
    torch.save(tv.state_dict(), path)
    net = ResNet(depth)
    report = load_pretrained_backbone(net, str(path))
    ours, theirs = net.state_dict(), tv.state_dict()
    for k, v in ours.items():
        assert torch.equal(v, theirs[k]), k
    counted = [k for k in ours if not k.endswith("num_batches_tracked")]
    assert report.total == len(report.matched) == len(counted)
    assert report.missing == report.unexpected == report.mismatched == []  # fc.* dropped
    assert f"{len(counted)}/{len(counted)} backbone tensors matched" in logs[-1]
    assert "| group" in logs[-1] and "layer4" in logs[-1]


# Stem names of the deep-stem ImageNet files (see the PSPNet resnet50_v2 and MFARANet
# resnet18-deep-inplane128 layouts): file prefix -> our ResNet's prefix.
_SEMSEG = {"conv1.": "stem.0.", "bn1.": "stem.1.", "conv2.": "stem.3.", "bn2.": "stem.4.",
           "conv3.": "stem.6.", "bn3.": "stem.7."}
_SFNET = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.",
          "conv1.4.": "stem.4.", "conv1.6.": "stem.6.", "bn1.": "stem.7."}


def _foreign(net, layout, fc_in):
    """``net``'s tensors under the file's names, plus an ImageNet classifier."""
    inverse = {ours: theirs for theirs, ours in layout.items()}
    sd = {}
    for k, v in net.state_dict().items():
        for ours, theirs in inverse.items():
            if k.startswith(ours):
                k = theirs + k[len(ours):]
                break
        sd[k] = v.clone()
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, fc_in), torch.randn(1000)
    return sd


@pytest.mark.parametrize("depth,layout,fc_in,expected_shapes", [
    # shapes as dumped from the original models (semseg deep-base ResNet-50, MFARANet ResNet-18)
    ("resnet50", _SEMSEG, 2048, {"conv1.weight": (64, 3, 3, 3), "conv3.weight": (128, 64, 3, 3),
                                 "bn3.weight": (128,), "layer1.0.conv1.weight": (64, 128, 1, 1),
                                 "layer1.0.downsample.0.weight": (256, 128, 1, 1)}),
    ("resnet18", _SFNET, 512, {"conv1.0.weight": (64, 3, 3, 3), "conv1.6.weight": (128, 64, 3, 3),
                               "bn1.weight": (128,), "layer1.0.conv1.weight": (64, 128, 3, 3),
                               "layer1.0.downsample.0.weight": (64, 128, 1, 1)}),
])
def test_deep_stem_layouts(tmp_path, depth, layout, fc_in, expected_shapes):
    torch.manual_seed(0)
    source = ResNet(depth, deep_stem=True, stem_width=128)
    sd = _foreign(source, layout, fc_in)
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("stem.") for k in sd)
    path = tmp_path / "deep.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)  # wrapped, DDP

    torch.manual_seed(1)
    net = ResNet(depth, deep_stem=True, stem_width=128)
    report = load_pretrained_backbone(net, str(path))
    assert report.fraction == 1.0 and not report.unexpected
    for k, v in net.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k


def test_random_file_stops_naming_file_counts_and_keys(tmp_path):
    path = tmp_path / "random.pth"
    torch.save({"encoder.weight": torch.randn(8, 3), "head.bias": torch.randn(8)}, path)
    net = ResNet("resnet18")
    before = net.conv1.weight.detach().clone()
    with pytest.raises(PretrainedWeightsError) as e:
        load_pretrained_backbone(net, str(path))
    msg = str(e.value)
    assert "random.pth" in msg and "0/100 backbone tensors matched" in msg
    assert "100 missing" in msg and "conv1.weight" in msg and "encoder.weight" in msg
    assert torch.equal(net.conv1.weight, before)  # nothing copied


def test_other_depth_stops(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PretrainedWeightsError,
                       match=r"r18.pth.*shape mismatches.*layer1\.0\.conv1"):
        load_pretrained_backbone(ResNet("resnet50"), str(tmp_path / "r18.pth"))


def test_partial_match_loads_and_reports(tmp_path, logs):
    # A torchvision file into the deep-stem model: the stem is missing, the stages load.
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    net = ResNet("resnet18", deep_stem=True)
    report = load_pretrained_backbone(net, str(tmp_path / "r18.pth"))
    assert 0.5 < report.fraction < 1.0
    assert "stem.0.weight" in report.missing and "conv1.weight" in report.unexpected
    assert torch.equal(net.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    assert "stem" in logs[0] and "missing" in logs[0]


def _small_model_cfg(folder, *opts):
    """The fixture playground's config with the library's ResNet-18 segmentor, 8 channels wide."""
    return playground.load_config(folder, [
        "MODEL.BACKBONE.WIDTH", "8", "MODEL.BACKBONE.OUT_FEATURES", "['res2', 'res3']",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3']", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "8",
        "MODEL.SEM_SEG_HEAD.NORM", "", *opts])


def test_trainer_loads_pretrained_then_weights_and_not_on_resume(toy_playground, tmp_path):
    def _trainer(cfg):  # the fixture's Trainer (in-memory loaders) on the library's model
        return playground.load_net(toy_playground).Trainer(cfg, build_model(cfg))

    torch.manual_seed(0)
    imagenet = ResNet("resnet18", width=8, out_features=["res2", "res3"]).state_dict()
    imagenet["fc.weight"] = torch.randn(10, 128)
    torch.save(imagenet, tmp_path / "imagenet.pth")
    torch.manual_seed(1)
    whole = build_model(_small_model_cfg(toy_playground)).state_dict()
    del whole["backbone.layer2.0.conv1.weight"]  # WEIGHTS lacks one backbone tensor
    torch.save({"model": whole}, tmp_path / "weights.pth")

    cfg = _small_model_cfg(toy_playground, "MODEL.PRETRAINED", str(tmp_path / "imagenet.pth"),
                           "MODEL.WEIGHTS", str(tmp_path / "weights.pth"))
    trainer = _trainer(cfg)
    trainer.resume_or_load(resume=True)  # nothing to resume: a fresh run
    backbone = find_backbone(trainer.model)
    # MODEL.WEIGHTS is loaded after MODEL.PRETRAINED and wins where it has the tensor ...
    assert torch.equal(backbone.conv1.weight, whole["backbone.conv1.weight"])
    # ... and MODEL.PRETRAINED fills in what it lacks (training init stays lenient).
    assert torch.equal(backbone.layer2[0].conv1.weight, imagenet["layer2.0.conv1.weight"])
    trainer.checkpointer.save("model_0000000", iteration=0)

    # A resume ignores MODEL.PRETRAINED: even a file that fits nothing is not read.
    torch.save({"junk": torch.zeros(1)}, tmp_path / "junk.pth")
    cfg = _small_model_cfg(toy_playground, "MODEL.PRETRAINED", str(tmp_path / "junk.pth"))
    resumed = _trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 1
    with pytest.raises(PretrainedWeightsError, match="junk.pth"):
        _trainer(cfg).resume_or_load(resume=False)
