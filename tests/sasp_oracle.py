"""Slow, literal SasP written step by step from docs/reference.md#sasp: one sample at a time, one point at a time,
and the soft-argmax over the whole full-resolution map for every point, as the reference does.

In the "reference" geometry the crop is undone with the reference's arithmetic, literally: ``new = int(side *
(size / min(H, W)))``, ``pad = (new - size) // 2`` on both sides, ``F.pad`` (a negative pad crops). In the "clip"
geometry it is the CLIP processor's crop (shortest side -> size exactly, longest side ``int(size * long / short)``,
crop offset ``(resized - size) // 2``; the remainder pads the bottom/right).

Apart from the geometry option it differs from the reference in what ``read.model.sasp`` documents, and nothing else:

* a map whose span is at most ``FLAT_TOLERANCE`` times its largest magnitude is flat; it normalises to 0, and its
  points are all neutral, at the image centre (the reference divides by zero);
* a map with fewer visible coarse cells than ``min(num_points, cells^2)`` is completed with neutral points at the
  image centre (the reference returns fewer points; tiny grids only).

Sorts are stable, so ties come out in raster order. This file is the test oracle for the batched implementation and
the baseline of ``scripts/bench_sasp.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from read.model.sasp import FLAT_TOLERANCE


def clip_resize_and_crop(height: int, width: int, size: int) -> tuple[int, int, int, int, int, int]:
    """The CLIP processor's resized size and the zero-padding that undoes its centre crop.

    Returns:
        (resized_h, resized_w, pad_top, pad_bottom, pad_left, pad_right).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    resized_h, resized_w = (new_long, size) if width <= height else (size, new_long)
    top = int((resized_h - size) / 2.0)
    left = int((resized_w - size) / 2.0)
    return resized_h, resized_w, top, resized_h - size - top, left, resized_w - size - left


