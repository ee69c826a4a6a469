"""read.model.load_model: one loader for saved models and published checkpoints; the LM's classes leave the
<image> placeholder out; saved configs from before sasp.geometry load with the geometry they were trained with."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import chat
from model_utils import IMAGE, VOCAB, make_batch, tiny_config, tiny_model
from read.config import SamConfig
from read.model import ModelLoadError, build_read_model, load_model, save_pretrained
from read.model.builder import CONFIG_NAME
from read.model.dtypes import dtype_name, resolve_dtype
from read.model.losses import causal_lm_loss
from read.model.read_model import text_only_logits
from read.model.released import infer_sam_config
from read.model.sam import build_sam
from released_fixtures import Sizes, write_clip_tower, write_released_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    model = build_read_model(
        tiny_config(), len(tiny_tokenizer), seg_token_id=tiny_tokenizer.seg_token_id,
        image_token_id=tiny_tokenizer.image_token_id,
    )  # fmt: skip
    d = tmp_path_factory.mktemp("saved")
    save_pretrained(model, d, tiny_tokenizer)
    return d


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    out = {}
    for family in ("read", "lisa", "sesame"):
        root = tmp_path_factory.mktemp(family)
        sizes = Sizes(clip_image=224, clip_patch=14) if family == "lisa" else Sizes()
        write_released_checkpoint(root / "ckpt", family, sizes, seed=1)
        write_clip_tower(root / "clip", sizes, seed=2)
        out[family] = root
    return out


# ----------------------------------------------------------------------------------------------------------
# the loader


def test_saved_model_with_overrides_and_dtype(saved):
    model, tokenizer = load_model(saved)
    assert not model.training and model.config.sasp.geometry == "reference"
    assert (model.seg_token_id, model.image_token_id) == (tokenizer.seg_token_id, tokenizer.image_token_id)
    model, _ = load_model(saved, dtype="bf16", sasp_overrides={"num_points": 2, "geometry": "clip"})
    assert next(model.llava.parameters()).dtype == torch.bfloat16 and model.config.model.dtype == "bfloat16"
    assert next(model.sam.prompt_encoder.parameters()).dtype == torch.float32
    assert (model.point_prompter.cfg.num_points, model.point_prompter.cfg.geometry) == (2, "clip")
    model, _ = load_model(saved, sasp_overrides={"enabled": False}, loss_overrides={"dice_weight": 4.0})
    assert model.point_prompter is None and model.config.loss.dice_weight == 4.0


def test_saved_model_errors_are_one_clear_line(saved, tmp_path):
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load_model(tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="has no read_config.json; for an original READ/SESAME/LISA"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="vision_tower is only used with released=True"):
        load_model(saved, vision_tower=tmp_path)
    with pytest.raises(ModelLoadError, match="unknown config key.*num_pts"):
        load_model(saved, sasp_overrides={"num_pts": 3})
    with pytest.raises(ModelLoadError, match="sasp.geometry.*'square'"):
        load_model(saved, sasp_overrides={"geometry": "square"})
    with pytest.raises(ModelLoadError, match="unknown dtype 'int8'"):
        load_model(saved, dtype="int8")
    assert isinstance(ModelLoadError("x"), ValueError)  # the command-line tools print it as one line


def test_read_config_without_geometry_loads_with_the_clip_geometry(saved, tmp_path):
    """A read_config.json written before sasp.geometry existed: that model was trained with the CLIP crop."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(saved, old)
    meta = json.loads((old / CONFIG_NAME).read_text())
    assert meta["config"]["sasp"]["geometry"] == "reference"  # save_pretrained records the geometry
    del meta["config"]["sasp"]["geometry"]
    (old / CONFIG_NAME).write_text(json.dumps(meta))
    model, _ = load_model(old)
    assert model.config.sasp.geometry == "clip" and model.point_prompter.cfg.geometry == "clip"
    model, _ = load_model(old, sasp_overrides={"geometry": "reference"})
    assert model.point_prompter.cfg.geometry == "reference"


@pytest.mark.parametrize("family, enabled", [("read", True), ("sesame", False), ("lisa", False)])
def test_published_checkpoints_sasp_defaults_and_overrides(published, family, enabled):
    root = published[family]
    model, tokenizer = load_model(root / "ckpt", released=True, vision_tower=root / "clip")
    assert (model.point_prompter is not None) is enabled and model.config.model.init == "released"
    assert model.config.sasp.geometry == "reference" and model.config.model.dtype == "float32"
    # an override of another SasP setting never switches SasP on for SESAME / LISA (the chat.py bug)
    model, _ = load_model(root / "ckpt", released=True, vision_tower=root / "clip", sasp_overrides={"num_points": 7})
    assert (model.point_prompter is not None) is enabled and model.config.sasp.num_points == 7
    model, _ = load_model(
        root / "ckpt", released=True, vision_tower=root / "clip", sasp_overrides={"enabled": True}, dtype="bfloat16"
    )
    assert model.point_prompter is not None and next(model.llava.parameters()).dtype == torch.bfloat16


