"""Colourising label maps and composing side-by-side panels (numpy + PIL only)."""
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "colorize", "overlay", "legend_strip", "title_strip", "hstack", "vstack"]

Color = Tuple[int, int, int]


def palette(num_classes: int, colors: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """``num_classes x 3`` uint8 colours: ``colors`` (e.g. metadata ``stuff_colors``) when given
    and long enough, else a deterministic distinct palette (the PASCAL bit-interleaving scheme)."""
    if colors is not None and len(colors) >= num_classes:
        return np.asarray([tuple(c)[:3] for c in colors[:num_classes]], dtype=np.uint8)
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i + 1, 0, 0, 0  # i+1: class 0 must not be black (black = ignore)
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[i] = (r, g, b)
    return out


def colorize(label: np.ndarray, colors: np.ndarray, ignore_label: int = 255,
             ignore_color: Color = (0, 0, 0)) -> np.ndarray:
    """H x W integer labels -> H x W x 3 uint8 RGB; ``ignore_label`` and out-of-range values get
    ``ignore_color`` (black)."""
    label = np.asarray(label).astype(np.int64)
    k = len(colors)
    out = np.empty(label.shape + (3,), dtype=np.uint8)
    out[...] = ignore_color
    valid = (label >= 0) & (label < k) & (label != ignore_label)
    out[valid] = colors[label[valid]]
    return out


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label map over an RGB image (both H x W x 3 uint8)."""
    return (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).astype(np.uint8)


def _font():
    return ImageFont.load_default()


def title_strip(titles: Sequence[str], panel_width: int, height: int = 16) -> np.ndarray:
    """A black strip ``height x (len(titles) * panel_width) x 3`` with one title per panel."""
    im = Image.new("RGB", (panel_width * len(titles), height), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    for i, t in enumerate(titles):
        draw.text((i * panel_width + 3, 2), t, fill=(255, 255, 255), font=_font())
    return np.asarray(im)


def legend_strip(class_ids: Sequence[int], names: Sequence[str], colors: np.ndarray, width: int,
                 row_height: int = 14) -> np.ndarray:
    """Colour swatch + name for each of ``class_ids``, wrapped into rows of ``width`` pixels."""
    entries = [(colors[c], str(names[c]) if c < len(names) else str(c)) for c in class_ids]
    item_w = 110
    per_row = max(1, width // item_w)
    rows = max(1, (len(entries) + per_row - 1) // per_row)
    im = Image.new("RGB", (width, rows * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, (col, name) in enumerate(entries):
        x, y = (i % per_row) * item_w + 2, (i // per_row) * row_height + 2
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(v) for v in col), outline=(0, 0, 0))
        draw.text((x + 14, y), name[:16], fill=(0, 0, 0), font=_font())
    return np.asarray(im)


def hstack(images: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(images, axis=1)


def vstack(images: List[np.ndarray]) -> np.ndarray:
    """Stack H_i x W x 3 images vertically (widths must match)."""
    return np.concatenate(images, axis=0)
