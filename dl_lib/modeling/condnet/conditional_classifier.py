"""CondNet's conditional classifier (reference ``condnet.md`` section 2), a drop-in for the final
1×1 classifier of any segmentation head.

Given head features F (N×C×H×W) and K classes, per image:

1. ``F ← Dropout2d(p)(F)``; the dropped-out features are both pooled and classified;
2. guidance logits ``G = guidance_project(F)`` (1×1 conv C→K, with bias), returned as 2nd output;
3. ``P = softmax_k(G)`` reshaped to N×K×(H·W);
4. class centres ``E = P · Fᵀ / (H·W)`` (N×K×C): normalised by the **pixel count**, not by
   ``Σ P_k``, as the original (needed to load its weights);
5. ``E`` flattened to N×(K·C)×1×1 goes through ``filter_project``, a 1×1 conv with ``groups=K``
   (group k sees centre k) and ``K·S`` outputs, ``S = C + K·(L−1) + L·with_bias`` per class for L
   dynamic layers;
6. that vector is parsed into L dynamic layers (see layouts below): layer 0 has a K×C weight, each
   further layer a K×K weight (a ReLU in between), each a K-vector bias if ``with_bias``;
7. the per-image dynamic 1×1 classifier is a batched ``einsum('nkc,nchw->nkhw')`` (equivalent to
   the original's grouped ``conv2d`` over the batch, but traceable and exportable).

``forward`` returns ``(class_logits N×K×H×W, guidance_logits N×K×H×W)``.

Kernel layouts (how the K·S generated numbers of one image become the dynamic layers):

- ``"clean"`` (default for new training): group k's S outputs are, in order, row k of every
  layer's weight (C numbers for layer 0, K for each later layer) and then bias k of every layer:
  the kernel and bias of class k depend on centre k only.
- ``"original"``: the original's positional slicing of the flat vector: the first K·C numbers are
  layer 0's weight (K×C, row-major), then K·K per later layer, then the L bias vectors. Because
  the groups emit S = C+1 (L=1) numbers each, class c's kernel takes the last c numbers of group
  c−1 and the first C−c of group c, and **every bias comes from group K−1** (the last centre).
  Needed for checkpoints trained with the original code.

The two layouts have the same parameters (``filter_project`` rows) in a different order.
:func:`convert_kernel_layout` moves each row of ``filter_project`` so that it keeps its *role*
(which layer / class / element it generates). The inputs a row sees are those of its group, so a
converted model computes the same output exactly when all class centres are equal (e.g. uniform
guidance); otherwise a row that the original fed from a neighbouring centre now sees its own
class's centre. Use it to start ``clean`` training from an original checkpoint (or back); load
original checkpoints for inference with ``layout="original"``, which is exact.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConditionalClassifier", "convert_kernel_layout", "layout_permutation", "LAYOUTS"]

LAYOUTS = ("clean", "original")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"ConditionalClassifier: unknown kernel layout {layout!r}; "
                         f"use one of {LAYOUTS}")


def _roles(in_channels: int, num_classes: int, num_layers: int, with_bias: bool):
    """Yields (role, original flat index, clean flat index) for every generated number.

    A role is ('w', layer, class, element) or ('b', layer, class)."""
    C, K, L = in_channels, num_classes, num_layers
    per_class = C + K * (L - 1) + (L if with_bias else 0)
    # clean: offsets inside a class's group of S numbers
    w_offset = [0] + [C + K * (l - 1) for l in range(1, L)]
    w_len = [C] + [K] * (L - 1)
    b_offset = C + K * (L - 1)
    # original: flat positions
    orig = 0
    for l in range(L):
        for k in range(K):
            for e in range(w_len[l]):
                yield orig, k * per_class + w_offset[l] + e
                orig += 1
    if with_bias:
        for l in range(L):
            for k in range(K):
                yield orig, k * per_class + b_offset + l
                orig += 1


def layout_permutation(in_channels: int, num_classes: int, num_layers: int = 1,
                       with_bias: bool = True) -> torch.Tensor:
    """``perm`` (long, K·S) with ``clean_vector = original_vector[perm]``: index ``perm[j]`` is the
    original-layout position of the number that the clean layout puts at position ``j``."""
    pairs = list(_roles(in_channels, num_classes, num_layers, with_bias))
    perm = torch.empty(len(pairs), dtype=torch.long)
    for orig, clean in pairs:
        perm[clean] = orig
    return perm


class ConditionalClassifier(nn.Module):
    """Conditional (per-image) 1×1 classifier; see the module docstring for the steps and layouts.

    Args:
        in_channels: C, channels of the head features.
        num_classes: K.
        layout: ``"clean"`` or ``"original"`` (how generated numbers map to kernels).
        num_layers: L dynamic layers (the original: 1); later layers are K→K after a ReLU.
        with_bias: dynamic layers have a generated bias (the original: True).
        dropout: Dropout2d probability on the features (the original: 0.1).

    State dict keys: ``guidance_project.{weight,bias}`` (K, C, 1, 1)/(K) and
    ``filter_project.{weight,bias}`` (K·S, C, 1, 1)/(K·S).
    """

    def __init__(self, in_channels: int, num_classes: int, layout: str = "clean",
                 num_layers: int = 1, with_bias: bool = True, dropout: float = 0.1):
        super().__init__()
        _check_layout(layout)
        if num_layers < 1:
            raise ValueError(f"ConditionalClassifier: num_layers must be >= 1, got {num_layers}")
        self.in_channels = C = int(in_channels)
        self.num_classes = K = int(num_classes)
        self.layout = layout
        self.num_layers = L = int(num_layers)
        self.with_bias = bool(with_bias)
        self.params_per_class = C + K * (L - 1) + (L if with_bias else 0)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.guidance_project = nn.Conv2d(C, K, 1)
        self.filter_project = nn.Conv2d(K * C, K * self.params_per_class, 1, groups=K)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's init: its head's ``init_weights`` is a no-op, so both projections keep
        the init that mmcv's ``ConvModule`` constructor gives its conv, ``kaiming_init``: normal
        with ``mode="fan_out", nonlinearity="relu"`` (std ``sqrt(2 / out_channels)``, torch's
        fan-out of a grouped conv counts all its output channels) and a **zero bias**. PyTorch's
        default (uniform ``±1/sqrt(C)`` weights *and biases*) would start ``filter_project`` with
        a random static classifier in its bias and its guidance weights 4.5x smaller (K=19, C=64: std 0.072 vs 0.324)."""
        for conv in (self.guidance_project, self.filter_project):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def class_centres(self, features: torch.Tensor, guidance_logits: torch.Tensor) -> torch.Tensor:
        """N×C×H×W features, N×K×H×W guidance logits -> N×K×C centres ``softmax(G)·Fᵀ/(H·W)``."""
        n, c, h, w = features.shape
        probs = guidance_logits.softmax(dim=1).flatten(2)             # N×K×HW
        return torch.einsum("nkp,ncp->nkc", probs, features.flatten(2)) * (1.0 / (h * w))

    def dynamic_params(self, centres: torch.Tensor
                       ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """N×K×C centres -> (weights, biases): weights[0] N×K×C, weights[l>0] N×K×K, biases[l] N×K
        (empty list without bias), parsed in ``self.layout``."""
        n = centres.shape[0]
        C, K, L = self.in_channels, self.num_classes, self.num_layers
        generated = self.filter_project(centres.reshape(n, K * C, 1, 1)).reshape(n, -1)
        w_len = [C] + [K] * (L - 1)
        weights, biases = [], []
        if self.layout == "original":
            pos = 0
            for l in range(L):
                weights.append(generated[:, pos:pos + K * w_len[l]].reshape(n, K, w_len[l]))
                pos += K * w_len[l]
            if self.with_bias:
                for l in range(L):
                    biases.append(generated[:, pos:pos + K])
                    pos += K
        else:
            per_class = generated.reshape(n, K, self.params_per_class)
            pos = 0
            for l in range(L):
                weights.append(per_class[:, :, pos:pos + w_len[l]])
                pos += w_len[l]
            if self.with_bias:
                for l in range(L):
                    biases.append(per_class[:, :, pos + l])
        return weights, biases

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"ConditionalClassifier: expected N×{self.in_channels}×H×W features, "
                             f"got {tuple(features.shape)}")
        features = self.dropout(features)
        guidance_logits = self.guidance_project(features)
        centres = self.class_centres(features, guidance_logits)
        weights, biases = self.dynamic_params(centres)
        x = features
        for l, weight in enumerate(weights):
            if l > 0:
                x = F.relu(x)
            x = torch.einsum("nkc,nchw->nkhw", weight, x)
            if biases:
                x = x + biases[l][:, :, None, None]
        return x, guidance_logits

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}, num_layers={self.num_layers}, with_bias={self.with_bias}"


