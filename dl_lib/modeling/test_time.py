"""Test-time inference options around any segmentor: multi-scale + flip (``TEST.AUG``) and
sliding windows (``TEST.MODE "slide"``), as in mmsegmentation's ``aug_test`` / ``slide_inference``.

The wrapped model only needs ``predict_logits(x)`` (normalised N×3×h×w -> N×K×h×w logits, or a
list of them for several exits; docs/CONTRACTS.md). Per image and per view (scale × flip):

1. resize the input image to the scale's size (shorter side ``MIN_SIZE``, longer side at most
   ``MAX_SIZE``, from the original ``height × width``), normalise, flip if the view is flipped;
2. logits: ``predict_logits`` on the whole image, or slide windows of ``CROP_SIZE`` at
   ``STRIDE`` over it and average the window **logits** where they overlap (a count map);
3. resize the logits to ``height × width`` (bilinear), undo the flip, take the **softmax**;
4. average the probabilities over the views.

Averaging softmax probabilities (not logits) over views is mmsegmentation's choice (its
``inference`` returns softmax and ``aug_test`` averages them); inside one view the overlapping
windows are averaged as logits, also as mmsegmentation does. The returned ``sem_seg`` is the log
of the averaged probabilities, K×height×width, so it is still a logit map (its softmax is the
average and its argmax the prediction). Multi-exit models get each exit averaged on its own:
``sem_seg`` is the last exit and ``sem_seg_exits`` all of them.

Per-image ``"flops"`` of the wrapped model are not reported (``predict_logits`` returns logits
only); measure cost without test-time options.
"""
import logging
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dl_lib.data.transforms import _shortest_edge_size

__all__ = ["TestTimeSegmentor", "slide_logits", "window_starts", "build_test_time_model"]

logger = logging.getLogger(__name__)

MODES = ("whole", "slide")


def window_starts(size: int, crop: int, stride: int) -> List[int]:
    """Start offsets of sliding windows along one side of ``size`` pixels.

    Windows start every ``stride`` pixels; the last one is shifted inside so that it ends at the
    border. ``size <= crop`` gives one window at 0 (the caller pads the image to ``crop``).
    """
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - crop), 0) for i in range(n)]


def slide_logits(predict, x: torch.Tensor, crop_size: Sequence[int], stride: Sequence[int]):
    """Logits of ``x`` (normalised N×3×H×W) from overlapping ``crop_size`` windows.

    ``predict``: callable on an N×3×ch×cw window returning N×K×ch×cw logits (or a list of them,
    one per exit). An image smaller than the crop is padded bottom/right with 0 (the mean pixel,
    as the model pads) so every window has the crop size; overlapping window logits are summed
    and divided by the number of windows covering each pixel. Returns N×K×H×W (or a list).
    """
    (ch, cw), (sh, sw) = crop_size, stride
    height, width = x.shape[-2:]
    x = F.pad(x, (0, max(cw - width, 0), 0, max(ch - height, 0)))
    hp, wp = x.shape[-2:]
    sums, count, is_list = None, x.new_zeros(1, 1, hp, wp), False
    for y0 in window_starts(hp, ch, sh):
        for x0 in window_starts(wp, cw, sw):
            out = predict(x[..., y0: y0 + ch, x0: x0 + cw])
            is_list = isinstance(out, (list, tuple))
            outs = list(out) if is_list else [out]
            if sums is None:
                sums = [t.new_zeros(t.shape[:2] + (hp, wp)) for t in outs]
            for acc, t in zip(sums, outs):
                acc[..., y0: y0 + ch, x0: x0 + cw] += t
            count[..., y0: y0 + ch, x0: x0 + cw] += 1
    result = [(acc / count)[..., :height, :width] for acc in sums]
    return result if is_list else result[0]


def _pair(value, key: str) -> Tuple[int, int]:
    v = [int(t) for t in value]
    if len(v) != 2 or min(v) <= 0:
        raise ValueError(f"{key} must be [height, width] of positive integers, got {list(value)}")
    return v[0], v[1]


