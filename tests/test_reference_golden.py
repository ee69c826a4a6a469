"""Parity with READ's own code: one training step of a toy READ, against what READ's ``model/READ.py`` computed.

``tests/goldens/read_reference/`` is written by ``scripts/make_reference_golden.py`` (READ's code in a transformers
4.31 environment; see that script). This test loads its checkpoint through ``load_released`` (published layout,
CLIP tower beside it), applies the same LoRA, feeds the same batch and compares the losses, mask logits, mask-prompt
positions and states, similarity maps, SasP points and labels (READ's crop geometry, on non-square images with odd
crop excesses and negative paddings) and the gradient of every trainable parameter.

Tolerances, from measurements on the development machine (2-core CPU): READ's own run repeated is bit-identical
with 1 thread; with 2 threads instead of 1 its losses, masks, similarity maps, points and labels stay
bit-identical and its gradients move by up to 1.8e-7 (1.4e-6 of each tensor's largest gradient). This project
differs from READ by at most 1.1e-7 (relative) in the losses, 8.3e-7 in the mask logits, 1.5e-6 in the similarity
maps and hidden states, 2.3e-5 px in the points and 6.8e-6 in the gradients (relative to each tensor's largest),
plus noise below 1e-9 on the attention key biases, whose gradient is zero in exact arithmetic. Each tolerance
below sits roughly ten times above those figures and far below what a change of behaviour gives: counting the
``<image>`` placeholder as a class moves the CE loss by 1.4e-4 relative, the CLIP crop geometry moves these
points by 6 to 13 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from read.batch import ReadBatch
from read.config import LoraConfig, SaspConfig
from read.constants import CLIP_MEAN, CLIP_STD, IGNORE_INDEX, SAM_PIXEL_MEAN, SAM_PIXEL_STD
from read.model.read_model import seg_prompt_mask
from read.model.released import load_released, map_released_state_dict
from read.model.sasp import select_points
from read.model.trainable import prepare_for_training

GOLDEN = Path(__file__).resolve().parent / "goldens" / "read_reference"
IMAGE_TOKEN_INDEX = -200  # LLaVA's image sentinel in READ's token ids

# Relative tolerances (difference / largest magnitude of the reference tensor); see the module docstring.
LOSS_RTOL = 1e-5
MASK_TOL = 1e-5
POINT_ATOL = 1e-3  # pixels
SIM_TOL = 1e-5
GRAD_TOL = 1e-4
GRAD_FLOOR = 1e-9  # absolute: gradients that are zero in exact arithmetic come out as noise below 1e-9


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def clip_tensor(image: np.ndarray) -> torch.Tensor:
    """Same arithmetic as the golden script: (x / 255 - mean) / std."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def sam_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """Same arithmetic as the golden script: (x - mean) / std, zero-padded right/bottom to ``size``."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    x = (x - torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    return torch.nn.functional.pad(x, (0, size - x.shape[2], 0, size - x.shape[1]))


