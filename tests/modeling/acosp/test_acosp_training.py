"""ACoSP training pieces: ImageNet files into masked backbones (semseg's resnet50_v2 layout into
``X.0.weight`` of masked convs; torchvision's vgg16 into SegNet's encoder), semseg's augmentation
list, and a compressed SegNet whose ``architecture()`` (``MODEL.PRUNING.CHANNELS``) rebuilds it
from the config so that its weights load strictly and give the masked model's logits."""
import pytest
import torch
import torchvision

from dl_lib.checkpoint import load_pretrained_backbone
from dl_lib.config import config_from_delta
from dl_lib.data.transforms import (RandomCropPad, RandomFlip, RandomGaussianBlur, RandomRotate,
                                    RandomScale)
from dl_lib.modeling import build_model
from dl_lib.modeling.acosp import backbone_config
from dl_lib.modeling.acosp.training import load_pretrained_masked, semseg_augmentations
from dl_lib.modeling.pruning import channel_masks, to_hard_masks
from dl_lib.modeling.pruning.compress import compress

pytestmark = pytest.mark.usefixtures("one_thread")

SEMSEG_STEM = {"stem.0.": "conv1.", "stem.1.": "bn1.", "stem.3.": "conv2.", "stem.4.": "bn2.",
               "stem.6.": "conv3.", "stem.7.": "bn3."}


def cfg_of(arch, **model):
    delta = dict(META_ARCHITECTURE=arch, DEVICE="cpu", **model)
    return config_from_delta(dict(MODEL=delta), family=["pruning", "acosp"])


