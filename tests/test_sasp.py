"""SasP: the batched implementation against the literal per-point oracle, the fixes, gradients, visualisation."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessor
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import SizeDict

from read.config import ReadConfig, SaspConfig
from read.data.transforms import clip_crop_geometry
from read.model.sasp import (
    GEOMETRIES,
    PointPrompts,
    SasP,
    _axis_weights,
    _geometry,
    _min_max,
    _resize_matrix,
    full_resolution_map,
    reference_geometry,
    select_points,
    similarity_map,
)
from read.viz import LABEL_COLOURS, MASK_COLOUR, draw_points, mask_overlay, save_png, similarity_heatmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sasp_oracle import map_a, oracle_select_points  # noqa: E402

READ_7B = dict(num_points=30, t_pos=0.8, t_neg=0.2, down_sample=2)
READ_13B = dict(num_points=60, t_pos=0.6, t_neg=0.2, down_sample=1)
HPARAMS = pytest.mark.parametrize("hp", [READ_7B, READ_13B], ids=["7b", "13b"])
GEOMETRY = pytest.mark.parametrize("geometry", GEOMETRIES)

# Rectangular both ways, square, tiny, extreme aspect. Kept small: the oracle costs O(points x pixels).
SIZES = [(48, 64), (64, 48), (20, 30), (30, 20), (40, 40), (7, 5), (1, 1), (100, 37), (5, 200)]
# Short sides where the reference's padding is -1 (333 at 336; 376 and 383 at 12 and 24), both orientations.
NEGATIVE_PAD_SIZES = [(333, 340), (380, 376), (383, 383), (340, 333), (376, 390)]
# Common photo sizes with odd crop excesses, the reference's negative paddings, and degenerate shapes.
REFERENCE_SIZES = [(640, 427), (427, 640), (1080, 1920), (333, 500), (376, 500), (383, 512), (1, 1), (5, 200)]


def random_maps(batch: int, kind: str, seed: int, side: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "rough":
        return torch.randn(batch, side * side, generator=g) * 3 + 1
    if kind == "smooth":  # a few blobs: a coarse random field upsampled
        coarse = torch.randn(batch, 1, 5, 5, generator=g)
        return F.interpolate(coarse, (side, side), mode="bicubic", align_corners=False).view(batch, -1) * 40
    if kind == "ties":  # few distinct values: many exact ties in the coarse map
        return torch.randint(0, 4, (batch, side * side), generator=g).float()
    raise ValueError(kind)


def points_of(sim: torch.Tensor, sizes: list[tuple[int, int]], clip_size: int = 336, **hp) -> tuple[torch.Tensor, ...]:
    """select_points with the SasP settings given as keywords (as the oracle takes them)."""
    return select_points(sim, sizes, SaspConfig(**hp), clip_size=clip_size)


def assert_matches_oracle(sim: torch.Tensor, sizes: list[tuple[int, int]], **hp) -> tuple[torch.Tensor, torch.Tensor]:
    """select_points against the literal oracle (``geometry`` in ``hp``, default "reference" on both sides)."""
    coords, labels = points_of(sim, sizes, **hp)
    ref_coords, ref_labels, ref_pixels = oracle_select_points(sim, sizes, **hp)
    assert coords.shape == ref_coords.shape and labels.shape == ref_labels.shape
    assert torch.equal(labels, ref_labels)
    pixels, _ = points_of(sim, sizes, **{**hp, "dtoc_radius": 0})  # no refinement: the integer points
    assert torch.equal(pixels, ref_pixels.to(pixels.dtype))
    torch.testing.assert_close(coords, ref_coords.to(coords.dtype), atol=1e-3, rtol=0)
    return coords, labels


# ----------------------------------------------------------------------------------------------------------
# parity with the literal oracle


@HPARAMS
@GEOMETRY
@pytest.mark.parametrize("kind", ["rough", "smooth", "ties"])
def test_matches_oracle_on_random_maps(hp, kind, geometry):
    for seed in range(2):
        sim = random_maps(len(SIZES), kind, seed)
        coords, labels = assert_matches_oracle(sim, SIZES, geometry=geometry, **hp)
        assert coords.shape == (len(SIZES), hp["num_points"], 2)
        assert bool((labels[:, 0] == 1).all())  # the maximum cell is always positive


@HPARAMS
@GEOMETRY
def test_matches_oracle_where_the_reference_pads_negatively(hp, geometry):
    sim = torch.cat([random_maps(3, "rough", 13), random_maps(2, "smooth", 14)])
    n = len(NEGATIVE_PAD_SIZES) if hp is READ_7B else 3  # 60 points: keep the oracle's cost down
    assert_matches_oracle(sim[:n], NEGATIVE_PAD_SIZES[:n], geometry=geometry, **hp)


def test_reference_geometry_matches_the_oracle_at_photo_sizes():
    """READ's own crop arithmetic, literally (odd excesses lose a row/column, -1 paddings crop), at the sizes
    where it differs most from the CLIP processor's crop; all 30 points."""
    sim = torch.cat([random_maps(4, "rough", 21), random_maps(4, "smooth", 22)])
    coords, labels = assert_matches_oracle(sim, REFERENCE_SIZES, geometry="reference", **READ_7B)
    assert coords.shape == (len(REFERENCE_SIZES), 30, 2)