def test_chat_keeps_sasp_off_for_sesame_with_sasp_overrides(published):
    root = published["sesame"]
    args = chat.parse_args(
        ["--model", str(root / "ckpt"), "--released", "--vision_tower", str(root / "clip"), "--device", "cpu",
         "--sasp", "num_points=60", "t_pos=0.6"]
    )  # fmt: skip
    model, _ = chat.load(args)
    assert model.point_prompter is None and (model.config.sasp.num_points, model.config.sasp.t_pos) == (60, 0.6)


def test_one_dtype_table():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32 and dtype_name("fp16") == "float16"
    with pytest.raises(ValueError, match="not supported"):
        resolve_dtype(torch.int8)


# ----------------------------------------------------------------------------------------------------------
# SAM sizes read from the tensors


def test_every_sam_size_the_tensors_show_is_inferred():
    cfg = SamConfig(
        variant="custom", image_size=64, patch_size=16, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=[1], encoder_window_size=2, prompt_embed_dim=32, decoder_depth=2,
        decoder_mlp_dim=64, encoder_mlp_ratio=2.0, mask_in_chans=8, num_multimask_outputs=5, iou_head_depth=2,
        iou_head_hidden_dim=16,
    )  # fmt: skip
    with torch.device("meta"):
        state = build_sam(cfg).state_dict()
    assert state["mask_decoder.iou_prediction_head.layers.0.weight"].shape == (16, 32)
    assert infer_sam_config(state) == cfg
    del state["mask_decoder.iou_prediction_head.layers.0.weight"]
    with pytest.raises(ValueError, match="cannot infer the IoU head width"):
        infer_sam_config(state)


def test_config_json_contradicting_the_tensors_is_named(published, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(published["read"] / "ckpt", ckpt)
    hf = json.loads((ckpt / "config.json").read_text())
    hf["intermediate_size"] = 96
    (ckpt / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match="intermediate_size=96 but the checkpoint's model.layers.0.mlp.gate_proj"):
        load_model(ckpt, released=True, vision_tower=published["read"] / "clip")


# ----------------------------------------------------------------------------------------------------------
# the LM's classes


def test_text_only_logits_masks_the_placeholder_and_what_follows():
    logits = torch.randn(2, 3, 10)
    out = text_only_logits(logits, 7)
    assert torch.equal(out[..., :7], logits[..., :7]) and bool(torch.isneginf(out[..., 7:]).all())


def test_lm_loss_leaves_the_placeholder_out_and_its_row_gets_no_gradient():
    model = tiny_model()
    cfg = model.config
    batch = make_batch([[IMAGE - 3, 20, 2], [21, IMAGE - 3]], [0, 1], [(40, 60), (50, 30)], cfg)
    out = model(batch)
    # literal: cross-entropy over the columns below <image> only
    logits = out.logits[:, :-1, :IMAGE].reshape(-1, IMAGE)
    labels = batch.labels[:, 1:].reshape(-1)
    expected = F.cross_entropy(logits.float(), labels, ignore_index=-100)
    torch.testing.assert_close(out.ce_loss, expected, atol=0, rtol=1e-6)
    over_all = causal_lm_loss(out.logits, batch.labels)  # what counting <image> as a class gives
    assert float(over_all.detach()) > float(out.ce_loss.detach())
    out.loss.backward()
    head = model.llava.lm_head.weight.grad
    assert head.shape[0] == VOCAB and bool((head[IMAGE] == 0).all()) and bool((head[:IMAGE] != 0).any())


def test_generation_never_emits_the_placeholder():
    model = tiny_model()
    with torch.no_grad():  # make <image> the best logit everywhere
        model.llava.lm_head.weight[IMAGE] = model.llava.lm_head.weight[:IMAGE].abs().sum(0) * 100
    cfg = model.config
    batch = make_batch([[5]], [0], [(40, 60)], cfg, with_targets=False)
    tokens, _ = model.generate(batch, max_new_tokens=4)
    assert tokens.shape[1] >= 1 and not bool((tokens == IMAGE).any())
