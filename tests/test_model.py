"""ReadModel on tiny random weights: masks per [SEG], hidden-state positions, gradients, trainable set,
save/load, and learning a toy batch."""

from __future__ import annotations

import pytest
import torch

from model_utils import IMAGE, SEG, VOCAB, make_batch, tiny_config, tiny_model
from read.model import from_pretrained, save_pretrained
from read.model.read_model import is_right_padded, seg_prompt_mask
from read.model.trainable import merge_lora, prepare_for_training, trainable_parameter_names

SASP = pytest.mark.parametrize("sasp", ["true", "false"], ids=["read", "lisa"])


@SASP
def test_one_mask_per_seg_token(sasp):
    cfg = tiny_config(f"sasp.enabled={sasp}")
    model = tiny_model(f"sasp.enabled={sasp}")
    sizes = [(40, 50), (30, 20)]
    batch = make_batch([[11, 12], [SEG, 13], [SEG, 14, SEG, SEG], [15, SEG]], [0, 0, 1, 1], sizes, cfg)
    with torch.no_grad():
        out = model(batch)
    assert [m.shape for m in out.pred_masks] == [(0, 40, 50), (1, 40, 50), (3, 30, 20), (1, 30, 20)]
    assert all(m.dtype == torch.float32 and torch.isfinite(m).all() for m in out.pred_masks)
    p = cfg.sasp.num_points if sasp == "true" else 0
    assert [tuple(c.shape) for c in out.point_coords] == [(0, p, 2), (1, p, 2), (3, p, 2), (1, p, 2)]
    assert out.num_masks == 5
    assert out.logits.shape == (4, batch.input_ids.shape[1], VOCAB)
    assert torch.isfinite(out.loss)


def test_mask_count_mismatch_is_a_clear_error():
    cfg = tiny_config()
    model = tiny_model()
    batch = make_batch([[SEG, 13]], [0], [(40, 50)], cfg)
    batch.gt_masks = [torch.zeros(2, 40, 50, dtype=torch.uint8)]
    with pytest.raises(ValueError, match=r"row 0: 1 \[SEG\] token\(s\) in the input but 2 ground-truth"):
        model(batch)


