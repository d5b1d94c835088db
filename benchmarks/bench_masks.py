"""Masks for the masked-convolution benchmark, on the OUTPUT grid of a layer.

Three kinds, each hitting a requested pixel density d exactly (up to rounding):
  * ``random``:   Bernoulli-like per pixel (exactly round(d*H*W) pixels, uniformly chosen);
  * ``block8``:   random 8x8 blocks (whole tiles on/off, the best case for tile kernels);
  * ``boundary``: bands along the edges of a random polygonal label map (Voronoi cells, i.e.
    convex polygons), the shape of real confidence masks: uncertain pixels sit on object
    boundaries. The number of cells is chosen so the bands are about 2-8 px wide at the
    requested density; pixels are taken by increasing distance to the nearest edge.

All generators return a bool tensor N x 1 x H x W and take a ``torch.Generator`` so a run is
reproducible.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_KINDS = ("random", "block8", "boundary")


def _exact_count(density: float, total: int) -> int:
    return max(0, min(total, int(round(density * total))))


def random_mask(n: int, h: int, w: int, density: float, gen: torch.Generator) -> torch.Tensor:
    """Exactly round(density*h*w) active pixels per sample, uniformly at random."""
    out = torch.zeros(n, h * w, dtype=torch.bool)
    k = _exact_count(density, h * w)
    for i in range(n):
        out[i, torch.randperm(h * w, generator=gen)[:k]] = True
    return out.view(n, 1, h, w)


def block_mask(
    n: int, h: int, w: int, density: float, gen: torch.Generator, block: int = 8
) -> torch.Tensor:
    """Random block x block tiles; the pixel density is matched by the fraction of tiles whose
    in-image area is chosen, so edge tiles (cropped) count for their real size."""
    bh, bw = math.ceil(h / block), math.ceil(w / block)
    out = torch.zeros(n, 1, h, w, dtype=torch.bool)
    target = _exact_count(density, h * w)
    for i in range(n):
        order = torch.randperm(bh * bw, generator=gen).tolist()
        covered = 0
        for t in order:
            if covered >= target:
                break
            y, x = divmod(t, bw)
            ys, xs = y * block, x * block
            ye, xe = min(ys + block, h), min(xs + block, w)
            out[i, 0, ys:ye, xs:xe] = True
            covered += (ye - ys) * (xe - xs)
    return out


def _voronoi_labels(h: int, w: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """Label map of ``cells`` Voronoi regions (convex polygons) of random seeds."""
    seeds = torch.rand(cells, 2, generator=gen) * torch.tensor([h, w], dtype=torch.float32)
    ys = torch.arange(h, dtype=torch.float32).view(h, 1, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w, 1)
    labels = torch.empty(h, w, dtype=torch.long)
    # Row chunks keep the h x w x cells distance tensor small.
    rows = max(1, (1 << 22) // max(1, w * cells))
    for r in range(0, h, rows):
        d = (ys[r : r + rows] - seeds[:, 0]) ** 2 + (xs - seeds[:, 1]) ** 2
        labels[r : r + rows] = d.argmin(dim=-1)
    return labels


def _edge_distance(labels: torch.Tensor, max_dist: int, enough: int) -> torch.Tensor:
    """Chessboard distance from every pixel to the nearest label edge, capped at max_dist; stops
    growing once at least ``enough`` pixels have a distance (the rest keep max_dist)."""
    lab = labels.float()[None, None]
    edge = torch.zeros_like(lab, dtype=torch.bool)
    edge[..., 1:, :] |= lab[..., 1:, :] != lab[..., :-1, :]
    edge[..., :-1, :] |= lab[..., 1:, :] != lab[..., :-1, :]
    edge[..., :, 1:] |= lab[..., :, 1:] != lab[..., :, :-1]
    edge[..., :, :-1] |= lab[..., :, 1:] != lab[..., :, :-1]
    dist = torch.full(lab.shape, float(max_dist))
    cur = edge.float()
    dist[edge] = 0.0
    for step in range(1, max_dist):
        if int((dist < max_dist).sum()) >= enough:
            break
        cur = F.max_pool2d(cur, 3, stride=1, padding=1)
        newly = (cur > 0) & (dist == max_dist)
        dist[newly] = float(step)
    return dist[0, 0]


def boundary_mask(
    n: int, h: int, w: int, density: float, gen: torch.Generator, band: float = 4.0
) -> torch.Tensor:
    """Bands along the edges of a random polygonal label map, ``density`` of the pixels.

    The cell count is set so that a band of about ``band`` px total width covers the requested
    density (boundary length L ~ 1.86 * sqrt(cells * h * w) for Voronoi cells); pixels are then
    taken by distance to the nearest edge (ties broken at random), so widths vary around ``band``.
    """
    total = h * w
    k = _exact_count(density, total)
    out = torch.zeros(n, total, dtype=torch.bool)
    if k == total:
        return out.fill_(True).view(n, 1, h, w)
    # Interior edge length of m Voronoi cells in an h x w box: half the summed perimeters
    # (~3.72 sqrt(area) each, hexagon-like) minus the image border, ~1.86 sqrt(m h w) - (h + w).
    length = max(1.0, density * total / band)
    cells = int(round(((length + h + w) / 1.86) ** 2 / total))
    cells = max(2, min(cells, max(2, total // 64)))
    for i in range(n):
        labels = _voronoi_labels(h, w, cells, gen)
        dist = _edge_distance(labels, max_dist=max(h, w), enough=k)
        key = dist.flatten() + 0.5 * torch.rand(total, generator=gen)
        out[i, key.argsort()[:k]] = True
    return out.view(n, 1, h, w)


def make_mask(
    kind: str, n: int, h: int, w: int, density: float, gen: torch.Generator
) -> torch.Tensor:
    """Dispatches on ``kind`` (one of MASK_KINDS)."""
    if kind == "random":
        return random_mask(n, h, w, density, gen)
    if kind == "block8":
        return block_mask(n, h, w, density, gen)
    if kind == "boundary":
        return boundary_mask(n, h, w, density, gen)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")


def block_density(mask: torch.Tensor, block: int = 8) -> float:
    """Fraction of block x block tiles holding at least one active pixel (what a tile kernel
    actually computes)."""
    tiles = F.max_pool2d(mask.float(), block, stride=block, ceil_mode=True)
    return float(tiles.mean())
