"""The one-call inference API and the caching predictor, on a tiny model with the tiny tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_utils import tiny_config
from read.data.transforms import ImageLoadError
from read.inference import ReadPredictor, segment
from read.model import build_read_model


def _model(tokenizer, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config()
    return build_read_model(
        cfg, len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
    ).eval()


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(45, 60, 3), dtype=np.uint8)


def test_segment_returns_one_mask_per_generated_seg(tiny_tokenizer, image):
    model = _model(tiny_tokenizer)
    head = model.llava.lm_head.weight.data
    v = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(1))
    head.zero_()
    head[tiny_tokenizer.seg_token_id], head[tiny_tokenizer.eos_token_id] = v, -v
    pred = segment(model, tiny_tokenizer, image, "Where is the red circle?", max_new_tokens=5)
    n_seg = pred.answer.count("[SEG]")
    assert pred.masks.shape == (n_seg, 45, 60) and pred.masks.dtype == bool
    assert pred.mask_logits.shape == (n_seg, 45, 60)
    assert pred.point_coords.shape == (n_seg, model.config.sasp.num_points, 2)
    assert pred.similarity.shape == (n_seg, model.config.model.vision.num_patches)
    assert pred.found == bool(n_seg > 0 and pred.masks[0].any())


def test_no_seg_generated_gives_no_mask(tiny_tokenizer, image):
    model = _model(tiny_tokenizer)
    head = model.llava.lm_head.weight.data
    head.zero_()  # all logits tie: greedy picks id 0 (<unk>), never [SEG]
    pred = segment(model, tiny_tokenizer, image, "Is there a dog?", max_new_tokens=3)
    assert "[SEG]" not in pred.answer
    assert pred.masks.shape == (0, 45, 60)
    assert pred.found is False


def test_predictor_caches_encoders_and_matches_one_shot(tiny_tokenizer, image):
    model = _model(tiny_tokenizer)
    head = model.llava.lm_head.weight.data
    v = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(1))
    head.zero_()
    head[tiny_tokenizer.seg_token_id], head[tiny_tokenizer.eos_token_id] = v, -v
    predictor = ReadPredictor(model, tiny_tokenizer, max_new_tokens=5)
    predictor.set_image(image)
    calls = {"clip": 0, "sam": 0}
    orig_clip, orig_sam = model.encode_images, model.encode_sam_images

    def count_clip(*a, **k):
        calls["clip"] += 1
        return orig_clip(*a, **k)

    def count_sam(*a, **k):
        calls["sam"] += 1
        return orig_sam(*a, **k)

    model.encode_images, model.encode_sam_images = count_clip, count_sam
    first = predictor.predict("the red circle")
    second = predictor.predict("the blue square")
    assert calls == {"clip": 0, "sam": 0}
    model.encode_images, model.encode_sam_images = orig_clip, orig_sam
    one_shot = segment(model, tiny_tokenizer, image, "the red circle", max_new_tokens=5)
    assert first.answer == one_shot.answer
    np.testing.assert_array_equal(first.masks, one_shot.masks)
    assert second.masks.shape[1:] == (45, 60)


def test_bad_inputs_raise_clear_errors(tiny_tokenizer, image, tmp_path):
    model = _model(tiny_tokenizer)
    predictor = ReadPredictor(model, tiny_tokenizer)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict("hello")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        predictor.set_image(bad)
    with pytest.raises(ImageLoadError, match="missing.png"):
        predictor.set_image(tmp_path / "missing.png")
    predictor.set_image(image)
    with pytest.raises(ValueError, match="query is empty"):
        predictor.predict("   ")
    with pytest.raises(ValueError, match="must not contain"):
        predictor.predict("look at <image> here")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor.set_image(np.zeros((4, 4), dtype=np.uint8))


def test_predictor_keeps_encodings_of_recent_images_and_measures_prompts(tiny_tokenizer, image):
    model = _model(tiny_tokenizer)
    with pytest.raises(ValueError, match="cache_images must be >= 1"):
        ReadPredictor(model, tiny_tokenizer, cache_images=0)
    predictor = ReadPredictor(model, tiny_tokenizer, max_new_tokens=2, cache_images=2)
    other = np.ascontiguousarray(image[::-1])
    calls = []
    encode = model.encode_sam_images
    model.encode_sam_images = lambda *a, **k: calls.append(1) or encode(*a, **k)
    try:
        for array in (image, other, image.copy(), other, image):
            predictor.set_image(array)
    finally:
        model.encode_sam_images = encode
    assert len(calls) == 2
    np.testing.assert_array_equal(predictor.image, image)
    n = model.config.model.vision.num_patches
    short, longer = predictor.prompt_length("the dog"), predictor.prompt_length("the dog on the left of the cat")
    assert longer > short > n
    assert short == predictor._batch("the dog").input_ids.shape[1]
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="no image"):
        predictor.prompt_length("the dog")
