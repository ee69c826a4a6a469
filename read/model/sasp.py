"""Similarity as Points (SasP): READ's point prompts for SAM from the ``[SEG]``-to-image similarity map
(docs/reference.md#sasp).

The similarity between the hidden state that predicts ``[SEG]`` and the N image-token hidden states is a
``side x side`` map (``side = sqrt(N)``, 24 for CLIP ViT-L/14-336). Two maps are derived from it:

* map B, coarse (``side // down_sample`` cells a side), chooses the points: cells with B >= t_pos are positive
  (label 1, most similar first), cells with 0 <= B <= t_neg negative (label 0, least similar first), the rest
  neutral (label -1, raster order); the first ``num_points`` of that list are kept, at their cell centres in
  original-image pixels;
* map A, full resolution, refines each integer point by a soft-argmax ("DtoC") with weights
  ``w_k ∝ exp(A_k - |g_k - p|^2)`` over the pixels g_k, which makes the points differentiable with respect to the
  similarities (thresholds, selection and labels are not).

Both maps undo CLIP's resize-and-centre-crop, so B is padded with -1 over the regions CLIP never saw, and A is 0
there. Everything is batched: no Python loop over points or samples, and map A is evaluated only on the
``(2r+1)^2`` window of pixels around each point, as a product of small interpolation matrices.

How the crop is undone is the ``geometry`` setting (:func:`pad_geometry`):

* ``"reference"`` (the default) is READ's own arithmetic, which the released checkpoints were trained with: the map
  of side ``size`` is padded by ``(int(side * (size / min(H, W))) - size) // 2`` on *both* sides of each axis. An
  odd crop excess therefore loses one row or column, and where the truncation makes the excess -1 (short sides 333
  at 336; 376 and 383 at 12 or 24) the padding is -1 and crops one row/column on each side;
* ``"clip"`` is the CLIP processor's exact crop (:func:`read.data.transforms.clip_crop_geometry`): the excess is
  split with the odd row or column at the bottom/right and is never negative. On the 12x12 map of READ-7B the two
  place the cells differently on every image whose crop excess is odd: with the same labels, the points move by
  32 px at 640x427 (or 427x640) and by 71 px at 1080x1920; where the reference's padding is -1 (e.g. 376x500) even
  the chosen cells differ.

Deliberate differences from the reference, in both geometries:

* min-max normalisation cannot divide by zero: a map whose span is at most ``FLAT_TOLERANCE`` times its largest
  magnitude counts as flat; it normalises to 0 and gives no positive and no negative point (the reference
  produces NaN and then fails);
* the similarity is a plain dot product computed in float32, not bfloat16;
* ties are ordered by a stable sort, i.e. by raster index;
* every map gets the same number of points, ``min(num_points, cells^2)``: where the reference geometry crops so
  much of a tiny grid that fewer cells remain visible (grids of fewer than 8 cells a side only), the missing points
  are neutral (inert in SAM) and sit at the image centre, where the reference returns fewer points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from read.config import GEOMETRIES, SaspConfig
from read.data.transforms import clip_crop_geometry

# A map is flat when (max - min) <= FLAT_TOLERANCE * max(|min|, |max|): about 80 float32 ulps of its magnitude,
# above the rounding noise of a constant map pushed through a matmul or an interpolation.
FLAT_TOLERANCE = 1e-5

# Labels in SAM's convention (segment_anything PromptEncoder._embed_points).
POSITIVE, NEGATIVE, NEUTRAL = 1, 0, -1

# How the CLIP centre crop is undone (see the module docstring and pad_geometry).


@dataclass
class PointPrompts:
    """SasP output for B ``[SEG]`` tokens.

    Attributes:
        coords: (B, K, 2) float (x, y) in original-image pixels (x = column, y = row), after DtoC.
        labels: (B, K) long in {1 (positive), 0 (negative), -1 (neutral, inert in SAM)}.
        sim: (B, N) float32 raw similarity maps (for visualisation).
    """

    coords: Tensor
    labels: Tensor
    sim: Tensor


def similarity_map(image_hidden: Tensor, seg_hidden: Tensor) -> Tensor:
    """Dot products between each image-token state and the ``[SEG]`` state, in float32
    (docs/reference.md#similarity-in-float32).

    The reference's CLIP-Surgery form reduces to this plain, unnormalised dot product for one text feature.
    Autocast is switched off, so the result is float32 even under a bf16 autocast (float64 inputs stay float64).

    Arguments:
        image_hidden: (B, N, C) last-layer hidden states at the N image-token positions; N must be a square.
        seg_hidden: (B, C) last-layer hidden state that predicts each ``[SEG]``.

    Returns:
        (B, N) similarities.
    """
    if image_hidden.dim() != 3 or seg_hidden.dim() != 2:
        raise ValueError(
            f"similarity_map: expected image_hidden (B, N, C) and seg_hidden (B, C), "
            f"got {tuple(image_hidden.shape)} and {tuple(seg_hidden.shape)}"
        )
    b, n, c = image_hidden.shape
    if seg_hidden.shape != (b, c):
        raise ValueError(
            f"similarity_map: seg_hidden {tuple(seg_hidden.shape)} does not match "
            f"image_hidden {tuple(image_hidden.shape)}"
        )
    _grid_side(n)
    dtype = _compute_dtype(image_hidden.dtype)
    with torch.autocast(device_type=image_hidden.device.type, enabled=False):
        return _BatchedDot.apply(image_hidden.to(dtype), seg_hidden.to(dtype))  # (B, N)


class _BatchedDot(torch.autograd.Function):
    """sim[b, n] = <image[b, n], seg[b]>. Autograd's own backward of this matrix-vector product runs as GEMMs with
    an inner size of 1 (or over a transposed operand), 5-20x slower on the CPU than the elementwise product and
    the row-vector product used here."""

    @staticmethod
    def forward(ctx, image: Tensor, seg: Tensor) -> Tensor:
        ctx.save_for_backward(image, seg)
        return torch.bmm(seg.unsqueeze(1), image.transpose(1, 2)).squeeze(1)  # (B, 1, C) @ (B, C, N) -> (B, N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        image, seg = ctx.saved_tensors
        grad_image = grad.unsqueeze(-1) * seg.unsqueeze(1) if ctx.needs_input_grad[0] else None  # (B, N, C)
        grad_seg = torch.bmm(grad.unsqueeze(1), image).squeeze(1) if ctx.needs_input_grad[1] else None  # (B, C)
        return grad_image, grad_seg


def reference_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """READ's undoing of the crop at ``size``: ``new = int(side * (size / min(H, W)))`` per axis, then a padding of
    ``(new - size) // 2`` on both sides of that axis (negative: that many rows/columns are cut on each side).

    Arguments:
        height, width: original image size in pixels.
        size: side of the square map being padded (CLIP input side for map A, the coarse grid side for map B).

    Returns:
        (padded_height, padded_width, top, left): the padded map's size and the padding before the first row and
        column (the same padding follows the last ones); ``top``/``left`` are -1 where the map is cropped.
    """
    scale = size / min(height, width)
    pad_h = (int(height * scale) - size) // 2
    pad_w = (int(width * scale) - size) // 2
    return size + 2 * pad_h, size + 2 * pad_w, pad_h, pad_w


def pad_geometry(height: int, width: int, size: int, geometry: str = "reference") -> tuple[int, int, int, int]:
    """The padded map that undoes the crop, in either geometry.

    Returns:
        (padded_height, padded_width, top, left): the padded map has ``top`` rows before the ``size`` map rows and
        ``padded_height - size - top`` after them (likewise for columns); negative counts crop.
    """
    if geometry == "reference":
        return reference_geometry(height, width, size)
    if geometry == "clip":
        return clip_crop_geometry(height, width, size)
    raise ValueError(f"SasP: geometry must be one of {list(GEOMETRIES)}, got {geometry!r}")


def full_resolution_map(
    sim: Tensor, image_size: tuple[int, int], clip_size: int = 336, geometry: str = "reference"
) -> Tensor:
    """Map A over the whole image: min-max normalised similarity, resized to the CLIP crop, padded with
    0 where the crop cut the image, resized to the image. For visualisation; the point refinement evaluates the
    same map only around each point.

    Arguments:
        sim: (N,) similarities of one ``[SEG]``.
        image_size: (H, W) original image size.
        clip_size: CLIP input side (336 for ViT-L/14-336).
        geometry: "reference" or "clip" (see :func:`pad_geometry`).

    Returns:
        (H, W) float map, values in [0, 1] (all 0 for a flat map).
    """
    if sim.dim() != 1:
        raise ValueError(f"full_resolution_map: expected sim of shape (N,), got {tuple(sim.shape)}")
    side = _grid_side(sim.shape[0])
    height, width = _check_sizes([image_size], 1)[0]
    _check_clip_size(clip_size, geometry)
    if geometry not in GEOMETRIES:
        raise ValueError(f"SasP: geometry must be one of {list(GEOMETRIES)}, got {geometry!r}")
    norm, _ = _min_max(sim.to(_compute_dtype(sim.dtype))[None])
    grid = F.interpolate(norm.view(1, 1, side, side), (clip_size, clip_size), mode="bilinear", align_corners=False)
    new_h, new_w, top, left = pad_geometry(height, width, clip_size, geometry)
    grid = F.pad(grid, (left, new_w - clip_size - left, top, new_h - clip_size - top))
    return F.interpolate(grid, (height, width), mode="bilinear", align_corners=False)[0, 0]


def select_points(
    sim: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    cfg: SaspConfig | None = None,
    clip_size: int = 336,
) -> tuple[Tensor, Tensor]:
    """Point prompts from similarity maps (docs/reference.md#sasp), batched over B maps of mixed image sizes.

    Every sample gets the same number of points, K = min(num_points, (side // down_sample)^2): every visible coarse
    cell is exactly one of positive, negative or neutral. Cells that the reference geometry crops away are never
    chosen (they still count in the min-max normalisation, as in the reference); if fewer than K cells are visible
    (tiny grids only), the remaining points are neutral, at the image centre.

    * Order: positives by descending value, negatives by ascending value, neutrals in raster order; ties keep
      raster order (stable sort).
    * Integer points: cell (r, c) of the padded coarse map (h', w') gives
      ``x = int(min((c + 0.5) * W / w', W - 1))`` and y likewise, computed in float32 like the reference.
    * DtoC: ``p~ = sum_k w_k g_k / sum_k w_k`` with ``w_k = exp(A_k - |g_k - p|^2)`` over the pixels
      of the image within ``dtoc_radius`` of p on each axis. With radius >= 10 this is the full-image sum up to
      rounding, because float32 exp(-d^2) is exactly 0 beyond d^2 ~ 103.
    * A flat map (docs/reference.md#flat-similarity-maps) gives K neutral points at the image centre
      ``(W // 2, H // 2)`` (refined).

    Gradients flow from ``coords`` to ``sim`` through map A (bilinear resizes and min-max normalisation).

    Arguments:
        sim: (B, N) similarities, N a perfect square; float64 is kept, other dtypes are computed in float32.
        image_sizes: B pairs (H, W), the original image size of each map.
        cfg: the SasP settings (default ``SaspConfig()``, READ-7B's): ``num_points`` per map (60 for the READ-13B
            evaluation), the thresholds ``t_pos`` / ``t_neg`` on the min-max normalised coarse map, ``down_sample``
            (the coarse map has ``side // down_sample`` cells a side), ``dtoc_radius`` (half-size in pixels of the
            soft-argmax window), ``dtoc`` (false: the integer points as floats, no gradient to ``sim``; the paper's
            "discrete points" ablation) and ``geometry``, how the crop is undone: "reference" (READ's arithmetic) or
            "clip" (the CLIP processor's exact crop); see the module docstring.
        clip_size: CLIP input side, used to undo its centre crop (336 for ViT-L/14-336; tiny test models use
            their own, e.g. 32). The model passes ``cfg.model.vision.image_size``.

    Returns:
        coords: (B, K, 2) (x, y) in original-image pixels, float32 (float64 for float64 ``sim``).
        labels: (B, K) long in {1, 0, -1}.
    """
    cfg = cfg or SaspConfig()
    _check_clip_size(clip_size, cfg.geometry)
    num_points, down_sample, geometry = cfg.num_points, cfg.down_sample, cfg.geometry
    if sim.dim() != 2:
        raise ValueError(f"select_points: expected sim of shape (B, N), got {tuple(sim.shape)}")
    batch, n = sim.shape
    side = _grid_side(n)
    cells = side // down_sample
    if cells < 1:
        raise ValueError(f"select_points: down_sample={down_sample} leaves no cell of the {side}x{side} map")
    sizes = _check_sizes(image_sizes, batch)
    k = min(num_points, cells * cells)
    if batch == 0:
        empty = sim.new_zeros(0, k, 2, dtype=_compute_dtype(sim.dtype))
        return empty, torch.zeros(0, k, dtype=torch.long, device=sim.device)
    finite = torch.isfinite(sim).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"select_points: the similarity maps of sample(s) {bad} contain NaN or inf")

    device = sim.device
    with torch.autocast(device_type=device.type, enabled=False):
        sim = sim.to(_compute_dtype(sim.dtype))
        coarse_geo = _geometry(sizes, cells, device, geometry)
        clip_geo = _geometry(sizes, clip_size, device, geometry)

        # Map B: raw map -> coarse grid -> min-max; the -1 padding is never selected, so only the inner cells
        # are ranked, and their raster order is the padded map's raster order. Cells a negative padding cuts away
        # are not candidates.
        coarse = F.interpolate(sim.reshape(batch, 1, side, side), (cells, cells), mode="bilinear", align_corners=False)
        values, flat = _min_max(coarse.reshape(batch, cells * cells).detach())  # (B, M), (B,)
        visible = _visible_cells(cells, coarse_geo)  # (B, M)
        cell_index, labels, chosen = _rank_cells(values, flat, visible, k, cfg.t_pos, cfg.t_neg)
        pixels = _cell_pixels(cell_index, cells, coarse_geo)  # (B, K, 2) long
        centre = torch.stack([coarse_geo.width // 2, coarse_geo.height // 2], -1)  # (B, 2)
        use_centre = (flat[:, None] | ~chosen)[..., None]  # (B, K, 1)
        pixels = torch.where(use_centre, centre[:, None, :], pixels)

        if not cfg.dtoc:  # the "discrete points" ablation: integer points as floats, no gradient to sim
            return pixels.to(sim.dtype), labels
        # Map A and DtoC.
        norm, _ = _min_max(sim)  # (B, N)
        coords = _refine(pixels, norm.view(batch, side, side), clip_geo, clip_size, cfg.dtoc_radius)
    return coords, labels


class NonFiniteActivation(FloatingPointError):
    """The hidden states given to SasP hold NaN/inf: the forward pass cannot continue (during training, a diverged
    step; see :attr:`SasP.nonfinite_is_divergence`)."""


class SasP(nn.Module):
    """Similarity as Points: hidden states to point prompts. Holds the settings only (no weights).

    READ-7B: num_points 30, t_pos 0.8, t_neg 0.2, down_sample 2; READ-13B evaluation: 60, 0.6, 0.2, 1; the crop
    geometry is READ's ("reference") unless ``cfg.geometry="clip"``.

    Arguments:
        cfg: the ``sasp`` config section (validated when it is built).
        clip_size: the CLIP input side, ``cfg.model.vision.image_size``.
        nonfinite_is_divergence: NaN/inf hidden states raise :class:`NonFiniteActivation` (a diverged training step,
            which the training loop skips) instead of the ``ValueError`` of bad input. Training sets it.
    """

    def __init__(self, cfg: SaspConfig, clip_size: int = 336, *, nonfinite_is_divergence: bool = False) -> None:
        super().__init__()
        _check_clip_size(clip_size, cfg.geometry)
        self.cfg = cfg
        self.clip_size = clip_size
        self.nonfinite_is_divergence = nonfinite_is_divergence

    def forward(self, image_hidden: Tensor, seg_hidden: Tensor, image_sizes: Sequence[tuple[int, int]]) -> PointPrompts:
        """Point prompts for B ``[SEG]`` tokens.

        Arguments:
            image_hidden: (B, N, C) last-layer states at the image-token positions of each ``[SEG]``'s row.
            seg_hidden: (B, C) last-layer state that predicts each ``[SEG]``.
            image_sizes: B pairs (H, W), the original size of each ``[SEG]``'s image.

        Returns:
            PointPrompts with coords (B, K, 2), labels (B, K), sim (B, N); see :func:`select_points`.
        """
        if self.nonfinite_is_divergence:
            for states in (image_hidden, seg_hidden):
                if not bool(torch.isfinite(states).all()):
                    raise NonFiniteActivation(f"non-finite SasP input of shape {tuple(states.shape)}")
        sim = similarity_map(image_hidden, seg_hidden)
        coords, labels = select_points(sim, image_sizes, self.cfg, self.clip_size)
        return PointPrompts(coords=coords, labels=labels, sim=sim.float())

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"num_points={c.num_points}, t_pos={c.t_pos}, t_neg={c.t_neg}, down_sample={c.down_sample}, "
            f"dtoc_radius={c.dtoc_radius}, clip_size={self.clip_size}, geometry={c.geometry!r}, "
            f"dtoc={c.dtoc}"
        )


# ----------------------------------------------------------------------------------------------------------
# helpers


@dataclass
class _Geometry:
    """Per-sample crop geometry at one crop size, as (B,) long tensors."""

    height: Tensor  # original H
    width: Tensor  # original W
    resized_h: Tensor  # padded map height (the resized, uncropped image in the "clip" geometry)
    resized_w: Tensor
    top: Tensor  # leading padding (the crop offset); -1 where the reference geometry crops
    left: Tensor
    scale_h: Tensor  # (B,) float32 H / resized_h: the float64 quotient rounded to float32, as in the reference
    scale_w: Tensor


def _geometry(sizes: list[tuple[int, int]], size: int, device: torch.device, geometry: str) -> _Geometry:
    rows = [(h, w, *pad_geometry(h, w, size, geometry)) for h, w in sizes]
    table = torch.tensor(rows, dtype=torch.long, device=device).view(len(sizes), 6)
    # a map cropped to nothing (tiny grids only) has no cell to place; its scale is never used
    scales = torch.tensor(
        [(h / r[2] if r[2] > 0 else 1.0, w / r[3] if r[3] > 0 else 1.0) for (h, w), r in zip(sizes, rows)],
        device=device,
    )
    scales = scales.to(torch.float32).view(len(sizes), 2)
    return _Geometry(*table.unbind(1), *scales.unbind(1))


def _visible_cells(cells: int, geo: _Geometry) -> Tensor:
    """(B, cells * cells) bool, raster order: the inner cells that the padded coarse map keeps (all of them
    unless the reference geometry's padding is negative)."""
    index = torch.arange(cells, device=geo.top.device)

    def axis(lead: Tensor, padded: Tensor) -> Tensor:
        pos = index[None] + lead[:, None]  # (B, cells) position in the padded map
        return (pos >= 0) & (pos < padded[:, None])

    rows = axis(geo.top, geo.resized_h)
    cols = axis(geo.left, geo.resized_w)
    return (rows[:, :, None] & cols[:, None, :]).flatten(1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grid_side(n: int) -> int:
    side = math.isqrt(n)
    if n < 1 or side * side != n:
        raise ValueError(f"the number of image tokens must be a positive perfect square, got N={n}")
    return side


def _check_clip_size(clip_size: int, geometry: str) -> None:
    if isinstance(clip_size, bool) or not isinstance(clip_size, int) or clip_size < 1:
        raise ValueError(f"SasP: clip_size must be an integer >= 1, got {clip_size!r}")
    if geometry == "reference" and clip_size < 3:
        # a padding of -1 on each side would leave nothing of a 1- or 2-pixel crop
        raise ValueError(f"SasP: the reference geometry needs clip_size >= 3, got {clip_size}")


def _check_sizes(image_sizes: Sequence[tuple[int, int]], batch: int) -> list[tuple[int, int]]:
    if len(image_sizes) != batch:
        raise ValueError(f"image_sizes has {len(image_sizes)} entries for {batch} similarity maps")
    sizes = []
    for i, hw in enumerate(image_sizes):
        try:
            h, w = (int(v) for v in hw)
        except (TypeError, ValueError):
            raise ValueError(f"image_sizes[{i}] = {hw!r} is not a pair (H, W)") from None
        if h < 1 or w < 1:
            raise ValueError(f"image_sizes[{i}] = ({h}, {w}): height and width must be >= 1")
        sizes.append((h, w))
    return sizes


def _min_max(x: Tensor) -> tuple[Tensor, Tensor]:
    """Min-max normalise each row of (B, M) x; flat rows ([FIX] no division by zero) become 0.

    Returns:
        (B, M) values in [0, 1] and the (B,) bool flat flags.
    """
    lo = x.amin(-1, keepdim=True)
    hi = x.amax(-1, keepdim=True)
    span = hi - lo
    flat = span <= FLAT_TOLERANCE * torch.maximum(lo.abs(), hi.abs())
    norm = (x - lo) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, torch.zeros_like(norm), norm), flat[:, 0]


def _rank_cells(
    values: Tensor, flat: Tensor, visible: Tensor, k: int, t_pos: float, t_neg: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Pick K cells of the coarse map in SasP order.

    Arguments:
        values: (B, M) normalised inner cells of map B, raster order.
        flat: (B,) flat maps, whose cells are all neutral.
        visible: (B, M) cells that the padded map keeps; the others are never chosen.

    Returns:
        (B, K) raster indices into the inner cells, their (B, K) long labels, and (B, K) bool: the slot holds a
        visible cell (False only where fewer than K cells are visible; such slots are neutral).
    """
    neutral_group = torch.full_like(values, 2, dtype=torch.long)
    group = torch.where((values >= 0) & (values <= t_neg), 1, neutral_group)
    group = torch.where(values >= t_pos, 0, group)  # 0 = positive, 1 = negative, 2 = neutral, 3 = cut away
    group = torch.where(flat[:, None], neutral_group, group)
    group = torch.where(visible, group, torch.full_like(group, 3))
    # Two stable sorts: by key (descending value for positives, ascending for negatives, none for neutrals),
    # then by group; ties keep raster order.
    key = torch.where(group == 0, -values, torch.where(group == 1, values, torch.zeros_like(values)))
    order = key.argsort(dim=1, stable=True)
    order = order.gather(1, group.gather(1, order).argsort(dim=1, stable=True))[:, :k]
    label_of_group = torch.tensor([POSITIVE, NEGATIVE, NEUTRAL, NEUTRAL], dtype=torch.long, device=values.device)
    chosen_group = group.gather(1, order)
    return order, label_of_group[chosen_group], chosen_group != 3


def _cell_pixels(cell_index: Tensor, cells: int, geo: _Geometry) -> Tensor:
    """Integer pixel (x, y) of coarse cell centres, in float32 arithmetic like the reference.

    Arguments:
        cell_index: (B, K) raster indices into the ``cells x cells`` inner map.
        geo: geometry at crop size ``cells`` (the padded coarse map is resized_h x resized_w).

    Returns:
        (B, K, 2) long.
    """

    def axis(index: Tensor, lead: Tensor, scale: Tensor, size: Tensor) -> Tensor:
        pos = ((index + lead[:, None]).float() + 0.5) * scale[:, None]
        return pos.minimum((size - 1).float()[:, None]).long()  # truncation toward zero, pos >= 0

    x = axis(cell_index % cells, geo.left, geo.scale_w, geo.width)
    y = axis(cell_index // cells, geo.top, geo.scale_h, geo.height)
    return torch.stack([x, y], -1)


def _linear_taps(pos: Tensor, in_size: Tensor, out_size: Tensor, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Source taps of bilinear resizing (align_corners=False), with PyTorch's index arithmetic.

    Arguments:
        pos: output indices (any shape, long); in_size, out_size: broadcastable long sizes.

    Returns:
        (i0, i1, lam0, lam1): output[pos] = lam0 * input[i0] + lam1 * input[i1].
    """
    scale = in_size.to(dtype) / out_size.to(dtype)
    src = (scale * (pos.to(dtype) + 0.5) - 0.5).clamp(min=0)
    i0 = src.floor().long().minimum(in_size - 1)
    lam1 = (src - i0.to(dtype)).clamp(0, 1)
    i1 = i0 + (i0 < in_size - 1).long()
    return i0, i1, 1 - lam1, lam1


def _resize_matrix(in_size: int, out_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(out_size, in_size) matrix of 1-D bilinear resizing (align_corners=False)."""
    pos = torch.arange(out_size, device=device)
    n_in = torch.tensor(in_size, device=device)
    i0, i1, lam0, lam1 = _linear_taps(pos, n_in, torch.tensor(out_size, device=device), dtype)
    m = torch.zeros(out_size, in_size, dtype=dtype, device=device)
    m.scatter_add_(1, i0[:, None], lam0[:, None])
    return m.scatter_add_(1, i1[:, None], lam1[:, None])


def _axis_weights(pos: Tensor, out_size: Tensor, padded: Tensor, lead: Tensor, to_crop: Tensor) -> Tensor:
    """Weights of map A's image rows (or columns) ``pos`` over the ``side`` grid rows (or columns).

    Map A along one axis is: grid (side) -> crop (clip) by ``to_crop``, zero-pad to ``padded`` with ``lead``
    leading zeros, -> image (out_size). The composite is linear, so one row of weights per image index.

    Arguments:
        pos: (B, K, T) image indices, within [0, out_size).
        out_size, padded, lead: (B,) long.
        to_crop: (clip, side) resize matrix.

    Returns:
        (B, K, T, side).
    """
    clip = to_crop.shape[0]
    taps = _linear_taps(pos, padded[:, None, None], out_size[:, None, None], to_crop.dtype)
    weights = 0
    for index, lam in zip(taps[:2], taps[2:]):
        crop_index = index - lead[:, None, None]
        inside = (crop_index >= 0) & (crop_index < clip)
        weights = weights + to_crop[crop_index.clamp(0, clip - 1)] * (lam * inside)[..., None]
    return weights


def _refine(pixels: Tensor, norm: Tensor, geo: _Geometry, clip_size: int, radius: int) -> Tensor:
    """DtoC: soft-argmax of exp(A - d^2) over a (2r+1)^2 window of image pixels around each point.

    Arguments:
        pixels: (B, K, 2) long integer points (x, y), inside the image.
        norm: (B, side, side) min-max normalised similarity grid.
        geo: geometry at the CLIP crop size ``clip_size``.

    Returns:
        (B, K, 2) refined (x, y), differentiable with respect to ``norm``.
    """
    side = norm.shape[-1]
    to_crop = _resize_matrix(side, clip_size, norm.dtype, norm.device)  # (clip, side)
    offsets = torch.arange(-radius, radius + 1, device=norm.device)  # (T,)
    xs = pixels[..., 0:1] + offsets  # (B, K, T)
    ys = pixels[..., 1:2] + offsets
    height, width = geo.height[:, None, None], geo.width[:, None, None]
    inside = ((ys >= 0) & (ys < height))[..., :, None] & ((xs >= 0) & (xs < width))[..., None, :]  # (B, K, T, T)
    wy = _axis_weights(ys.clamp(min=0).minimum(height - 1), geo.height, geo.resized_h, geo.top, to_crop)
    wx = _axis_weights(xs.clamp(min=0).minimum(width - 1), geo.width, geo.resized_w, geo.left, to_crop)
    a = wy @ norm[:, None] @ wx.transpose(-1, -2)  # (B, K, T, side) @ (B, 1, side, side) @ (B, K, side, T)
    d2 = (offsets[:, None] ** 2 + offsets[None, :] ** 2).to(norm.dtype)  # (T, T)
    logits = (a - d2).masked_fill(~inside, float("-inf"))
    w = logits.flatten(2).softmax(-1).view_as(logits)  # (B, K, T, T), rows = y, columns = x
    shift = torch.stack([(w.sum(-2) * offsets).sum(-1), (w.sum(-1) * offsets).sum(-1)], -1)  # (B, K, 2)
    return pixels.to(norm.dtype) + shift
