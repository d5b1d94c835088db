"""MFARANet, deep-stem ResNet-18 from ImageNet, on Cityscapes fine train (the authors' recipe; it
gave the released ``MFARANet_resnet_18_deep_stem_cityscapes_2GPU_train_lr_005_batch_14_200_200``).

12,997,264 parameters (12,996,748 at inference: the boundary heads only train). Recipe: 200 epochs
= 42,400 iterations of 14 images (synchronised BN) of 1024x2048 crops of frames rescaled by
U[0.5, 2] (padded with the mean / 255), horizontal flips; SGD 0.005 (decoder x10), momentum 0.9,
weight decay 5e-4 on every parameter, poly decay (power 0.9) per iteration, no warm-up; losses CE
(fused) + per branch OHEM CE (0.7, 100,000) + 0.3 boundary BCE + 0.1 boundary-attention CE.
Published (val, README): mIoU 78.2 at 1024x2048, 77.9 with 1024x1024 windows.

What our config cannot say exactly: the original's RandRotate (U[-10, 10] degrees, p 0.5) has no
key here (training runs without it); its validation every epoch (a CE loss) is not repeated: ours
scores mIoU at the end; the README's 1024x1024 crop is the yaml's 1024x2048 here.

Put ``resnet18-deep-inplane128.pth`` under ``pretrained_models/`` of this folder, or pass its path:

    cd playground/MFARANet/R18_DeepStem.Cityscapes
    dl_train --num-gpus 2 MODEL.PRETRAINED /path/to/resnet18-deep-inplane128.pth
    dl_test --num-gpus 2 MODEL.WEIGHTS /path/to/<released>_200_200.pth    # whole frames
    dl_test --num-gpus 2 MODEL.WEIGHTS <file> TEST.MODE slide TEST.SLIDE.CROP_SIZE "[1024, 1024]" \
        TEST.SLIDE.STRIDE "[683, 683]"                                     # 1024x1024 windows
"""
from dl_lib.modeling.mfaranet.recipes import cityscapes_config

# The recipe is this experiment (dl_lib/modeling/mfaranet/recipes.py).
config = cityscapes_config()
