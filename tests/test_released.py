"""Loading released READ / SESAME / LISA checkpoints in their original layout (read.model.released)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from read.batch import ReadBatch
from read.config import SaspConfig, VisionConfig
from read.model.builder import build_read_model
from read.model.released import (
    append_placeholder_row,
    check_state_dict,
    check_tokenizer,
    clip_vision_config,
    clip_vision_weights,
    infer_sam_config,
    key_report,
    load_released,
    map_released_state_dict,
    projector_type_of,
    released_read_config,
)
from read.model.sam import sam_config_for
from read.tokenizer import ReadTokenizer
from released_fixtures import (
    Sizes,
    clip_config,
    expected_target,
    hf_config_dict,
    original_state_dict,
    sizes_7b,
    write_clip_tower,
    write_released_checkpoint,
    write_weights,
)

FAMILIES = ["read", "sesame", "lisa"]
# LISA-7B-v1 used CLIP ViT-L/14 at 224 px: a different tower size here too.
LISA_SIZES = Sizes(clip_image=48)


def _sizes(family: str) -> Sizes:
    return LISA_SIZES if family == "lisa" else Sizes()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """One checkpoint directory + CLIP tower per family (the two CLIP layouts alternate)."""
    out = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(family)
        state = write_released_checkpoint(root / "ckpt", family, _sizes(family), seed=1)
        layout = "vision_model" if family == "sesame" else "clip_model"
        vision = write_clip_tower(root / "clip", _sizes(family), layout=layout, seed=2)
        out[family] = (root, state, vision)
    return out


# ----------------------------------------------------------------------------------------------------------
# pure functions on plain dicts


def test_key_mapping_on_a_plain_dict():
    t = torch.zeros(1)
    original = {
        "model.embed_tokens.weight": t,
        "model.layers.3.self_attn.q_proj.weight": t,
        "model.layers.3.self_attn.rotary_emb.inv_freq": t,
        "model.norm.weight": t,
        "lm_head.weight": t,
        "model.mm_projector.0.weight": t,
        "model.mm_projector.2.bias": t,
        "model.visual_model.mask_decoder.iou_token.weight": t,
        "model.text_hidden_fcs.0.2.weight": t,
        "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": t,
        "model.vision_tower.vision_tower.vision_model.embeddings.position_ids": t,
        "model.something_else.weight": t,
    }
    mapped, sources, unmapped = map_released_state_dict(original)
    assert sources == {
        "llava.model.language_model.embed_tokens.weight": "model.embed_tokens.weight",
        "llava.model.language_model.layers.3.self_attn.q_proj.weight": "model.layers.3.self_attn.q_proj.weight",
        "llava.model.language_model.norm.weight": "model.norm.weight",
        "llava.lm_head.weight": "lm_head.weight",
        "llava.model.multi_modal_projector.linear_1.weight": "model.mm_projector.0.weight",
        "llava.model.multi_modal_projector.linear_2.bias": "model.mm_projector.2.bias",
        "sam.mask_decoder.iou_token.weight": "model.visual_model.mask_decoder.iou_token.weight",
        "seg_projector.2.weight": "model.text_hidden_fcs.0.2.weight",
        "llava.model.vision_tower.encoder.layers.0.mlp.fc1.weight": (
            "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
        ),
    }
    assert set(mapped) == set(sources)
    assert unmapped == ["model.something_else.weight"]


def test_single_linear_projector_mapping_and_detection():
    w, b = torch.randn(4, 3), torch.randn(4)
    mapped, _, unmapped = map_released_state_dict({"model.mm_projector.weight": w, "model.mm_projector.bias": b})
    assert mapped["llava.model.multi_modal_projector.linear.weight"] is w
    assert mapped["llava.model.multi_modal_projector.linear.bias"] is b
    assert unmapped == []
    assert projector_type_of({"model.mm_projector.weight"}, {}) == "linear"
    assert projector_type_of({"model.mm_projector.0.weight"}, {"mm_projector_type": "mlp2x_gelu"}) == "mlp2x_gelu"
    with pytest.raises(ValueError, match="mm_projector_type='mlp2x_gelu', but the weights hold a 'linear'"):
        projector_type_of({"model.mm_projector.weight"}, {"mm_projector_type": "mlp2x_gelu"}, "x/config.json")
    with pytest.raises(ValueError, match="no vision projector"):
        projector_type_of({"model.norm.weight"}, {})


def test_placeholder_row_is_the_mean_and_never_wins_argmax():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 6, generator=g)
    padded = append_placeholder_row(w)
    assert padded.shape == (11, 6) and torch.equal(padded[:10], w)
    assert torch.allclose(padded[10], w.mean(0))
    logits = torch.randn(50, 6, generator=g) @ padded.T  # (50, 11)
    assert bool((logits.argmax(-1) != 10).all())
    bf16 = append_placeholder_row(w.bfloat16())
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16[:10], w.bfloat16())


def test_infer_sam_config_vit_h_and_tiny():
    with torch.device("meta"):
        from read.model.sam import build_sam

        vit_h = build_sam(sam_config_for("vit_h")).state_dict()
        tiny_cfg = Sizes().sam
        tiny = build_sam(tiny_cfg).state_dict()
    assert len(vit_h) == 594
    assert infer_sam_config(vit_h) == sam_config_for("vit_h")
    assert infer_sam_config(tiny) == tiny_cfg
    with pytest.raises(ValueError, match="SAM weights lack 'image_encoder.pos_embed'"):
        infer_sam_config({k: v for k, v in tiny.items() if k != "image_encoder.pos_embed"})


def test_config_translation_7b():
    hf = hf_config_dict("read", sizes_7b())
    cfg = released_read_config(hf, VisionConfig(), sam_config_for("vit_h"), "mlp2x_gelu", dtype=torch.bfloat16)
    t = cfg.model.text
    assert (t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers) == (32000, 4096, 11008, 32)
    assert (t.num_attention_heads, t.num_key_value_heads, t.max_position_embeddings) == (32, 32, 4096)
    assert (t.rms_norm_eps, t.rope_theta) == (1e-5, 10000.0)
    assert (cfg.model.out_dim, cfg.model.projector_type, cfg.model.dtype, cfg.model.init) == (
        256,
        "mlp2x_gelu",
        "bfloat16",
        "released",
    )
    assert cfg.sasp == SaspConfig()  # READ: the 7B SasP settings
    for family in ("sesame", "lisa"):
        hf_other = hf_config_dict(family, sizes_7b())
        other = released_read_config(hf_other, VisionConfig(), sam_config_for("vit_h"), "linear")
        assert other.sasp.enabled is False
    lisa = hf_config_dict("lisa", sizes_7b("lisa"))
    del lisa["num_key_value_heads"]  # a LLaMA-1 era config
    lisa_cfg = released_read_config(lisa, VisionConfig(), sam_config_for("vit_h"), "linear")
    assert lisa_cfg.model.text.num_key_value_heads == 32


@pytest.mark.parametrize(
    "edit,match",
    [
        ({"architectures": ["LlavaLlamaForCausalLM"]}, r"architectures=\['LlavaLlamaForCausalLM'\]"),
        ({"mm_hidden_size": 768}, "mm_hidden_size=768 but the CLIP tower has hidden_size 1024"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling=.* is not supported"),
        ({"out_dim": 128}, "out_dim=128 but SAM's prompt embedding is 256-d"),
        ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature='cls_patch' is not supported"),
        ({"hidden_size": None}, None),
    ],
)
def test_config_translation_errors(edit, match):
    hf = {**hf_config_dict("read", sizes_7b()), **edit}
    if edit.get("hidden_size", 0) is None:
        del hf["hidden_size"]
        match = "x/config.json: missing field 'hidden_size'"
    with pytest.raises(ValueError, match=match):
        released_read_config(hf, VisionConfig(), sam_config_for("vit_h"), "mlp2x_gelu", source="x/config.json")


@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_key_sets_match_the_model(family):
    """The 7B original layout (shapes only) maps onto a 7B ReadModel with nothing missing or extra."""
    s = sizes_7b(family)
    original = original_state_dict(family, s, device="meta")
    mapped, sources, unmapped = map_released_state_dict(original)
    with torch.device("meta"):
        clip = CLIPVisionModel(clip_config(s)).state_dict()
    for key, value in clip.items():
        if key != "embeddings.position_ids":
            mapped["llava.model.vision_tower." + key] = value
    for key in ("llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight"):
        mapped[key] = torch.empty(s.base_vocab + 4, s.hidden, device="meta")
    vision = VisionConfig(image_size=s.clip_image, patch_size=14)
    sam_state = {k[4:]: v for k, v in mapped.items() if k.startswith("sam.")}
    cfg = released_read_config(
        hf_config_dict(family, s),
        vision,
        infer_sam_config(sam_state),
        "linear" if family == "lisa" else "mlp2x_gelu",
        sasp=SaspConfig(enabled=False),
    )
    with torch.device("meta"):
        model = build_read_model(cfg, s.base_vocab + 4, seg_token_id=32000, image_token_id=32003)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    assert check_state_dict(expected, mapped, sources) == ([], [], [])
    assert unmapped == []
    assert sum(k.startswith("sam.") for k in mapped) == 594
    # LLaMA 32 x 9 + 3, projector 4 (2 for LISA's Linear), SAM 594, head 4; plus one inv_freq buffer per layer
    assert len(original) == 291 + (2 if family == "lisa" else 4) + 594 + 4 + s.layers
    assert len(mapped) == len(original) - s.layers + len(clip)


def test_key_report_groups_by_prefix():
    keys = [f"llava.model.language_model.layers.{i}.mlp.up_proj.weight" for i in range(5)] + ["sam.x.y"]
    report = key_report("missing key(s)", keys, show=2)
    assert report.splitlines()[0] == "6 missing key(s):"
    assert "llava.model.language_model.layers: 5 -- " in report and "(+3)" in report
    assert "sam.x.y: 1 -- sam.x.y" in report


def test_tokenizer_check(tiny_tokenizer):
    check_tokenizer(tiny_tokenizer, 1003, "ckpt")
    expected = r"does not match the checkpoint's 1004 embedding rows; expected \{'\[SEG\]': 1001"
    with pytest.raises(ValueError, match=expected):
        check_tokenizer(tiny_tokenizer, 1004, "ckpt")


def test_clip_tower_layouts_give_the_same_tensors(tmp_path):
    a = write_clip_tower(tmp_path / "a", layout="clip_model", seed=3)
    b = write_clip_tower(tmp_path / "b", layout="vision_model", seed=3)
    # the OpenAI layout stores vision keys under "vision_model."; transformers 5 saves them without it
    raw = torch.load(tmp_path / "a" / "pytorch_model.bin", weights_only=True)
    prefixes = ("vision_model.", "text_model.", "visual_projection", "text_projection", "logit_scale")
    assert all(k.startswith(prefixes) for k in raw) and "vision_model.embeddings.position_ids" in raw
    from safetensors.torch import load_file

    assert not any(k.startswith("vision_model.") for k in load_file(tmp_path / "b" / "model.safetensors"))
    for directory, written in ((tmp_path / "a", a), (tmp_path / "b", b)):
        loaded = clip_vision_weights(directory)
        assert set(loaded) == set(written) - {"embeddings.position_ids"}
        assert all(torch.equal(loaded[k], written[k]) for k in loaded)
        assert clip_vision_config(directory, -2) == VisionConfig(
            image_size=32, patch_size=8, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, feature_layer=-2,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# end to end on tiny checkpoints


def _prompt_batch(tokenizer: ReadTokenizer, cfg, sizes=((40, 50),)) -> ReadBatch:
    n = cfg.model.vision.num_patches
    ids = (
        [tokenizer.bos_token_id]
        + tokenizer.encode("A chat. USER:", add_bos=False)
        + [tokenizer.im_start_token_id] + [tokenizer.image_token_id] * n + [tokenizer.im_end_token_id]
        + tokenizer.encode("Can you segment the cat in this image? ASSISTANT: Sure, it is", add_bos=False)
        + [tokenizer.seg_token_id] + tokenizer.encode(".", add_bos=False) + [tokenizer.eos_token_id]
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    s_clip, s_sam = cfg.model.vision.image_size, cfg.model.sam.image_size
    h, w = sizes[0]
    scale = s_sam / max(h, w)
    return ReadBatch(
        pixel_values=torch.randn(1, 3, s_clip, s_clip, generator=g),
        sam_images=torch.randn(1, 3, s_sam, s_sam, generator=g),
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        image_index=torch.tensor([0]),
        original_sizes=[sizes[0]],
        resized_sizes=[(int(h * scale + 0.5), int(w * scale + 0.5))],
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_lands_in_place(released, family):
    root, state, vision = released[family]
    model, tokenizer, cfg = load_released(root / "ckpt", root / "clip")
    own = model.state_dict()
    base = _sizes(family).base_vocab
    checked = set()
    for key, value in state.items():
        target = expected_target(key)
        if target is None:
            continue
        got = own[target]
        if target.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert got.shape[0] == base + 4
            assert torch.equal(got[-1], value.float().mean(0).to(value.dtype).float()), target  # mean row
            got = got[:-1]
        assert got.dtype == torch.float32 and torch.equal(got, value.float()), f"{key} -> {target}"
        checked.add(target)
    for key, value in vision.items():
        if key != "embeddings.position_ids":
            assert torch.equal(own["llava.model.vision_tower." + key], value), key
            checked.add("llava.model.vision_tower." + key)
    assert checked == set(own)  # every parameter and persistent buffer came from the files
    # spot checks through the module tree
    lm = model.llava.model.language_model
    assert torch.equal(lm.layers[1].mlp.down_proj.weight, state["model.layers.1.mlp.down_proj.weight"].float())
    assert torch.equal(model.seg_projector[2].bias, state["model.text_hidden_fcs.0.2.bias"].float())
    iou_token = state["model.visual_model.mask_decoder.iou_token.weight"].float()
    assert torch.equal(model.sam.mask_decoder.iou_token.weight, iou_token)
    # vocabulary and config
    ids = (tokenizer.seg_token_id, tokenizer.im_start_token_id, tokenizer.im_end_token_id, tokenizer.image_token_id)
    assert ids == (base, base + 1, base + 2, base + 3)
    assert (model.seg_token_id, model.image_token_id, len(tokenizer)) == (base, base + 3, base + 4)
    assert cfg.model.projector_type == ("linear" if family == "lisa" else "mlp2x_gelu")
    assert cfg.model.sam == Sizes().sam and cfg.model.sam.variant == "custom"
    assert cfg.model.vision.image_size == _sizes(family).clip_image
    assert cfg.sasp.enabled is (family == "read")
    assert (cfg.model.init_path, cfg.model.vision_tower_path) == (str(root / "ckpt"), str(root / "clip"))
    assert not model.training


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_pass_and_vision_path(released, family):
    root, state, _ = released[family]
    sasp = SaspConfig(num_points=4) if family == "read" else None
    model, tokenizer, cfg = load_released(root / "ckpt", root / "clip", sasp=sasp)
    batch = _prompt_batch(tokenizer, cfg)
    with torch.no_grad():
        out = model(batch)
        feats = model.encode_images(batch.pixel_values)
    assert out.logits.shape == (1, batch.input_ids.shape[1], len(tokenizer))
    assert [tuple(m.shape) for m in out.pred_masks] == [(1, 40, 50)]
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.pred_masks[0]).all()
    assert out.point_coords[0].shape == ((1, 4, 2) if family == "read" else (1, 0, 2))
    # CLIP layer -2 without CLS, through the projector written in the checkpoint, computed independently
    clip = CLIPVisionModel.from_pretrained(root / "clip", local_files_only=True).eval()
    with torch.no_grad():
        x = clip(batch.pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
    w = {k: v.float() for k, v in state.items() if k.startswith("model.mm_projector")}
    if family == "lisa":
        expected = F.linear(x, w["model.mm_projector.weight"], w["model.mm_projector.bias"])
    else:
        hidden = F.gelu(F.linear(x, w["model.mm_projector.0.weight"], w["model.mm_projector.0.bias"]))
        expected = F.linear(hidden, w["model.mm_projector.2.weight"], w["model.mm_projector.2.bias"])
    assert torch.allclose(feats, expected, atol=1e-5)


def test_skipped_initialisation_keeps_the_computed_buffers(released):
    root, _, _ = released["read"]
    model, tokenizer, cfg = load_released(root / "ckpt", root / "clip", sasp=SaspConfig(enabled=False))
    fresh = build_read_model(
        cfg, len(tokenizer), seg_token_id=tokenizer.seg_token_id, image_token_id=tokenizer.image_token_id
    )
    persistent = set(model.state_dict())
    buffers = {n: b for n, b in model.named_buffers() if n not in persistent}
    assert {"sam.pixel_mean", "llava.model.language_model.rotary_emb.inv_freq"} <= set(buffers)
    fresh_buffers = dict(fresh.named_buffers())
    for name, value in buffers.items():
        assert torch.equal(value, fresh_buffers[name]), name


def test_bfloat16_load(released):
    root, state, _ = released["sesame"]
    model, _, cfg = load_released(root / "ckpt", root / "clip", dtype=torch.bfloat16)
    assert cfg.model.dtype == "bfloat16"
    assert model.llava.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(model.llava.lm_head.weight[:-1], state["lm_head.weight"])  # bit-exact
    assert next(model.sam.prompt_encoder.parameters()).dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32  # restored


def test_safetensors_single_file_and_config_tower_fallback(tmp_path):
    state = write_released_checkpoint(tmp_path / "ckpt", "read", shards=1, fmt="safetensors", vision_tower="../clip")
    write_clip_tower(tmp_path / "clip")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    model, _, cfg = load_released(tmp_path / "ckpt", None, sasp=SaspConfig(enabled=False))
    assert cfg.model.vision_tower_path == str(tmp_path / "ckpt" / "../clip")
    assert torch.equal(model.seg_projector[0].weight, state["model.text_hidden_fcs.0.0.weight"].float())


def test_missing_tower_is_a_clear_error(released, tmp_path):
    root, _, _ = released["read"]
    with pytest.raises(FileNotFoundError, match="pass vision_tower_path.*clip-vit-large-patch14-336"):
        load_released(root / "ckpt", None)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_released(root / "ckpt", tmp_path / "nowhere")


def _copy_with(root, tmp_path, edit):
    """Copy a checkpoint directory, rewriting its weights through ``edit(state)`` (single .bin file)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    state = {}
    for shard in sorted(ckpt.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
        shard.unlink()
    (ckpt / "pytorch_model.bin.index.json").unlink()
    edit(state)
    write_weights(ckpt, state, shards=1)
    return ckpt


def test_missing_key_is_a_clear_error(released, tmp_path):
    root, _, _ = released["read"]
    ckpt = _copy_with(root, tmp_path, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError) as err:
        load_released(ckpt, root / "clip")
    message = str(err.value)
    assert "1 missing key(s)" in message
    assert "llava.model.language_model.layers: 1 -- llava.model.language_model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected" not in message


def test_unexpected_key_is_a_clear_error(released, tmp_path):
    root, _, _ = released["read"]

    def edit(s):
        s["model.layers.2.mlp.up_proj.weight"] = torch.zeros(64, 32)  # a third layer the config does not have
        s["model.extra_head.weight"] = torch.zeros(3)

    ckpt = _copy_with(root, tmp_path, edit)
    with pytest.raises(ValueError) as err:
        load_released(ckpt, root / "clip")
    message = str(err.value)
    assert "2 unexpected key(s)" in message and "missing" not in message
    assert "llava.model.language_model.layers.2.mlp.up_proj.weight (from model.layers.2.mlp.up_proj.weight)" in message
    assert "model.extra_head.weight" in message


def test_shape_mismatch_and_non_strict_load(released, tmp_path, caplog):
    root, state, _ = released["read"]

    def edit(s):
        s["model.text_hidden_fcs.0.0.bias"] = torch.zeros(31)
        del s["model.norm.weight"]

    ckpt = _copy_with(root, tmp_path, edit)
    expected = r"seg_projector.0.bias \(from model.text_hidden_fcs.0.0.bias\): checkpoint \(31,\) vs model \(32,\)"
    with pytest.raises(ValueError, match=expected):
        load_released(ckpt, root / "clip")
    with caplog.at_level(logging.WARNING, logger="read.model.released"):
        model, _, _ = load_released(ckpt, root / "clip", strict=False, sasp=SaspConfig(enabled=False))
    assert "1 missing key(s)" in caplog.text and "1 shape mismatch" in caplog.text
    assert torch.equal(model.seg_projector[0].weight, state["model.text_hidden_fcs.0.0.weight"].float())
    assert torch.isfinite(model.llava.model.language_model.norm.weight).all()  # initialised, not empty memory


def test_index_listing_an_absent_tensor_is_a_clear_error(released, tmp_path):
    root, _, _ = released["lisa"]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    index = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = "pytorch_model-00001-of-00002.bin"
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lists 1 tensor.*model.layers.0.mlp.extra.weight"):
        load_released(ckpt, root / "clip")