def test_semseg_imagenet_file_loads_into_a_masked_backbone(tmp_path):
    cfg = cfg_of("ACoSPPSPNet", BACKBONE=backbone_config("resnet18"),
                 PRUNING=dict(ENABLED=True, SPARSITY=0.5))
    model = build_model(cfg)
    dense = build_model(cfg_of("ACoSPPSPNet", BACKBONE=backbone_config("resnet18")))
    # The semseg layout: top-level conv1..3 / bn1..3, layer1..4, fc (random values).
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in dense.backbone.state_dict().items():
        for ours, theirs in SEMSEG_STEM.items():
            if k.startswith(ours):
                k = theirs + k[len(ours):]
        sd[k] = torch.randn(v.shape, generator=g) if v.is_floating_point() else v
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = str(tmp_path / "resnet_v2.pth")
    torch.save(sd, path)
    logits_before = {k: m.weight.detach().clone() for k, m in channel_masks(model).items()}
    report = load_pretrained_masked(model, path)
    assert report.fraction == 1.0 and not report.missing
    got = model.backbone.state_dict()
    torch.testing.assert_close(got["stem.0.0.weight"], sd["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(got["stem.7.running_var"], sd["bn3.running_var"], rtol=0, atol=0)
    torch.testing.assert_close(got["layer3.0.downsample.0.0.weight"],
                               sd["layer3.0.downsample.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(got["layer4.1.conv2.0.weight"], sd["layer4.1.conv2.weight"],
                               rtol=0, atol=0)
    for k, m in channel_masks(model).items():  # the masks' logits are not the file's
        assert torch.equal(m.weight, logits_before[k])
    # The library's loader alone cannot place them: the conv weights moved to X.0.
    with pytest.raises(Exception, match="does not fit|this backbone does not have"):
        load_pretrained_backbone(model.backbone, path)


def test_torchvision_vgg16_loads_into_the_segnet_encoder(tmp_path):
    vgg = torchvision.models.vgg16(weights=None)
    path = str(tmp_path / "vgg16.pth")
    torch.save(vgg.state_dict(), path)
    model = build_model(cfg_of("ACoSPSegNet", PRUNING=dict(ENABLED=True, SPARSITY=0.75)))
    bn_before = model.backbone.down2.conv1.cbr_unit[1].weight.detach().clone()
    report = load_pretrained_masked(model, path)
    assert report.fraction == 1.0 and len(report.matched) == 26  # 13 convs x (weight, bias)
    # The BNs keep their initialisation (VGG-16 has none); the classifier is not loaded.
    assert torch.equal(model.backbone.down2.conv1.cbr_unit[1].weight, bn_before)
    enc = model.backbone
    torch.testing.assert_close(enc.down1.conv1.cbr_unit[0][0].weight, vgg.features[0].weight)
    torch.testing.assert_close(enc.down3.conv2.cbr_unit[0][0].bias, vgg.features[12].bias)
    torch.testing.assert_close(enc.down5.conv3.cbr_unit[0][0].weight, vgg.features[28].weight)


def test_semseg_augmentation_order():
    cfg = cfg_of("ACoSPSegNet")
    cfg.INPUT.SEMSEG_AUG.SCALE = [0.25, 1.0]
    cfg.INPUT.CROP_PAD.SIZE = [360, 480]
    augs = semseg_augmentations(cfg)
    assert [type(a) for a in augs] == [RandomScale, RandomRotate, RandomGaussianBlur, RandomFlip,
                                       RandomCropPad]
    assert (augs[0].min_scale, augs[0].max_scale) == (0.25, 1.0)
    assert (augs[1].min_angle, augs[1].max_angle, augs[1].prob) == (-10.0, 10.0, 0.5)
    assert augs[1].pad_value == list(cfg.MODEL.PIXEL_MEAN) and augs[1].seg_pad_value == 255
    assert augs[4].crop_size == (360, 480) and augs[4].seg_pad_value == 255


@pytest.mark.parametrize("placement", ["original", "after_bn"])
def test_compressed_segnet_rebuilds_from_its_architecture(placement):
    narrow = dict(ACOSP=dict(SEGNET_WIDTHS=[8, 16, 32, 64, 64]))
    cfg = cfg_of("ACoSPSegNet", SEM_SEG_HEAD=dict(NUM_CLASSES=5), **narrow,
                 PRUNING=dict(ENABLED=True, SPARSITY=0.5, PLACEMENT=placement))
    torch.manual_seed(0)
    masked = build_model(cfg).eval()
    for m in masked.modules():  # non-trivial BN statistics, so the pruned constants matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.bias.data.uniform_(-0.5, 0.5)
    to_hard_masks(masked)
    assert masked.architecture() == {"MODEL.PRUNING.HARD_MASKS": True}
    small = compress(masked, torch.randn(1, 3, 64, 64)).eval()
    arch = small.architecture()
    assert set(arch) == {"MODEL.PRUNING.CHANNELS"} and arch["MODEL.PRUNING.CHANNELS"]
    rebuilt_cfg = cfg_of("ACoSPSegNet", SEM_SEG_HEAD=dict(NUM_CLASSES=5), **narrow,
                         PRUNING=dict(CHANNELS=arch["MODEL.PRUNING.CHANNELS"]))
    rebuilt = build_model(rebuilt_cfg).eval()
    rebuilt.load_state_dict(small.state_dict(), strict=True)
    n = sum(p.numel() for p in rebuilt.parameters())
    assert n < 0.5 * sum(p.numel() for p in build_model(cfg_of(
        "ACoSPSegNet", SEM_SEG_HEAD=dict(NUM_CLASSES=5), **narrow)).parameters())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.predict_logits(x), masked.predict_logits(x),
                                   atol=1e-4, rtol=1e-4)


def test_acosp_trainer_initialises_a_masked_segnet_and_converts_at_the_end_epoch(tmp_path):
    """The CamVid ACoSP-4 recipe at 1/8 width on four toy images: MODEL.PRETRAINED (a VGG-16
    layout file of that width) lands in the masked convs, the loader is semseg's, and the masks
    become hard at iteration END_EPOCH x ITERS_PER_EPOCH."""
    import os

    from toy_data import write_split

    from dl_lib.data import DatasetCatalog, MetadataCatalog, register_sem_seg
    from dl_lib.modeling.acosp import ACoSPTrainer
    from dl_lib.modeling.acosp.recipes import acosp_config

    write_split(str(tmp_path), "train", 4, seed=0, size=(40, 48))
    name = "acosp_trainer_toy"
    register_sem_seg(name, str(tmp_path / "train" / "images"), str(tmp_path / "train" / "labels"),
                     classes=[f"c{i}" for i in range(11)], image_ext=".png")
    widths = [8, 16, 32, 64, 64]
    vgg, index, cin = {}, 0, 3
    for w, depth in zip(widths, (2, 2, 3, 3, 3)):
        for _ in range(depth):
            vgg[f"features.{index}.weight"] = torch.randn(w, cin, 3, 3)
            vgg[f"features.{index}.bias"] = torch.randn(w)
            cin, index = w, index + 2
        index += 1  # the max-pool
    torch.save(vgg, str(tmp_path / "vgg.pth"))
    try:
        cfg = acosp_config("SegNet", "CamVid", sparsity=0.75)
        cfg.merge_from_list([
            "MODEL.DEVICE", "cpu", "MODEL.PRETRAINED", str(tmp_path / "vgg.pth"),
            "MODEL.ACOSP.SEGNET_WIDTHS", "[8, 16, 32, 64, 64]", "MODEL.PRUNING.ITERS_PER_EPOCH", "1",
            "MODEL.PRUNING.END_EPOCH", "2", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.LR_SCHEDULER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100",
            "INPUT.CROP_PAD.SIZE", "[32, 32]", "OUTPUT_DIR", str(tmp_path / "out")])
        model = build_model(cfg)
        trainer = ACoSPTrainer(cfg, model)
        trainer.resume_or_load(resume=False)
        conv = model.backbone.down4.conv2.cbr_unit[0][0]
        torch.testing.assert_close(conv.weight, vgg["features.19.weight"])
        assert cfg.MODEL.PRETRAINED == str(tmp_path / "vgg.pth")  # restored after loading
        trainer.train()
        masks = channel_masks(model)
        assert len(masks) == 25 and all(m.is_hard for m in masks.values())
        assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_compressed_pspnet_rebuilds_from_its_architecture():
    """PSPNet on the deep-stem ResNet-18 at ACoSP-4, original placement: compressed (the aux
    head with it), rebuilt from MODEL.PRUNING.CHANNELS, same logits, still trains."""
    model = dict(BACKBONE=backbone_config("resnet18"), SEM_SEG_HEAD=dict(NUM_CLASSES=7))
    torch.manual_seed(0)
    masked = build_model(cfg_of("ACoSPPSPNet", **model,
                                PRUNING=dict(ENABLED=True, SPARSITY=0.75))).eval()
    for m in masked.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.uniform_(-0.5, 0.5)
    to_hard_masks(masked)
    small = compress(masked, torch.randn(1, 3, 65, 65)).eval()
    channels = small.architecture()["MODEL.PRUNING.CHANNELS"]
    rebuilt = build_model(cfg_of("ACoSPPSPNet", **model, PRUNING=dict(CHANNELS=channels))).eval()
    rebuilt.load_state_dict(small.state_dict(), strict=True)
    dense_backbone = sum(p.numel() for p in build_model(cfg_of(
        "ACoSPPSPNet", **model)).backbone.parameters())
    assert sum(p.numel() for p in rebuilt.backbone.parameters()) < 0.25 * dense_backbone
    x = torch.randn(1, 3, 57, 73)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.predict_logits(x), masked.predict_logits(x),
                                   atol=1e-4, rtol=1e-4)
        # The aux head (traced through compression_forward) is compressed too and still agrees.
        for a, b in zip(masked.compression_forward(x), rebuilt.compression_forward(x)):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert rebuilt.head.aux[0].in_channels == rebuilt.backbone.layer3[-1].conv2.out_channels < 256
    rebuilt.train()
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, 33, 33), generator=g, dtype=torch.uint8),
              "sem_seg": torch.randint(0, 7, (33, 33), generator=g)} for _ in range(2)]
    losses = rebuilt(batch)  # the compressed network trains on, aux loss included
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    sum(losses.values()).backward()