@GEOMETRY
def test_matches_oracle_at_common_sizes(geometry):
    sim = torch.cat([random_maps(1, "rough", 3), random_maps(1, "smooth", 4)])
    assert_matches_oracle(sim, [(480, 640), (500, 375)], geometry=geometry, **READ_7B)


@GEOMETRY
def test_matches_oracle_at_full_hd_both_orientations(geometry):
    """12 points per map keep the oracle's full-image soft-argmax affordable; the slow test runs all 30/60."""
    sim = torch.cat([random_maps(1, "rough", 3), random_maps(1, "smooth", 4)])
    assert_matches_oracle(sim, [(1080, 1920), (1920, 1080)], geometry=geometry, **{**READ_7B, "num_points": 12})


@pytest.mark.slow
@HPARAMS
@GEOMETRY
def test_matches_oracle_at_large_sizes(hp, geometry):
    sim = torch.cat([random_maps(3, "rough", 5), random_maps(3, "smooth", 6)])
    sizes = [(1080, 1920), (1920, 1080), (720, 1280), (768, 1024), (480, 640), (376, 500)]
    assert_matches_oracle(sim, sizes, geometry=geometry, **hp)


@GEOMETRY
def test_matches_oracle_with_a_tiny_grid(geometry):
    """A tiny model's 4x4 image-token grid with its own CLIP size; fewer cells than points."""
    sim = random_maps(4, "rough", 5, side=4)
    sizes = [(40, 64), (64, 40), (9, 9), (3, 50)]
    coords, labels = assert_matches_oracle(sim, sizes, num_points=6, down_sample=2, clip_size=32, geometry=geometry)
    assert coords.shape == (4, 4, 2)  # min(num_points, (4 // 2) ** 2)
    assert_matches_oracle(sim, sizes, num_points=6, down_sample=1, clip_size=32, geometry=geometry)


def test_reference_geometry_crops_tiny_grids_to_neutral_centre_points():
    """A 2x2 coarse grid at a short side of 49 (where the reference's int(49 * (2 / 49)) is 1): the padding of -1
    leaves no visible cell, so all points are neutral at the image centre; 1x1 grids likewise at short side 2."""
    assert reference_geometry(49, 60, 2)[0] == 0
    sim = random_maps(2, "rough", 23, side=4)
    sizes = [(49, 60), (40, 64)]
    coords, labels = assert_matches_oracle(sim, sizes, num_points=4, down_sample=2, clip_size=32)
    assert labels[0].tolist() == [-1] * 4 and coords[0].round().long().tolist() == [[30, 24]] * 4
    assert bool((labels[1] != -1).any())