def test_seg_prompt_mask_marks_the_position_before_seg():
    ids = torch.tensor([[1, 4, SEG, 5, SEG, 2], [1, 4, 5, 6, 2, 0]])
    expected = torch.tensor([[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(seg_prompt_mask(ids, SEG), expected)


@SASP
def test_mask_prompt_is_the_state_that_predicts_seg(sasp):
    """The head must see hidden[q] with ids[q+1] == [SEG]; hidden[q+1] (the [SEG] state) must give a different
    input, so an off-by-one in either direction fails here."""
    cfg = tiny_config(f"sasp.enabled={sasp}")
    model = tiny_model(f"sasp.enabled={sasp}")
    batch = make_batch([[21, SEG, 22], [SEG, 23]], [0, 0], [(40, 50)], cfg, with_targets=False)
    seen = []
    handle = model.seg_projector.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        model(batch)
        feats = model.encode_images(batch.pixel_values)[batch.image_index]
        hidden = model.language_forward(batch.input_ids, batch.attention_mask, feats)
    handle.remove()
    ids = batch.input_ids
    q = [(r, int(c)) for r in range(2) for c in (ids[r] == SEG).nonzero()[:, 0] - 1]
    expected = torch.stack([hidden[r, c] for r, c in q])
    shifted = torch.stack([hidden[r, c + 1] for r, c in q])
    assert torch.allclose(seen[0], expected, atol=1e-6)
    assert not torch.allclose(seen[0], shifted, atol=1e-3)
    assert ids[0, q[0][1]] == 21  # the answer token right before [SEG]


def test_image_tokens_found_by_id_even_when_shifted():
    """Rows with different prompt lengths before the image still pair each row with its own patches."""
    cfg = tiny_config()
    model = tiny_model()
    n = cfg.model.vision.num_patches
    batch = make_batch([[SEG, 2], [SEG, 2]], [0, 0], [(40, 50)], cfg, with_targets=False)
    ids = batch.input_ids.clone()
    # insert two extra prompt tokens before the image in row 1 (drop two padding/last tokens)
    ids[1] = torch.cat([ids[1, :1], torch.tensor([5, 6]), ids[1, 1:-2]])
    batch.input_ids = ids
    with torch.no_grad():
        out = model(batch)
    assert (ids[1] == IMAGE).sum() == n
    assert out.similarity[0].shape == out.similarity[1].shape == (1, n)


def test_lisa_model_returns_the_similarity_map_without_points_or_gradient():
    """Without SasP nothing prompts SAM with the map, but in eval mode the [SEG] state's map is there, computed as READ
    does; training does not compute it."""
    cfg = tiny_config()
    read_model = tiny_model().eval()
    lisa = tiny_model("sasp.enabled=false").eval()
    lisa.load_state_dict(read_model.state_dict())
    batch = make_batch([[SEG, 2], [7, SEG, 2]], [0, 0], [(40, 50)], cfg, with_targets=False)
    out_lisa, out_read = lisa(batch), read_model(batch)
    n = cfg.model.vision.num_patches
    for r in range(2):
        assert out_lisa.point_coords[r].shape == (1, 0, 2) and out_lisa.similarity[r].shape == (1, n)
        assert not out_lisa.similarity[r].requires_grad
        torch.testing.assert_close(out_lisa.similarity[r], out_read.similarity[r].detach())
    out_train = lisa.train()(batch)
    assert all(out_train.similarity[r].shape == (1, 0) for r in range(2))


def test_wrong_number_of_image_tokens_is_a_clear_error():
    cfg = tiny_config()
    model = tiny_model()
    batch = make_batch([[SEG, 2]], [0], [(40, 50)], cfg, with_targets=False)
    batch.input_ids[0, 5] = 7  # drop one image placeholder
    with pytest.raises(ValueError, match="image tokens and image features do not match"):
        model(batch)


def test_trainable_set_is_exact():
    cfg = tiny_config()
    model = tiny_model()
    names = set(prepare_for_training(model, cfg))
    layers = cfg.model.text.num_hidden_layers
    lora = {
        f"llava.model.language_model.layers.{i}.self_attn.{proj}.lora_{ab}.default.weight"
        for i in range(layers)
        for proj in ("q_proj", "v_proj")
        for ab in ("A", "B")
    }
    decoder = {f"sam.mask_decoder.{n}" for n, _ in model.sam.mask_decoder.named_parameters()}
    head = {"seg_projector.0.weight", "seg_projector.0.bias", "seg_projector.2.weight", "seg_projector.2.bias"}
    embeddings = {"llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight"}
    assert names == lora | decoder | head | embeddings
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in names)
    assert not any(n.startswith(("sam.image_encoder", "sam.prompt_encoder")) for n in names)


def test_train_extra_adds_exactly_the_named_groups():
    cfg = tiny_config("lora.enabled=false", "model.train_extra=[vision_tower,projector,lm_layers,sam_image_encoder]")
    model = tiny_model()
    names = set(prepare_for_training(model, cfg))
    groups = {
        "llava.model.vision_tower.", "llava.model.multi_modal_projector.", "llava.model.language_model.layers.",
        "sam.image_encoder.", "sam.mask_decoder.", "seg_projector.",
    }  # fmt: skip
    want = {n for n, _ in model.named_parameters() if n.startswith(tuple(groups))}
    want |= {"llava.model.language_model.embed_tokens.weight", "llava.lm_head.weight"}
    assert names == want
    assert "llava.model.language_model.norm.weight" not in names
    assert not any(n.startswith("sam.prompt_encoder") or ".lora_" in n for n in names)
    # frozen-encoder shortcuts are off once the encoders train: their gradients arrive
    batch = make_batch([[SEG, 2]], [0], [(40, 50)], cfg)
    model(batch).loss.backward()
    for prefix in ("llava.model.vision_tower.", "sam.image_encoder.", "llava.model.language_model.layers."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        # (CLIP's last layer and post-norm get none: the projector reads layer -2, as in LLaVA)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    with pytest.raises(ValueError, match="model.train_extra: unknown group"):
        tiny_config("model.train_extra=[lm_head_typo]")


@SASP
def test_gradients_reach_exactly_the_trainable_parts(sasp):
    cfg = tiny_config(f"sasp.enabled={sasp}")
    model = tiny_model(f"sasp.enabled={sasp}")
    prepare_for_training(model, cfg)
    for n, p in model.named_parameters():
        if ".lora_B." in n:  # LoRA B starts at zero: give it a value so gradients reach A too
            torch.nn.init.normal_(p, std=0.02)
    batch = make_batch([[SEG, 13], [14, SEG]], [0, 0], [(40, 50)], cfg)
    model(batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    nonzero = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    assert "seg_projector.0.weight" in nonzero and "seg_projector.2.weight" in nonzero
    assert any(n.startswith("sam.mask_decoder.") for n in nonzero)
    assert any(".lora_A." in n for n in nonzero) and any(".lora_B." in n for n in nonzero)
    emb = grads["llava.model.language_model.embed_tokens.weight"]
    lm_head = grads["llava.lm_head.weight"]
    assert lm_head[SEG].abs().sum() > 0  # the new token's output row learns to emit [SEG]
    assert emb[SEG].abs().sum() > 0  # and its input row is used by the following positions
    for n, p in model.named_parameters():
        if n.startswith(
            ("llava.model.vision_tower", "llava.model.multi_modal_projector", "sam.image_encoder", "sam.prompt_encoder")
        ):
            assert p.grad is None, n


def test_sasp_gradient_flows_into_the_hidden_states():
    """With the head and the [SEG] embedding cut off, the mask loss still reaches LoRA through SasP's points."""
    cfg = tiny_config("loss.ce_weight=0")
    model = tiny_model("loss.ce_weight=0")
    prepare_for_training(model, cfg)
    for n, p in model.named_parameters():
        if ".lora_B." in n:
            torch.nn.init.normal_(p, std=0.02)
    batch = make_batch([[SEG, 13]], [0], [(40, 50)], cfg)
    model.seg_projector.register_forward_hook(lambda module, inp, out: out.detach())
    model(batch).loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if ".lora_A." in n]
    assert all(g is not None for g in lora_grads)
    assert sum(float(g.abs().sum()) for g in lora_grads) > 0


@SASP
def test_save_and_load_round_trip(tmp_path, sasp):
    cfg = tiny_config(f"sasp.enabled={sasp}", "sasp.num_points=3")
    model = tiny_model(f"sasp.enabled={sasp}", "sasp.num_points=3")
    prepare_for_training(model, cfg)
    for n, p in model.named_parameters():
        if ".lora_B." in n:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    batch = make_batch([[SEG, 13], [14, SEG, SEG]], [0, 1], [(40, 50), (33, 21)], cfg, with_targets=False)
    with torch.no_grad():
        before = model(batch)
    assert merge_lora(model) == 2 * cfg.model.text.num_hidden_layers
    with torch.no_grad():
        merged = model(batch)
    torch.testing.assert_close(merged.logits, before.logits, atol=1e-5, rtol=1e-5)
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m").eval()
    assert loaded.config.sasp == model.config.sasp and loaded.config.lora == model.config.lora
    with torch.no_grad():
        after = loaded(batch)
    torch.testing.assert_close(after.logits, merged.logits, atol=0, rtol=0)
    for a, b in zip(after.pred_masks, merged.pred_masks):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for a, b in zip(after.point_coords, merged.point_coords):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_save_refuses_unmerged_lora(tmp_path):
    cfg = tiny_config()
    model = tiny_model()
    prepare_for_training(model, cfg)
    with pytest.raises(ValueError, match="merge them"):
        save_pretrained(model, tmp_path / "m")


@SASP
def test_toy_batch_loss_falls(sasp):
    cfg = tiny_config(f"sasp.enabled={sasp}")
    model = tiny_model(f"sasp.enabled={sasp}", seed=1)
    prepare_for_training(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    batch = make_batch([[21, SEG, 22], [SEG, 23]], [0, 1], [(40, 50), (32, 32)], cfg, seed=3)
    losses = []
    for _ in range(50):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_bf16_autocast_runs_with_fp32_prompt_encoder():
    cfg = tiny_config()
    model = tiny_model()
    batch = make_batch([[SEG, 13]], [0], [(40, 50)], cfg)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert out.pred_masks[0].dtype == torch.float32
    assert torch.isfinite(out.loss)


def test_trainable_names_helper_matches_requires_grad():
    model = tiny_model()
    for p in model.parameters():
        p.requires_grad_(False)
    model.seg_projector[0].weight.requires_grad_(True)
    assert trainable_parameter_names(model) == ["seg_projector.0.weight"]


def _greedy_without_cache(model, batch, steps, eos=2):
    """Slow literal greedy decoding: a full forward over the whole sequence for every new token."""
    ids, att = batch.input_ids, batch.attention_mask
    feats = model.encode_images(batch.pixel_values)[batch.image_index]
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    out = []
    for _ in range(steps):
        hidden = model.language_forward(ids, att, feats)
        nxt = model.llava.lm_head(hidden[:, -1]).argmax(-1)
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        out.append(nxt)
        att = torch.cat([att, (~done).long()[:, None]], 1)
        done = done | (nxt == eos)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return torch.stack(out, 1)


@SASP
def test_generate_matches_uncached_greedy_and_returns_one_mask_per_generated_seg(sasp):
    cfg = tiny_config(f"sasp.enabled={sasp}")
    model = tiny_model(f"sasp.enabled={sasp}", seed=2).eval()
    # every step emits [SEG] or EOS (sign of v.h), so the answer is a run of [SEG] tokens then EOS
    head = model.llava.lm_head.weight.data
    v = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(0))
    head.zero_()
    head[SEG], head[2] = v, -v
    batch = make_batch([[], [30, 31]], [0, 1], [(40, 50), (25, 30)], cfg, with_targets=False)
    # left-pad: move padding of the shorter row to the front
    ids, att = batch.input_ids.clone(), batch.attention_mask.clone()
    for r in range(ids.shape[0]):
        n = int(att[r].sum())
        ids[r] = torch.cat([ids[r, n:], ids[r, :n]])
        att[r] = torch.cat([att[r, n:], att[r, :n]])
    # drop the trailing EOS so the prompts end open
    batch.input_ids, batch.attention_mask = ids[:, :-1], att[:, :-1]
    with torch.no_grad():
        new_tokens, out = model.generate(batch, max_new_tokens=6)
        slow = _greedy_without_cache(model, batch, steps=new_tokens.shape[1])
    assert torch.equal(new_tokens, slow)
    seg_counts = [(new_tokens[r] == SEG).sum().item() for r in range(2)]
    assert sum(seg_counts) > 0
    assert [m.shape[0] for m in out.pred_masks] == seg_counts
    assert out.pred_masks[1].shape[1:] == (25, 30)


def test_bf16_cast_keeps_rope_frequencies_and_prompt_encoder_in_fp32():
    from read.model.builder import cast_model

    model = tiny_model()
    ref = {n: b.clone() for n, b in model.named_buffers() if n.endswith("inv_freq")}
    assert ref
    cast_model(model, "bfloat16")
    assert model.llava.lm_head.weight.dtype == torch.bfloat16
    for n, b in model.named_buffers():
        if n in ref:
            assert b.dtype == torch.float32 and torch.equal(b, ref[n]), n
    assert all(p.dtype == torch.float32 for p in model.sam.prompt_encoder.parameters())


def test_is_right_padded():
    assert is_right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert is_right_padded(torch.ones(1, 4, dtype=torch.bool))
    assert not is_right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))  # left padding (generation)
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))