class TestTimeSegmentor(nn.Module):
    """Wraps a segmentor for multi-scale + flip and/or sliding-window inference (module doc).

    Args:
        model: has ``predict_logits(x)`` on normalised N×3×h×w input.
        pixel_mean, pixel_std: RGB statistics in 0–255 units to normalise with (default: the
            model's ``pixel_mean``/``pixel_std`` buffers).
        min_sizes: shorter-side lengths of the scales (``TEST.AUG.MIN_SIZES``), computed from the
            original ``height × width``; empty = one view at the size the input image has (the
            test mapper's ``INPUT.MIN_SIZE_TEST``).
        max_size: cap on the longer side of a scale (0: none).
        flip: also run each scale horizontally flipped.
        mode: ``"whole"`` (one ``predict_logits`` per view) or ``"slide"``.
        crop_size, stride: ``[h, w]`` of the windows and of their step in slide mode.

    Eval only: ``forward(batched_inputs)`` -> list of ``{"sem_seg": K×height×width}`` (plus
    ``"sem_seg_exits"``); each image is processed on its own, so a batch may mix sizes.
    """

    # pytest must not collect this class from modules that import it
    __test__ = False

    def __init__(self, model: nn.Module, *, pixel_mean: Optional[Sequence[float]] = None,
                 pixel_std: Optional[Sequence[float]] = None, min_sizes: Sequence[int] = (),
                 max_size: int = 0, flip: bool = False, mode: str = "whole",
                 crop_size: Sequence[int] = (), stride: Sequence[int] = ()):
        super().__init__()
        if not callable(getattr(model, "predict_logits", None)):
            raise TypeError(f"TestTimeSegmentor: {type(model).__name__} has no predict_logits(x); "
                            "test-time options need the segmentor contract of docs/CONTRACTS.md")
        if mode not in MODES:
            raise ValueError(f"TEST.MODE must be one of {MODES}, got {mode!r}")
        self.model = model
        # the statistics live where the model does (the wrapper may be built after .to(device))
        tensors = list(model.parameters()) + list(model.buffers())
        device = tensors[0].device if tensors else torch.device("cpu")
        mean = pixel_mean if pixel_mean is not None else getattr(model, "pixel_mean", None)
        std = pixel_std if pixel_std is not None else getattr(model, "pixel_std", None)
        if mean is None or std is None:
            raise ValueError(f"TestTimeSegmentor: {type(model).__name__} has no pixel_mean/"
                             "pixel_std buffers; pass pixel_mean= and pixel_std= (MODEL.PIXEL_*)")
        for name, value in (("pixel_mean", mean), ("pixel_std", std)):
            t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1, 1, 1)
            self.register_buffer(name, t.clone(), False)
        self.min_sizes = [int(s) for s in min_sizes]
        if any(s <= 0 for s in self.min_sizes):
            raise ValueError(f"TEST.AUG.MIN_SIZES must be positive, got {self.min_sizes}")
        self.max_size = int(max_size)
        self.flip = bool(flip)
        self.mode = mode
        if mode == "slide":
            self.crop_size = _pair(crop_size, "TEST.SLIDE.CROP_SIZE")
            self.stride = _pair(stride, "TEST.SLIDE.STRIDE")
            if any(s > c for s, c in zip(self.stride, self.crop_size)):
                raise ValueError(
                    f"TEST.SLIDE.STRIDE {list(self.stride)} must not exceed TEST.SLIDE.CROP_SIZE "
                    f"{list(self.crop_size)} in either dimension, or pixels between windows get "
                    "no prediction")

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> dict:
        """Constructor arguments from ``cfg.TEST``; the statistics are the model's own
        ``pixel_mean``/``pixel_std`` buffers, or ``MODEL.PIXEL_MEAN/STD`` for a model without."""
        aug = cfg.TEST.AUG
        own = hasattr(model, "pixel_mean") and hasattr(model, "pixel_std")
        return dict(model=model, pixel_mean=None if own else cfg.MODEL.PIXEL_MEAN,
                    pixel_std=None if own else cfg.MODEL.PIXEL_STD,
                    min_sizes=aug.MIN_SIZES if aug.ENABLED else (),
                    max_size=aug.MAX_SIZE, flip=aug.ENABLED and aug.FLIP, mode=cfg.TEST.MODE,
                    crop_size=cfg.TEST.SLIDE.CROP_SIZE, stride=cfg.TEST.SLIDE.STRIDE)

    def _logits(self, x: torch.Tensor):
        if self.mode == "slide":
            return slide_logits(self.model.predict_logits, x, self.crop_size, self.stride)
        return self.model.predict_logits(x)

    def _view_sizes(self, image_size: Tuple[int, int], out_size: Tuple[int, int]):
        if not self.min_sizes:
            return [image_size]
        return [_shortest_edge_size(out_size[0], out_size[1], s, self.max_size)
                for s in self.min_sizes]

    def predict_probabilities(self, image: torch.Tensor, out_size: Tuple[int, int]):
        """Averaged softmax over the views of one ``image`` (3×h×w, RGB 0–255) at ``out_size``
        = (H, W). Returns (a list of K×H×W probabilities, one per exit; whether the model
        returned several exits)."""
        image = image.to(self.pixel_mean.device).float()
        sums, num_views = None, 0
        for size in self._view_sizes(tuple(image.shape[-2:]), out_size):
            x = image[None]
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = (x - self.pixel_mean) / self.pixel_std
            for flipped in ([False, True] if self.flip else [False]):
                logits = self._logits(x.flip(-1) if flipped else x)
                exits = list(logits) if isinstance(logits, (list, tuple)) else [logits]
                probs = []
                for t in exits:
                    t = F.interpolate(t, size=out_size, mode="bilinear", align_corners=False)
                    probs.append(F.softmax(t.flip(-1) if flipped else t, dim=1)[0])
                sums = probs if sums is None else [a + p for a, p in zip(sums, probs)]
                num_views += 1
        return [s / num_views for s in sums], isinstance(logits, (list, tuple))

    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        if self.training:
            raise RuntimeError("TestTimeSegmentor is for inference; train the wrapped model")
        results = []
        for d in batched_inputs:
            image = d["image"]
            out_size = (int(d.get("height", image.shape[-2])), int(d.get("width", image.shape[-1])))
            probs, several = self.predict_probabilities(image, out_size)
            # log of the averaged probabilities: still logits (softmax gives the average back)
            logs = [p.clamp_min(torch.finfo(p.dtype).tiny).log() for p in probs]
            out = {"sem_seg": logs[-1]}
            if several:
                out["sem_seg_exits"] = logs
            results.append(out)
        return results


def build_test_time_model(cfg, model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`TestTimeSegmentor` when ``TEST.AUG.ENABLED`` or
    ``TEST.MODE`` is ``"slide"``; ``model`` itself otherwise."""
    if not cfg.TEST.AUG.ENABLED and cfg.TEST.MODE == "whole":
        return model
    wrapped = TestTimeSegmentor(**TestTimeSegmentor.from_config(cfg, model))
    logger.info(f"Test-time inference: mode {wrapped.mode}"
                + (f" (crop {list(wrapped.crop_size)}, stride {list(wrapped.stride)})"
                   if wrapped.mode == "slide" else "")
                + (f", scales {wrapped.min_sizes} (max {wrapped.max_size})" if wrapped.min_sizes
                   else ", the test mapper's scale")
                + (", with horizontal flip" if wrapped.flip else ""))
    return wrapped