def test_golden_reference_run():
    """The reference, run on torch.manual_seed(0) with torch.randn(576) at (480, 640), down_sample 2:
    7 positive, 2 negative, 21 neutral, and the first point (260, 340) refined to (260.0061, 339.9920)."""
    torch.manual_seed(0)
    sim = torch.randn(1, 576)
    coords, labels = points_of(sim, [(480, 640)], **READ_7B)
    assert [int((labels == v).sum()) for v in (1, 0, -1)] == [7, 2, 21]
    torch.testing.assert_close(coords[0, 0], torch.tensor([260.0061, 339.9920]), atol=1e-4, rtol=0)


def test_hand_computed_points():
    """4x4 map holding 0..15 in raster order, 8x8 image (no crop), down_sample 1: positives 15..12, negatives
    0..3, then neutrals 4, 5; cell (r, c) sits at pixel (2c + 1, 2r + 1)."""
    sim = torch.arange(16.0)[None]
    hp = dict(num_points=10, t_pos=0.75, t_neg=0.25, down_sample=1, clip_size=8)
    coords, labels = points_of(sim, [(8, 8)], **hp)
    pixels, _ = points_of(sim, [(8, 8)], dtoc_radius=0, **hp)
    cells = [15, 14, 13, 12, 0, 1, 2, 3, 4, 5]
    expected = torch.tensor([[2 * (i % 4) + 1, 2 * (i // 4) + 1] for i in cells])
    assert labels[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, -1, -1]
    assert torch.equal(pixels[0], expected.float())
    assert float((coords[0] - expected).abs().max()) < 0.5


def test_ties_keep_raster_order():
    sim = torch.zeros(1, 16)
    sim[0, [9, 2, 6]] = 1.0  # three equal maxima
    coords, labels = points_of(sim, [(4, 4)], num_points=4, down_sample=1, clip_size=4)
    # positives 2, 6, 9 in raster order, then the first negative cell (0)
    assert labels[0].tolist() == [1, 1, 1, 0]
    assert coords[0].round().long().tolist() == [[2, 0], [2, 1], [1, 2], [0, 0]]


def test_batch_equals_single_samples():
    sim = random_maps(len(SIZES), "smooth", 7)
    coords, labels = points_of(sim, SIZES, **READ_7B)
    for i, size in enumerate(SIZES):
        c, lab = points_of(sim[i : i + 1], [size], **READ_7B)
        assert torch.equal(lab[0], labels[i])
        torch.testing.assert_close(c[0], coords[i], atol=1e-5, rtol=0)


def test_window_radius_ten_is_the_full_sum():
    sim = random_maps(3, "rough", 8)
    sizes = [(480, 640), (20, 30), (333, 500)]
    c10, _ = points_of(sim, sizes, dtoc_radius=10)
    c20, _ = points_of(sim, sizes, dtoc_radius=20)
    torch.testing.assert_close(c10, c20, atol=1e-6, rtol=0)
    c0, _ = points_of(sim, sizes, dtoc_radius=0)
    assert torch.equal(c0, c0.round())  # no window: the integer points themselves


# ----------------------------------------------------------------------------------------------------------
# map A and the crop geometry


@GEOMETRY
@pytest.mark.parametrize(
    "size", [(480, 640), (500, 333), (383, 383), (20, 30), (1, 7), (1080, 1920), (427, 640), (333, 501)]
)
def test_window_weights_reproduce_the_interpolated_map(size, geometry):
    """The composite interpolation rows used in the DtoC windows give F.interpolate's map A at every pixel."""
    sim = random_maps(1, "smooth", 9)
    full = map_a(sim[0], size, 336, geometry)
    torch.testing.assert_close(full_resolution_map(sim[0], size, 336, geometry), full, atol=0, rtol=0)
    geo = _geometry([size], 336, sim.device, geometry)
    to_crop = _resize_matrix(24, 336, torch.float32, sim.device)
    h, w = size
    wy = _axis_weights(torch.arange(h).view(1, 1, h), geo.height, geo.resized_h, geo.top, to_crop)
    wx = _axis_weights(torch.arange(w).view(1, 1, w), geo.width, geo.resized_w, geo.left, to_crop)
    norm, _ = _min_max(sim)
    torch.testing.assert_close(wy[0, 0] @ norm.view(24, 24) @ wx[0, 0].T, full, atol=2e-6, rtol=0)


def test_crop_geometry_is_the_clip_processors():
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 2500, (300, 2), generator=g).tolist() + [[333, 500], [376, 500], [383, 383], [1, 1]]
    for target in (336, 24, 12, 32):
        for h, w in sizes:
            image = np.broadcast_to(np.zeros(1, np.uint8), (h, w, 1))
            expected = get_resize_output_image_size(
                image, target, default_to_square=False, input_data_format="channels_last"
            )
            assert clip_crop_geometry(h, w, target)[:2] == expected
    # the crop offsets, read off an index image cropped by the processor itself
    processor = CLIPImageProcessor()
    for h, w in [(333, 500), (500, 333), (376, 500), (383, 383), (7, 10), (1080, 1920), (375, 500)]:
        for target in (336, 24, 12):
            new_h, new_w, top, left = clip_crop_geometry(h, w, target)
            index = torch.arange(new_h * new_w, dtype=torch.float64).view(1, new_h, new_w)
            crop = processor.center_crop(index, SizeDict(height=target, width=target))
            assert crop.shape[-2:] == (target, target)
            assert int(crop[0, 0, 0]) == top * new_w + left


@pytest.mark.parametrize("short,target", [(333, 336), (376, 12), (376, 24), (383, 12), (383, 24)])
def test_reference_padding_goes_negative_and_the_clip_geometry_does_not(short, target):
    for h, w in ((short, 500), (500, short), (short, short)):
        reference_short = int(short * (target / min(h, w)))
        assert (reference_short - target) // 2 == -1  # the reference's F.pad crops a row/column on each side
        padded_h, padded_w, top, left = reference_geometry(h, w, target)
        short_axis = (padded_h, top) if h == short else (padded_w, left)
        assert short_axis == (target - 2, -1)
        new_h, new_w, top, left = clip_crop_geometry(h, w, target)
        assert min(new_h, new_w) == target and top >= 0 and left >= 0
        assert new_h - target - top >= 0 and new_w - target - left >= 0


def test_reference_geometry_pads_symmetrically():
    """An odd excess loses its last row/column: 427x640 at 336 resizes the long side to 503 (excess 167) and pads
    83 on each side (502 columns); at 12 to 17 (excess 5): 2 on each side (16 columns). The CLIP geometry keeps
    503 / 17 with the odd column at the right."""
    assert reference_geometry(427, 640, 336) == (336, 502, 0, 83)
    assert reference_geometry(427, 640, 12) == (12, 16, 0, 2)
    assert reference_geometry(640, 427, 12) == (16, 12, 2, 0)
    assert clip_crop_geometry(427, 640, 336) == (336, 503, 0, 83)
    assert clip_crop_geometry(427, 640, 12) == (12, 17, 0, 2)


def test_the_geometries_move_the_points_at_odd_crop_excesses():
    """Same labels and cells, other positions: a random map at 640x427 and 1080x1920 (measured figures quoted in
    the SasP documentation)."""
    sim = torch.cat([random_maps(1, "rough", 30), random_maps(1, "smooth", 31)])
    for size in ((640, 427), (1080, 1920)):
        ref_coords, ref_labels = points_of(sim, [size] * 2, **READ_7B)
        clip_coords, clip_labels = points_of(sim, [size] * 2, geometry="clip", **READ_7B)
        assert torch.equal(ref_labels, clip_labels)
        shift = (ref_coords - clip_coords).abs().amax()
        assert 10 < float(shift) < 80


def test_negative_padding_sizes_keep_the_whole_coarse_grid_in_the_clip_geometry():
    """At 376x500 the reference's coarse map loses a row (10 instead of 12); in the CLIP geometry all 144 cells
    stay selectable and the cell centres stay inside the CLIP-visible square."""
    sim = random_maps(1, "rough", 10)
    hp = {k: READ_7B[k] for k in ("t_pos", "t_neg")}
    coords, labels = points_of(sim, [(376, 500)], num_points=144, geometry="clip", **hp)
    pixels = coords[0].round().long()
    assert len({tuple(p) for p in pixels.tolist()}) == 144
    _, new_w, _, left = clip_crop_geometry(376, 500, 12)
    cell_w = 500 / new_w
    assert int(pixels[:, 0].min()) == int((left + 0.5) * cell_w) and int(pixels[:, 1].max()) == int(11.5 * 376 / 12)
    # the reference geometry: 10 rows of 12 + 2 * 2 columns stay; the first and last rows of the grid are cut away,
    # so 120 cells are chosen and the other 24 points are neutral at the centre
    coords, labels = points_of(sim, [(376, 500)], num_points=144, **hp)
    centre = torch.tensor([250.0, 188.0])
    at_centre = (coords[0] - centre).abs().amax(-1) < 1.0
    assert int(at_centre.sum()) >= 24 and bool((labels[0, -24:] == -1).all())
    assert len({tuple(p) for p in coords[0, :120].round().long().tolist()}) == 120


# ----------------------------------------------------------------------------------------------------------
# degenerate and bad input


@pytest.mark.parametrize("value", [0.0, 3.7, -1e4])
def test_constant_map_gives_neutral_centre_points(value):
    sim = torch.full((2, 576), value, requires_grad=True)
    coords, labels = points_of(sim, [(48, 64), (7, 5)], **READ_7B)
    assert coords.shape == (2, 30, 2) and bool((labels == -1).all())
    assert bool(torch.isfinite(coords).all())
    assert torch.equal(coords.round().long()[:, 0], torch.tensor([[32, 24], [2, 3]]))
    coords.sum().backward()
    assert bool(torch.isfinite(sim.grad).all())
    ref_coords, ref_labels, _ = oracle_select_points(sim.detach(), [(48, 64), (7, 5)], **READ_7B)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(coords.detach(), ref_coords, atol=1e-3, rtol=0)


def test_rounding_noise_counts_as_flat_but_a_real_map_does_not():
    base = torch.full((1, 576), 123.0)
    noisy = base + torch.randn(1, 576, generator=torch.Generator().manual_seed(0)) * 1e-5  # ~1e-7 relative
    _, labels = points_of(noisy, [(100, 100)])
    assert bool((labels == -1).all())
    real = base + torch.randn(1, 576, generator=torch.Generator().manual_seed(0)) * 1e-2
    _, labels = points_of(real, [(100, 100)])
    assert bool((labels == 1).any()) and bool((labels == 0).any())


def test_empty_positive_or_negative_sets():
    sim = random_maps(3, "smooth", 11)
    sizes = [(48, 64), (30, 20), (33, 50)]
    _, labels = assert_matches_oracle(sim, sizes, num_points=30, t_pos=1.01, t_neg=0.2, down_sample=2)
    assert not bool((labels == 1).any()) and bool((labels[:, 0] == 0).all())
    _, labels = assert_matches_oracle(sim, sizes, num_points=30, t_pos=0.8, t_neg=-0.01, down_sample=2)
    assert not bool((labels == 0).any()) and bool((labels[:, 0] == 1).all())
    _, labels = assert_matches_oracle(sim, sizes, num_points=1, t_pos=0.8, t_neg=0.2, down_sample=2)
    assert labels.tolist() == [[1]] * 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_similarity_raises(bad):
    sim = torch.randn(3, 576)
    sim[1, 17] = bad
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\]"):
        points_of(sim, [(10, 10)] * 3)


def test_bad_arguments_raise():
    sim = torch.randn(2, 576)
    with pytest.raises(ValueError, match="perfect square"):
        points_of(torch.randn(2, 575), [(10, 10)] * 2)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        points_of(torch.randn(576), [(10, 10)])
    with pytest.raises(ValueError, match="2 similarity maps"):
        points_of(sim, [(10, 10)])
    with pytest.raises(ValueError, match=r"image_sizes\[1\]"):
        points_of(sim, [(10, 10), (0, 5)])
    with pytest.raises(ValueError, match="down_sample=48"):
        points_of(sim, [(10, 10)] * 2, down_sample=48)
    with pytest.raises(ValueError, match="t_neg < t_pos"):
        points_of(sim, [(10, 10)] * 2, t_pos=0.2, t_neg=0.2)
    with pytest.raises(ValueError, match="num_points"):
        SaspConfig(num_points=0)
    with pytest.raises(ValueError, match="dtoc_radius"):
        SaspConfig(dtoc_radius=-1)
    with pytest.raises(ValueError, match="clip_size"):
        SasP(SaspConfig(), clip_size=0)
    with pytest.raises(ValueError, match="clip_size >= 3"):
        points_of(sim, [(10, 10)] * 2, clip_size=2)
    with pytest.raises(ValueError, match="does not match"):
        similarity_map(torch.randn(2, 576, 8), torch.randn(2, 7))


def test_empty_batch():
    coords, labels = points_of(torch.zeros(0, 576), [])
    assert coords.shape == (0, 30, 2) and labels.shape == (0, 30)


# ----------------------------------------------------------------------------------------------------------
# similarity, gradients, module


def test_similarity_map_is_a_float32_dot_product():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 16, 64, generator=g).bfloat16()
    seg = torch.randn(2, 64, generator=g).bfloat16()
    expected = torch.einsum("bnc,bc->bn", image.double(), seg.double()).float()
    sim = similarity_map(image, seg)
    assert sim.dtype == torch.float32 and sim.shape == (2, 16)
    torch.testing.assert_close(sim, expected, atol=1e-4, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(similarity_map(image.float(), seg.float()), sim)


def test_gradcheck_through_similarity_and_points():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 16, 3, dtype=torch.float64, generator=g, requires_grad=True)
    seg = torch.randn(2, 3, dtype=torch.float64, generator=g, requires_grad=True)

    def points(a, b):
        return points_of(similarity_map(a, b), [(10, 13), (9, 7)], num_points=5, down_sample=1, clip_size=8)[0]

    assert torch.autograd.gradcheck(points, (image, seg))
    coords = points(image, seg)
    ig, sg = torch.autograd.grad(coords.sum(), (image, seg))
    assert bool((ig != 0).any()) and bool((sg != 0).all())


def test_gradient_matches_the_oracle():
    sim = random_maps(3, "rough", 12).double().requires_grad_()
    sizes = [(48, 64), (33, 50), (60, 40)]
    w = torch.randn(3, 30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    coords, labels = points_of(sim, sizes, **READ_7B)
    (grad,) = torch.autograd.grad((coords * w).sum(), sim)
    ref_coords, _, _ = oracle_select_points(sim, sizes, **READ_7B)
    (ref_grad,) = torch.autograd.grad((ref_coords * w).sum(), sim)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=1e-9)
    assert int((grad != 0).sum()) > 0.9 * grad.numel()  # the points cover the map (the reference reaches 576/576)
    assert labels.dtype == torch.long and not labels.requires_grad


def test_module_from_config():
    sasp = SasP(SaspConfig(num_points=60, t_pos=0.6, t_neg=0.2, down_sample=1), clip_size=336)
    c = sasp.cfg
    assert (c.num_points, c.t_pos, c.t_neg, c.down_sample, c.dtoc_radius, sasp.clip_size) == (60, 0.6, 0.2, 1, 10, 336)
    assert c.geometry == "reference"
    assert SasP(SaspConfig(geometry="clip"), clip_size=336).cfg.geometry == "clip"
    with pytest.raises(ValueError, match="geometry"):
        SaspConfig(geometry="square")
    with pytest.raises(ValueError, match="geometry"):
        ReadConfig(sasp=SaspConfig(geometry="square"))
    assert list(sasp.parameters()) == []
    g = torch.Generator().manual_seed(2)
    image = torch.randn(3, 576, 32, generator=g).bfloat16()
    seg = torch.randn(3, 32, generator=g).bfloat16()
    sizes = [(480, 640), (1080, 1920), (20, 30)]
    out = sasp(image, seg, sizes)
    assert isinstance(out, PointPrompts)
    assert out.coords.shape == (3, 60, 2) and out.labels.shape == (3, 60) and out.sim.shape == (3, 576)
    assert out.coords.dtype == torch.float32 and out.sim.dtype == torch.float32
    coords, labels = points_of(similarity_map(image, seg), sizes, **READ_13B)
    assert torch.equal(out.coords, coords) and torch.equal(out.labels, labels)


def test_without_dtoc_the_points_are_the_oracles_integer_points_and_carry_no_gradient():
    sim = random_maps(3, "smooth", seed=7).requires_grad_(True)
    sizes = [(48, 64), (333, 340), (20, 30)]
    coords, labels = points_of(sim, sizes, **READ_7B, dtoc=False)
    _, ref_labels, ref_pixels = oracle_select_points(sim.detach(), sizes, **READ_7B)
    assert torch.equal(labels, ref_labels) and torch.equal(coords, ref_pixels.to(coords.dtype))
    assert coords.dtype == torch.float32 and not coords.requires_grad
    refined, _ = points_of(sim, sizes, **READ_7B)
    assert refined.requires_grad and not torch.equal(refined, coords)
    sasp = SasP(SaspConfig(dtoc=False, **READ_7B), clip_size=336)
    assert "dtoc=False" in repr(sasp)
    image, seg = torch.randn(3, 576, 8), torch.randn(3, 8)
    out = sasp(image, seg, sizes)
    expected, _ = points_of(similarity_map(image, seg), sizes, **READ_7B, dtoc=False)
    assert torch.equal(out.coords, expected)


# ----------------------------------------------------------------------------------------------------------
# visualisation


def test_heatmap_png_with_points(tmp_path):
    h, w = 120, 160
    image = np.full((h, w, 3), 40, np.uint8)
    sim = torch.zeros(576)
    sim[0] = 1.0  # hot top-left token (of the CLIP-visible square)
    coords = torch.tensor([[20.0, 30.0], [80.0, 60.0], [140.0, 100.0]])
    labels = torch.tensor([1, 0, -1])
    pic = similarity_heatmap(image, sim, 336, coords, labels)
    assert pic.shape == (h, w, 3) and pic.dtype == np.uint8
    path = save_png(pic, tmp_path / "viz" / "heat.png")
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert back.shape == (h, w, 3)
    for (x, y), label in zip(coords.long().tolist(), labels.tolist()):
        assert tuple(back[y, x]) == LABEL_COLOURS[label]
    _, new_w, _, left = clip_crop_geometry(h, w, 336)
    hot_x = int((left + 1) * w / new_w)  # just inside the visible square, next to the hot token
    assert back[1, hot_x, 0] > back[1, hot_x, 2]  # JET: hot is red
    assert back[h // 2, w // 2 + 20, 2] > back[h // 2, w // 2 + 20, 0]  # cold is blue


def test_mask_overlay_and_draw_points():
    image = np.zeros((10, 12, 3), np.uint8)
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    out = mask_overlay(image, torch.from_numpy(mask))
    assert tuple(out[3, 4]) == tuple(round(c * 0.5) for c in MASK_COLOUR) and tuple(out[8, 10]) == (0, 0, 0)
    with pytest.raises(ValueError, match="mask shape"):
        mask_overlay(image, mask[:5])
    drawn = draw_points(image, [[6, 5]], [0], radius=2)
    assert tuple(drawn[5, 6]) == LABEL_COLOURS[0] and tuple(drawn[5, 9]) == (255, 255, 255)
    with pytest.raises(ValueError, match="labels must be"):
        draw_points(image, [[6, 5]], [2])
