"""The batched mask decoder (one call for the [SEG] prompts of many images) against pip SAM's own per-image path."""

from __future__ import annotations

import pytest
import torch

from model_utils import tiny_config
from read.model.sam import build_sam, decode_masks, decode_masks_batched

# (resized (h, w) inside SAM's padded input, original (H, W)) of three images of different shapes.
SIZES = [((64, 48), (100, 75)), ((48, 64), (30, 40)), ((64, 64), (64, 64))]


def _sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam(tiny_config().model.sam).eval()


def _literal(sam, embedding, seg, coords, labels, resized, original):
    """pip SAM as its own predictor runs it: prompt encoder, MaskDecoder.forward, Sam.postprocess_masks."""
    points = None if coords is None else (coords[None], labels[None])
    sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
    sparse = torch.cat([sparse, seg[None, None]], dim=1)
    low_res, _ = sam.mask_decoder(
        image_embeddings=embedding[None],
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return sam.postprocess_masks(low_res, input_size=resized, original_size=original)[0, 0]


def _inputs(sam, with_points: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c = sam.prompt_encoder.embed_dim
    side = sam.prompt_encoder.image_embedding_size[0]
    embeddings = torch.randn(len(SIZES), c, side, side, generator=g)
    image_of = torch.tensor([0, 2, 0, 1, 2, 2])  # six prompts, images interleaved
    seg = torch.randn(len(image_of), c, generator=g)
    coords = labels = None
    if with_points:
        coords = torch.rand(len(image_of), 4, 2, generator=g) * 60
        labels = torch.tensor([[1, 0, -1, 1], [1, 1, 0, 0], [-1, -1, -1, -1], [1, -1, -1, -1], [0, 0, 1, 1],
                               [1, 0, 0, -1]])  # fmt: skip
    return embeddings, image_of, seg, coords, labels


@pytest.mark.parametrize("with_points", [False, True])
def test_batched_decoding_equals_pip_sam_per_prompt(with_points):
    sam = _sam()
    embeddings, image_of, seg, coords, labels = _inputs(sam, with_points)
    resized = [SIZES[i][0] for i in image_of.tolist()]
    original = [SIZES[i][1] for i in image_of.tolist()]
    with torch.no_grad():
        got = decode_masks_batched(sam, embeddings[image_of], seg, coords, labels, resized, original)
        for j, b in enumerate(image_of.tolist()):
            want = _literal(
                sam, embeddings[b], seg[j], None if coords is None else coords[j],
                None if labels is None else labels[j].float(), SIZES[b][0], SIZES[b][1],
            )  # fmt: skip
            assert got[j].shape == SIZES[b][1]
            assert got[j].dtype == torch.float32
            torch.testing.assert_close(got[j], want, atol=1e-5, rtol=1e-5)


def test_batched_decoding_gradients_equal_the_per_prompt_path():
    sam = _sam()
    embeddings, image_of, seg, coords, labels = _inputs(sam, with_points=True, seed=3)
    resized = [SIZES[i][0] for i in image_of.tolist()]
    original = [SIZES[i][1] for i in image_of.tolist()]
    coords_a = coords.clone().requires_grad_(True)
    seg_a = seg.clone().requires_grad_(True)
    masks = decode_masks_batched(sam, embeddings[image_of], seg_a, coords_a, labels, resized, original)
    sum(m.sigmoid().square().mean() for m in masks).backward()
    grad_decoder_a = [p.grad.clone() for p in sam.mask_decoder.transformer.parameters()]
    sam.zero_grad()

    coords_b = coords.clone().requires_grad_(True)
    seg_b = seg.clone().requires_grad_(True)
    total = 0
    for j, b in enumerate(image_of.tolist()):
        m = _literal(sam, embeddings[b], seg_b[j], coords_b[j], labels[j].float(), SIZES[b][0], SIZES[b][1])
        total = total + m.sigmoid().square().mean()
    total.backward()
    torch.testing.assert_close(seg_a.grad, seg_b.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(coords_a.grad, coords_b.grad, atol=1e-6, rtol=1e-4)
    assert coords_a.grad.abs().sum() > 0
    for ga, p in zip(grad_decoder_a, sam.mask_decoder.transformer.parameters()):
        torch.testing.assert_close(ga, p.grad, atol=1e-6, rtol=1e-4)


def test_one_image_helper_and_empty_batch():
    sam = _sam()
    embeddings, _, seg, _, _ = _inputs(sam, with_points=False)
    with torch.no_grad():
        masks = decode_masks(sam, embeddings[1:2], seg[:3], None, None, SIZES[1][0], SIZES[1][1])
        assert masks.shape == (3, *SIZES[1][1])
        for j in range(3):
            torch.testing.assert_close(
                masks[j], _literal(sam, embeddings[1], seg[j], None, None, *SIZES[1]), atol=1e-5, rtol=1e-5
            )
        assert decode_masks_batched(sam, embeddings[:0], seg[:0], None, None, [], []) == []
        assert decode_masks(sam, embeddings[1:2], seg[:0], None, None, SIZES[1][0], SIZES[1][1]).shape == (0, 30, 40)