def expand_image_token(rows: torch.Tensor, fill: torch.Tensor, num_patches: int) -> torch.Tensor:
    """READ's rows hold one -200 per image; ours hold ``num_patches`` placeholders: put ``fill`` (per row) there."""
    out = []
    for r, row in enumerate(rows):
        (at,) = (row == IMAGE_TOKEN_INDEX).nonzero()[:, 0].tolist()
        out.append(torch.cat([row[:at], fill[r].expand(num_patches).to(row.dtype), row[at + 1 :]]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def parity() -> dict:
    return run_step()


def run_step() -> dict:
    """Our side of the step: the golden checkpoint, LoRA and batch; forward and backward."""
    meta = json.loads((GOLDEN / "golden.json").read_text())
    ref = load_file(str(GOLDEN / "golden.safetensors"))
    model, tokenizer, cfg = load_released(GOLDEN / "checkpoint", GOLDEN / "clip")
    assert cfg.sasp.enabled and cfg.sasp.geometry == "reference"
    lora = meta["lora"]
    cfg.lora = LoraConfig(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], target_modules=lora["targets"])
    prepare_for_training(model, cfg)
    # READ's LoRA weights of the step, under our names
    lora_state = {k.removeprefix("lora."): v for k, v in ref.items() if k.startswith("lora.")}
    mapped, _, unmapped = map_released_state_dict(lora_state)
    assert not unmapped and len(mapped) == len(lora_state)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected and not any(".lora_" in k for k in missing)
    model.train()

    n = cfg.model.vision.num_patches
    ids = ref["input_ids"]
    image_fill = torch.full((ids.shape[0],), tokenizer.image_token_id)
    input_ids = expand_image_token(ids, image_fill, n)
    labels = expand_image_token(
        torch.where(ids == IMAGE_TOKEN_INDEX, ids, ref["labels"]), torch.full_like(image_fill, IGNORE_INDEX), n
    )
    attention = expand_image_token(
        torch.where(ids == IMAGE_TOKEN_INDEX, ids, ref["attention_masks"].long()), torch.ones_like(image_fill), n
    )
    offset = ref["offset"].tolist()
    images = range(len(offset) - 1)
    image_index = torch.tensor([i for i in images for _ in range(offset[i], offset[i + 1])])
    gt_masks = [ref[f"gt_masks.{i}"][r : r + 1] for i in images for r in range(offset[i + 1] - offset[i])]
    batch = ReadBatch(
        pixel_values=torch.stack([clip_tensor(read_png(GOLDEN / "inputs" / f"clip_{i}.png")) for i in images]),
        sam_images=torch.stack(
            [sam_tensor(read_png(GOLDEN / "inputs" / f"sam_{i}.png"), cfg.model.sam.image_size) for i in images]
        ),
        input_ids=input_ids,
        attention_mask=attention,
        image_index=image_index,
        original_sizes=[tuple(s) for s in meta["image_sizes"]["original"]],
        resized_sizes=[tuple(s) for s in meta["image_sizes"]["resized"]],
        labels=labels,
        gt_masks=gt_masks,
    )
    out = model(batch)
    out.loss.backward()
    # parameters the step does not reach (the IoU head, the unused mask outputs) have no gradient: zeros, as recorded
    grads = {
        name: p.grad if p.grad is not None else torch.zeros_like(p)
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return dict(meta=meta, ref=ref, model=model, tokenizer=tokenizer, batch=batch, out=out, grads=grads)


def rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|."""
    theirs = theirs.double()
    return float((ours.detach().double() - theirs).abs().max() / theirs.abs().max().clamp(min=1e-30))


def test_losses(parity):
    out, weights, losses = parity["out"], parity["meta"]["loss_weights"], parity["meta"]["losses"]
    ours = {
        "loss": out.loss,
        "ce_loss": out.ce_loss * weights["ce_loss_weight"],
        "mask_bce_loss": out.bce_loss * weights["bce_loss_weight"],
        "mask_dice_loss": out.dice_loss * weights["dice_loss_weight"],
    }
    for name, value in ours.items():
        value = float(value.detach())
        assert abs(value - losses[name]) <= LOSS_RTOL * abs(losses[name]), (name, value, losses[name])


def test_mask_prompt_positions_and_states(parity):
    ref, batch = parity["ref"], parity["batch"]
    positions = seg_prompt_mask(batch.input_ids, parity["model"].seg_token_id).nonzero()
    assert torch.equal(positions, ref["seg_index"])  # (row, index in the expanded sequence) of each [SEG] prompt
    hidden = parity["model"].language_forward(
        batch.input_ids, batch.attention_mask, parity["model"].encode_images(batch.pixel_values)[batch.image_index]
    )
    assert rel_diff(hidden[positions[:, 0], positions[:, 1]], ref["seg_hidden"]) < SIM_TOL


def test_mask_logits(parity):
    ref, out, offset = parity["ref"], parity["out"], parity["ref"]["offset"].tolist()
    for i in range(len(offset) - 1):
        ours = torch.cat(out.pred_masks[offset[i] : offset[i + 1]])
        assert ours.shape == ref[f"pred_masks.{i}"].shape
        assert rel_diff(ours, ref[f"pred_masks.{i}"]) < MASK_TOL, i


def test_sasp_points_in_the_reference_geometry(parity):
    ref, out = parity["ref"], parity["out"]
    coords = torch.cat(out.point_coords)
    labels = torch.cat(out.point_labels)
    sims = torch.cat(out.similarity)
    assert coords.shape[0] == len([k for k in ref if k.startswith("points.")]) == 4
    for k in range(coords.shape[0]):
        assert torch.equal(labels[k], ref[f"point_labels.{k}"]), k
        assert float((coords[k].detach() - ref[f"points.{k}"]).abs().max()) < POINT_ATOL, k
        assert rel_diff(sims[k], ref[f"similarity.{k}"]) < SIM_TOL, k
    # the images exercise the geometry: the CLIP processor's crop would put the same labels elsewhere
    sizes = [parity["batch"].original_sizes[int(i)] for i in parity["batch"].image_index]
    clip_coords, clip_labels = select_points(sims.detach(), sizes, SaspConfig(geometry="clip"))
    assert torch.equal(clip_labels, labels)
    assert bool(((clip_coords - coords.detach()).norm(dim=-1).amax(-1) > 5.0).all())


def test_gradients_of_every_trainable_parameter(parity):
    ref, grads, model = parity["ref"], parity["grads"], parity["model"]
    theirs = {k.removeprefix("grad."): v for k, v in ref.items() if k.startswith("grad.")}
    mapped, sources, unmapped = map_released_state_dict(theirs)
    assert not unmapped
    assert set(mapped) == set(grads), sorted(set(mapped) ^ set(grads))[:5]
    image_row = parity["tokenizer"].image_token_id
    for name, g in grads.items():
        expected = mapped[name]
        if g.shape != expected.shape:  # embed_tokens / lm_head: our extra <image> row gets no gradient at all
            assert g.shape[0] == expected.shape[0] + 1 and image_row == expected.shape[0], name
            assert bool((g[image_row] == 0).all()), name
            g = g[:image_row]
        tol = GRAD_TOL * float(expected.abs().max()) + GRAD_FLOOR
        assert float((g - expected).abs().max()) <= tol, (name, sources[name])
    assert model.llava.lm_head.weight.grad[image_row].abs().max() == 0
