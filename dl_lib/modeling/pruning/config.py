"""Config keys of the ``pruning`` family (ACoSP's soft top-k channel pruning, reference
``acosp.md`` sections 2-3). ``dl_lib.modeling.pruning.prepare_model(cfg, model)`` reads them; the
schedule (temperature, soft -> hard conversion) is run by ``PruningHook``
(``dl_lib.modeling.pruning.training``)."""
from dl_lib.config import CfgNode, register_family_config


@register_family_config("pruning")
def add_pruning_config(cfg: CfgNode) -> None:
    cfg.MODEL.PRUNING = CfgNode()
    # Attach a learnable per-channel mask to every prunable convolution (False: a dense model).
    cfg.MODEL.PRUNING.ENABLED = False
    # Fraction s of each layer's output channels removed: ACoSP-2/4/8/16 = 0.5/0.75/0.875/0.9375.
    cfg.MODEL.PRUNING.SPARSITY = 0.5
    # Each layer keeps k = max(ceil((1 - s) * C), MIN_CHANNELS) channels (at most C): the original's 8.
    cfg.MODEL.PRUNING.MIN_CHANNELS = 8
    # "original": mask right after the conv, before its BN (released checkpoints' keys X.0 / X.1);
    # "after_bn": after the BN that follows the conv, so a pruned channel is exactly zero.
    cfg.MODEL.PRUNING.PLACEMENT = "original"
    # fnmatch patterns of conv module paths to mask; empty = every Conv2d / ConvTranspose2d.
    cfg.MODEL.PRUNING.INCLUDE = []
    # Patterns never masked (plus convs with `unprunable = True`, e.g. the classifiers).
    cfg.MODEL.PRUNING.EXCLUDE = []
    # False: fixed random logits, only the temperature anneals (the CamVid "annealed" runs).
    cfg.MODEL.PRUNING.LEARNABLE = True
    # Build the masks hard (0/1 buffers X.1.mask, to be loaded: released or converted checkpoints;
    # `pruning_architecture` records it in checkpoints saved after the conversion).
    cfg.MODEL.PRUNING.HARD_MASKS = False
    # Temperature of the soft top-k at the start of pruning (the original's initial_temp).
    cfg.MODEL.PRUNING.TEMPERATURE_START = 1.0
    # ... and at END_EPOCH (final_temp); the decay in between is log-linear.
    cfg.MODEL.PRUNING.TEMPERATURE_END = 0.001
    # Epoch at which the temperature starts to fall (starting_epoch).
    cfg.MODEL.PRUNING.START_EPOCH = 0
    # Epoch at whose start the soft masks become fixed 0/1 top-k masks (ending_epoch; 0 = random
    # subset at initialisation).
    cfg.MODEL.PRUNING.END_EPOCH = 50
    # Iterations in one epoch of the original recipe (its dataset size / batch size).
    cfg.MODEL.PRUNING.ITERS_PER_EPOCH = 1
    # "epoch": T changes once per epoch, one epoch late, as the original; "iteration": every step.
    cfg.MODEL.PRUNING.TEMPERATURE_SCHEDULE = "epoch"
    # Convert the masks that are still soft when training ends (the original does).
    cfg.MODEL.PRUNING.HARD_AT_END = True
    # Learning rate of the logits = SOLVER.OPTIMIZER.BASE_LR x this (their own group).
    cfg.MODEL.PRUNING.LOGIT_LR_FACTOR = 1.0
    # Weight decay of the logits (the original decays them by accident: 1e-4 / 5e-4).
    cfg.MODEL.PRUNING.LOGIT_WEIGHT_DECAY = 0.0
    # True: the logits join their host's group instead (weight decay, head lr factor: the original).
    cfg.MODEL.PRUNING.LOGITS_FOLLOW_HOST = False
    # One mask per residual stream: the masks adding into a stage's stream (conv3, downsample)
    # share the first one's logits, so compression can remove stream channels too (the original
    # learns them independently: every stream channel some mask keeps stays).
    cfg.MODEL.PRUNING.TIE_STREAMS = False
    # compressed channel configuration, list of 'module.path=in,out' strings written by compress;
    # empty = dense
    cfg.MODEL.PRUNING.CHANNELS = []
