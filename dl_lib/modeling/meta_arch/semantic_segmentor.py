"""The plain semantic segmentor (detectron2's ``SemanticSegmentor`` contract) that methods extend.

Data flow: list of dicts (uint8 RGB ``image`` C×H×W, ``height``, ``width``, optional ``sem_seg``)
-> normalise and pad to ``size_divisibility`` -> ``forward_logits`` (backbone + head, logits at the
head's stride) -> training: cross-entropy against the padded labels; eval: crop the padding and
resize to ``height``×``width``.

Subclasses change how logits are produced by overriding ``forward_logits`` (and ``output_stride``),
how they are supervised by overriding ``losses``, and which exit is returned by ``postprocess``.
A ``forward_logits`` returning a list (several exits, cheapest first) gets one loss per exit
(weighted by ``MODEL.EXIT_LOSS_WEIGHTS``) and eval outputs ``sem_seg`` (the last exit) plus
``sem_seg_exits`` (all of them).
"""
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.data.batch import pad_and_stack, pad_labels

from ..registry import META_ARCH_REGISTRY

__all__ = ["SemanticSegmentor", "resize_logits"]

Logits = Union[torch.Tensor, List[torch.Tensor]]


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of N×K×h×w (or K×h×w) logits to ``size`` = (H, W); no-op when equal."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    squeeze = logits.dim() == 3
    x = logits[None] if squeeze else logits
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