def reference_pads(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """The reference's padding of a ``size`` map, written out as it computes it: (top, bottom, left, right)."""
    scale = size / min(height, width)
    new_h, new_w = int(height * scale), int(width * scale)
    pad_h = (new_h - size) // 2
    pad_w = (new_w - size) // 2
    return pad_h, pad_h, pad_w, pad_w


def pads(height: int, width: int, size: int, geometry: str) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that undoes the crop; negative values crop."""
    if geometry == "reference":
        return reference_pads(height, width, size)
    _, _, top, bottom, left, right = clip_resize_and_crop(height, width, size)
    return top, bottom, left, right


def min_max(x: Tensor) -> tuple[Tensor, bool]:
    """Global min-max normalisation; a flat map becomes all zeros."""
    lo, hi = x.min(), x.max()
    flat = bool(hi - lo <= FLAT_TOLERANCE * torch.maximum(lo.abs(), hi.abs()))
    if flat:
        return torch.zeros_like(x), True
    return (x - lo) / (hi - lo), False


def map_a(sim: Tensor, image_size: tuple[int, int], clip_size: int, geometry: str = "reference") -> Tensor:
    """Map A: the full-resolution (H, W) map."""
    h, w = image_size
    side = math.isqrt(sim.shape[0])
    norm, _ = min_max(sim)
    grid = norm.reshape(1, 1, side, side)
    grid = F.interpolate(grid, (clip_size, clip_size), mode="bilinear", align_corners=False)
    top, bottom, left, right = pads(h, w, clip_size, geometry)
    grid = F.pad(grid, (left, right, top, bottom), value=0.0)
    return F.interpolate(grid, (h, w), mode="bilinear", align_corners=False)[0, 0]


def map_b(
    sim: Tensor, image_size: tuple[int, int], down_sample: int, geometry: str = "reference"
) -> tuple[Tensor, bool]:
    """Map B: the coarse map padded with -1 to the image's aspect, and whether it is flat."""
    h, w = image_size
    side = math.isqrt(sim.shape[0])
    cells = side // down_sample
    grid = F.interpolate(sim.reshape(1, 1, side, side), (cells, cells), mode="bilinear", align_corners=False)[0, 0]
    grid, flat = min_max(grid)
    top, bottom, left, right = pads(h, w, cells, geometry)
    return F.pad(grid, (left, right, top, bottom), mode="constant", value=-1.0), flat


def dtoc(a: Tensor, points: Tensor) -> Tensor:
    """DtoC: soft-argmax of exp(-d^2) * softmax(A) over every pixel, one point at a time."""
    h, w = a.shape
    probs = F.softmax(a.reshape(-1), dim=0)
    gx, gy = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    gx = gx.reshape(-1).to(a)
    gy = gy.reshape(-1).to(a)
    out = []
    for x, y in points.tolist():
        weight = torch.exp(-((gx - x) ** 2 + (gy - y) ** 2)) * probs
        weight = weight / weight.sum()
        out.append(torch.stack([(gx * weight).sum(), (gy * weight).sum()]))
    return torch.stack(out)


def oracle_points(
    sim: Tensor,
    image_size: tuple[int, int],
    num_points: int = 30,
    t_pos: float = 0.8,
    t_neg: float = 0.2,
    down_sample: int = 2,
    clip_size: int = 336,
    geometry: str = "reference",
) -> tuple[Tensor, Tensor, Tensor]:
    """SasP for one map.

    Arguments:
        sim: (N,) similarities (float32, or float64 for gradient checks).
        image_size: (H, W).
        geometry: "reference" or "clip".

    Returns:
        refined (K, 2) (x, y), labels (K,) long, integer points (K, 2) long.
    """
    h, w = image_size
    a = map_a(sim, image_size, clip_size, geometry)
    b, flat = map_b(sim, image_size, down_sample, geometry)
    hb, wb = b.shape
    scale_h = float(h) / hb if hb > 0 else 1.0
    scale_w = float(w) / wb if wb > 0 else 1.0
    b = b.reshape(-1)
    k = min(num_points, (math.isqrt(sim.shape[0]) // down_sample) ** 2)

    if flat:
        labels = torch.full((k,), -1, dtype=torch.long)
        points = torch.tensor([[w // 2, h // 2]] * k, dtype=torch.long)
        return dtoc(a, points), labels, points

    pos = (b >= t_pos).nonzero().flatten()
    pos = pos[torch.argsort(b[pos], descending=True, stable=True)]
    neg = ((b >= 0) & (b <= t_neg)).nonzero().flatten()
    neg = neg[torch.argsort(b[neg], stable=True)]
    neutral = ((b > t_neg) & (b < t_pos)).nonzero().flatten()
    selected = torch.cat([pos, neg, neutral])[:num_points]

    labels = torch.full((selected.numel(),), -1, dtype=torch.long)
    points = []
    bound_w = torch.tensor(w - 1, dtype=torch.float32)
    bound_h = torch.tensor(h - 1, dtype=torch.float32)
    for i, idx in enumerate(selected):
        x = min((idx % wb + 0.5) * scale_w, bound_w)
        y = min((idx // wb + 0.5) * scale_h, bound_h)
        points.append([int(x.item()), int(y.item())])
        if idx in pos:
            labels[i] = 1
        elif idx in neg:
            labels[i] = 0
    missing = k - len(points)  # fewer visible cells than points (tiny grids cropped by the reference geometry)
    points = torch.tensor(points + [[w // 2, h // 2]] * missing, dtype=torch.long).view(k, 2)
    labels = torch.cat([labels, torch.full((missing,), -1, dtype=torch.long)])
    return dtoc(a, points), labels, points


def oracle_select_points(
    sim: Tensor,
    image_sizes: list[tuple[int, int]],
    num_points: int = 30,
    t_pos: float = 0.8,
    t_neg: float = 0.2,
    down_sample: int = 2,
    clip_size: int = 336,
    geometry: str = "reference",
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-sample loop over a (B, N) batch; returns stacked (B, K, 2) coords, (B, K) labels, (B, K, 2) pixels."""
    outs = [
        oracle_points(s, hw, num_points, t_pos, t_neg, down_sample, clip_size, geometry)
        for s, hw in zip(sim, image_sizes)
    ]
    return tuple(torch.stack(parts) for parts in zip(*outs))
