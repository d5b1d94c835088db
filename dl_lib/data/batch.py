"""Padding images (and label maps) of different sizes into one batch tensor."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["pad_and_stack", "pad_labels"]


def _padded_size(sizes: Sequence[Tuple[int, int]], size_divisibility: int) -> Tuple[int, int]:
    hp = max(s[0] for s in sizes)
    wp = max(s[1] for s in sizes)
    if size_divisibility > 1:
        d = size_divisibility
        hp, wp = (hp + d - 1) // d * d, (wp + d - 1) // d * d
    return hp, wp


def pad_and_stack(images: Sequence[torch.Tensor], size_divisibility: int = 0,
                  pad_value: float = 0.0) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Stack C×H_i×W_i tensors into N×C×Hp×Wp, padding bottom/right with ``pad_value``.

    Hp, Wp are the largest H, W rounded up to a multiple of ``size_divisibility`` (0 or 1: no
    rounding). Returns the batch and the list of original ``(h, w)``, to crop outputs back.
    Models pad *normalised* images with 0 (= the pixel mean).
    """
    if len(images) == 0:
        raise ValueError("pad_and_stack: no images")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    hp, wp = _padded_size(sizes, size_divisibility)
    out = images[0].new_full((len(images),) + tuple(images[0].shape[:-2]) + (hp, wp), pad_value)
    for i, im in enumerate(images):
        out[i, ..., : im.shape[-2], : im.shape[-1]].copy_(im)
    return out, sizes


def pad_labels(labels: Sequence[torch.Tensor], size_divisibility: int = 0,
               ignore_value: int = 255) -> torch.Tensor:
    """Stack H_i×W_i label maps into an N×Hp×Wp long tensor padded with ``ignore_value``
    (same Hp, Wp as :func:`pad_and_stack` with the same sizes and divisibility)."""
    out, _ = pad_and_stack([l.long() for l in labels], size_divisibility, ignore_value)
    return out