@SASP
def test_right_padded_batches_skip_the_padding_mask_with_the_same_result(sasp, monkeypatch):
    """Right padding under a causal mask: the literal path (the padding mask passed to the LM) and the fast one
    (no padding mask) agree on every real token's logits and on every mask."""
    import read.model.read_model as rm

    cfg = tiny_config(f"sasp.enabled={sasp}")
    model = tiny_model(f"sasp.enabled={sasp}").eval()
    batch = make_batch([[SEG, 13], [21, 22, 23, 24, SEG, 25, 26], [SEG]], [0, 1, 1], [(40, 50), (30, 20)], cfg)
    assert is_right_padded(batch.attention_mask) and not bool(batch.attention_mask.all())
    seen = []
    hook = model.llava.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
    )
    with torch.no_grad():
        fast = model(batch)
        monkeypatch.setattr(rm, "is_right_padded", lambda mask: False)
        literal = model(batch)
    hook.remove()
    assert seen[0] is None and seen[1] is batch.attention_mask
    real = batch.attention_mask.bool()
    torch.testing.assert_close(fast.logits[real], literal.logits[real], atol=1e-6, rtol=1e-5)
    for a, b in zip(fast.pred_masks, literal.pred_masks):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.loss, literal.loss, atol=1e-6, rtol=1e-5)