def convert_kernel_layout(state_dict: Dict[str, torch.Tensor], src: str, dst: str,
                          num_classes: int, num_layers: int = 1, with_bias: bool = True,
                          prefix: str = "") -> Dict[str, torch.Tensor]:
    """Returns a copy of ``state_dict`` whose ``{prefix}filter_project.{weight,bias}`` rows are
    reordered from layout ``src`` to ``dst`` (each row keeps its role; see the module docstring
    for when the converted model is exactly equivalent). Other keys are copied unchanged.
    ``in_channels`` is read from the weight's shape (K·S, C, 1, 1)."""
    _check_layout(src)
    _check_layout(dst)
    out = dict(state_dict)
    if src == dst:
        return out
    key_w, key_b = prefix + "filter_project.weight", prefix + "filter_project.bias"
    if key_w not in state_dict:
        raise KeyError(f"convert_kernel_layout: {key_w!r} not in the state dict (wrong prefix? "
                       f"keys start with {sorted(state_dict)[:3]})")
    weight = state_dict[key_w]
    C = weight.shape[1]
    perm = layout_permutation(C, num_classes, num_layers, with_bias)
    if weight.shape[0] != perm.numel():
        raise ValueError(f"convert_kernel_layout: {key_w} has {weight.shape[0]} rows, expected "
                         f"{perm.numel()} for C={C}, K={num_classes}, L={num_layers}, "
                         f"with_bias={with_bias}")
    if src == "original":            # original -> clean
        index = perm
    else:                            # clean -> original: inverse permutation
        index = torch.empty_like(perm)
        index[perm] = torch.arange(perm.numel())
    out[key_w] = weight[index].clone()
    if key_b in state_dict:
        out[key_b] = state_dict[key_b][index].clone()
    return out
