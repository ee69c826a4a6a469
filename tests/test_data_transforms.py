"""Image loading and the CLIP / SAM preprocessing branches against transformers and segment_anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from fixtures import random_image, write_jpeg
from read.constants import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from read.data.transforms import (
    ImageLoadError,
    ImagePreprocessor,
    clip_preprocess,
    load_image,
    sam_preprocess,
    sam_resized_size,
)

SIZES = [(480, 640), (333, 500), (500, 333), (37, 91), (64, 64)]


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("side", [336, 32, 224])
def test_clip_preprocess_equals_hf_processor(hw, side):
    image = np.random.default_rng(hw[0] * side).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    proc = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    expected = torch.as_tensor(np.asarray(proc(image, return_tensors="np")["pixel_values"][0]))
    ours = clip_preprocess(image, side)
    assert ours.shape == (3, side, side) and ours.dtype == torch.float32
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("side", [1024, 64])
def test_sam_preprocess_equals_resize_longest_side(hw, side):
    image = np.random.default_rng(hw[1] + side).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    resized = ResizeLongestSide(side).apply_image(image)
    x, (h, w) = sam_preprocess(image, side)
    assert (h, w) == resized.shape[:2] == sam_resized_size(*hw, side)
    assert max(h, w) == side
    mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    expected = (torch.from_numpy(resized).permute(2, 0, 1).float() - mean) / std
    assert x.shape == (3, side, side)
    assert torch.equal(x[:, :h, :w], expected)
    assert x[:, h:, :].abs().sum() == 0 and x[:, :, w:].abs().sum() == 0


def test_sam_rounding():
    # 1024 * 333 / 500 = 681.98 -> 682; 1024 * 37 / 91 = 416.35 -> 416
    assert sam_resized_size(333, 500, 1024) == (682, 1024)
    assert sam_resized_size(37, 91, 1024) == (416, 1024)
    assert sam_resized_size(91, 37, 64) == (64, 26)


def test_image_preprocessor_records_sizes():
    pre = ImagePreprocessor(clip_size=32, sam_size=64)
    views = pre(random_image(30, 50, 0))
    assert views.pixel_values.shape == (3, 32, 32)
    assert views.sam_image.shape == (3, 64, 64)
    assert views.original_size == (30, 50)
    assert views.resized_size == (38, 64)


def test_load_image_rgb_order(tmp_path):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[..., 0] = 200  # red
    path = tmp_path / "red.png"
    import cv2

    cv2.imwrite(str(path), image[..., ::-1])
    out = load_image(path)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_load_image_grey_becomes_rgb(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((5, 7), 77, dtype=np.uint8)).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (5, 7, 3) and (out == 77).all()


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="not found: .*missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_image(bad)


def test_jpeg_roundtrip_shape(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", random_image(21, 34, 1))
    assert load_image(path).shape == (21, 34, 3)


def test_preprocess_rejects_non_rgb():
    with pytest.raises(ValueError, match="uint8 RGB"):
        clip_preprocess(np.zeros((4, 4), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="uint8 RGB"):
        sam_preprocess(np.zeros((4, 4, 3), dtype=np.float32), 8)