def test_left_padded_rows_keep_the_padding_mask():
    cfg = tiny_config()
    model = tiny_model().eval()
    batch = make_batch([[SEG, 13], [21, 22, 23, SEG]], [0, 0], [(40, 50)], cfg, with_targets=False)
    shift = int((batch.attention_mask[0] == 0).sum())  # move row 0's padding to its front
    batch.input_ids[0] = batch.input_ids[0].roll(shift)
    batch.attention_mask[0] = batch.attention_mask[0].roll(shift)
    seen = []
    hook = model.llava.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
    )
    with torch.no_grad():
        model(batch)
    hook.remove()
    assert seen[0] is batch.attention_mask


def test_return_logits_false_skips_only_the_lm_head():
    cfg = tiny_config()
    model = tiny_model().eval()
    batch = make_batch([[SEG, 13], [21, SEG]], [0, 0], [(40, 50)], cfg, with_targets=False)
    with torch.no_grad():
        full = model(batch)
        lean = model(batch, return_logits=False)
        trained = model(make_batch([[SEG, 13]], [0], [(40, 50)], cfg), return_logits=False)
    assert full.logits.shape == (2, batch.input_ids.shape[1], VOCAB) and lean.logits is None
    for a, b in zip(full.pred_masks, lean.pred_masks):
        assert torch.equal(a, b)
    assert trained.logits is not None and trained.ce_loss is not None  # labels need the logits