@META_ARCH_REGISTRY.register()
class SemanticSegmentor(nn.Module):
    """Backbone + segmentation head.

    Args:
        backbone: module ``x -> {name: feature}`` with ``size_divisibility`` (e.g. ``Backbone``).
        head: module ``features -> N×K×(H/s)×(W/s)`` logits with attribute ``output_stride`` = s.
        pixel_mean, pixel_std: per-channel RGB statistics in 0–255 units; images are normalised as
            ``(image - mean) / std`` inside the model.
        ignore_value: label value excluded from the loss.
        size_divisibility: batches are padded to multiples of this (0: the backbone's own).
        loss_weight: multiplies the cross-entropy.
        exit_loss_weights: for models whose ``forward_logits`` returns a list (several exits,
            cheapest first), one weight per exit (``MODEL.EXIT_LOSS_WEIGHTS``); empty = 1.0 each.
    """

    def __init__(self, *, backbone: nn.Module, head: nn.Module, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], ignore_value: int = 255, size_divisibility: int = 0,
                 loss_weight: float = 1.0, exit_loss_weights: Sequence[float] = ()):
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} "
                             "must have the same length.")
        self.backbone = backbone
        self.head = head
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.exit_loss_weights = [float(w) for w in exit_loss_weights]
        if size_divisibility <= 0:
            size_divisibility = getattr(backbone, "size_divisibility", 1)
        self.size_divisibility = size_divisibility
        # Not persistent: they come from the config, so checkpoints stay free of them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        """Constructor arguments from a config: ``cls(**cls.from_config(cfg))``."""
        from ..build import build_backbone, build_sem_seg_head

        backbone = build_backbone(cfg)
        head = build_sem_seg_head(cfg, backbone.output_shape())
        return dict(backbone=backbone, head=head, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                    pixel_std=cfg.MODEL.PIXEL_STD, ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    loss_weight=cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
                    exit_loss_weights=cfg.MODEL.EXIT_LOSS_WEIGHTS)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def output_stride(self) -> int:
        """Stride of the logits ``forward_logits`` returns (input pixels per logit pixel)."""
        return self.head.output_stride

    # ---------------------------------------------------------------- logits
    def forward_logits(self, x: torch.Tensor) -> Logits:
        """Normalised, padded N×3×H×W -> N×K×(H/s)×(W/s) logits at ``output_stride`` s.

        Models with several exits return a list (one tensor per exit, cheapest first).
        """
        return self.head(self.backbone(x))

    def predict_logits(self, x: torch.Tensor, native_resolution: bool = False) -> Logits:
        """Logits for an already-normalised N×3×H×W float batch (any H, W).

        Returns N×K×H×W logits, or with ``native_resolution=True`` the N×K×ceil(H/s)×ceil(W/s)
        logits at the head's stride s before the final resize. A list for multi-exit models.
        """
        height, width = x.shape[-2:]
        d = max(self.size_divisibility, 1)
        # Zero padding of a normalised batch is padding with the mean pixel, as in forward().
        padded = F.pad(x, (0, -width % d, 0, -height % d))
        logits = self.forward_logits(padded)

        def finish(t: torch.Tensor) -> torch.Tensor:
            if native_resolution:
                s = padded.shape[-2] // t.shape[-2]
                return t[..., : -(-height // s), : -(-width // s)]
            return resize_logits(t, padded.shape[-2:])[..., :height, :width]

        return [finish(t) for t in logits] if isinstance(logits, (list, tuple)) else finish(logits)

    # ---------------------------------------------------------------- batch in / out
    def preprocess_images(self, batched_inputs: List[dict]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """Normalise the ``image`` of every input and pad them into one N×3×H×W batch.

        Padding happens after normalisation with 0, i.e. with the mean pixel.
        """
        images = [(d["image"].to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
                  for d in batched_inputs]
        return pad_and_stack(images, self.size_divisibility, 0.0)

    def preprocess_targets(self, batched_inputs: List[dict], size: Sequence[int]) -> torch.Tensor:
        """``sem_seg`` label maps padded with ``ignore_value`` into an N×H×W long batch of ``size``."""
        if any("sem_seg" not in d for d in batched_inputs):
            raise KeyError("Training needs a 'sem_seg' label map in every input dict; the dataset mapper "
                           "adds it when the dataset has sem_seg_file_name.")
        targets = pad_labels([d["sem_seg"].to(self.device, non_blocking=True) for d in batched_inputs],
                             1, self.ignore_value)
        h, w = size
        # Labels are padded to the image batch's size (the same unless an image and its label differ).
        return F.pad(targets, (0, w - targets.shape[-1], 0, h - targets.shape[-2]), value=self.ignore_value)

    def losses(self, logits: Logits, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cross-entropy of the logits (upsampled to the label size) against N×H×W ``targets``.

        A list of logits (several exits) gets one loss per exit, ``loss_sem_seg_{i}``, times
        ``exit_loss_weights[i]`` (1.0 each when empty).
        """
        if isinstance(logits, (list, tuple)):
            weights = self._exit_weights(len(logits))
            return {f"loss_sem_seg_{i}": self.losses(t, targets)["loss_sem_seg"] * w
                    for i, (t, w) in enumerate(zip(logits, weights))}
        logits = resize_logits(logits, targets.shape[-2:])
        loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="mean")
        return {"loss_sem_seg": loss * self.loss_weight}

    def _exit_weights(self, num_exits: int) -> List[float]:
        """One loss weight per exit: ``exit_loss_weights``, or 1.0 each when it is empty."""
        if not self.exit_loss_weights:
            return [1.0] * num_exits
        if len(self.exit_loss_weights) != num_exits:
            raise ValueError(
                f"MODEL.EXIT_LOSS_WEIGHTS has {len(self.exit_loss_weights)} values "
                f"{self.exit_loss_weights} but the model returned {num_exits} exits; give one "
                "weight per exit (cheapest first) or [] for 1.0 each")
        return self.exit_loss_weights

    def postprocess(self, logits: Logits, padded_size: Sequence[int], image_sizes: List[Tuple[int, int]],
                    batched_inputs: List[dict]) -> List[dict]:
        """Per image: crop the padding, resize to (``height``, ``width``) -> ``{"sem_seg": K×h×w}``.

        For several exits ``sem_seg`` is the last (most accurate) one and ``sem_seg_exits`` the
        list of all of them (cheapest first), each K×height×width.
        """
        exits = list(logits) if isinstance(logits, (list, tuple)) else [logits]
        exits = [resize_logits(t, padded_size) for t in exits]
        results = []
        for i, (d, (h, w)) in enumerate(zip(batched_inputs, image_sizes)):
            size = (d.get("height", h), d.get("width", w))
            per_exit = [resize_logits(t[i, :, :h, :w], size) for t in exits]
            out = {"sem_seg": per_exit[-1]}
            if isinstance(logits, (list, tuple)):
                out["sem_seg_exits"] = per_exit
            results.append(out)
        return results

    def forward(self, batched_inputs: List[dict]):
        """Training: dict of losses. Eval: list of ``{"sem_seg": K×height×width}`` (plus
        ``"sem_seg_exits"`` for several exits; see module doc)."""
        images, image_sizes = self.preprocess_images(batched_inputs)
        logits = self.forward_logits(images)
        if self.training:
            targets = self.preprocess_targets(batched_inputs, images.shape[-2:])
            return self.losses(logits, targets)
        return self.postprocess(logits, images.shape[-2:], image_sizes, batched_inputs)
