"""Memory levers and the analytic estimate: gradient checkpointing, bf16 autocast, training only the new token
rows, parameter counts (formula == built model, and the counts stated for the reference), saved-activation bytes
per layer, and the scale benchmark's synthetic inputs."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from model_utils import BASE_VOCAB, IM_END, IM_START, IMAGE, ROOT, SEG, VOCAB, make_batch, tiny_config, tiny_model
from read.config import load_config
from read.model import build_read_model, from_pretrained, save_pretrained
from read.model.trainable import GROUPS, NewTokenRows, merge_lora, prepare_for_training
from read.tools.memory import (
    StepShape,
    count_parameters,
    count_trainable,
    estimate_memory,
    lm_layer_activation_bytes,
    lora_params,
    measured_parameter_counts,
    optimizer_bytes,
    sam_mask_decoder_params,
    sam_prompt_encoder_buffers,
    sam_prompt_encoder_params,
    seg_projector_params,
)

sys.path.insert(0, str(ROOT / "scripts"))
import bench_scale  # noqa: E402

NEW_ROWS = ("lora.train_embeddings=new_rows", f"model.text.vocab_size={BASE_VOCAB}")
NEW_IDS = [SEG, IM_START, IM_END, IMAGE]
LLAMA_13B = [
    "model.text.hidden_size=5120",
    "model.text.intermediate_size=13824",
    "model.text.num_hidden_layers=40",
    "model.text.num_attention_heads=40",
    "model.text.num_key_value_heads=40",
]


def _nonzero_lora_b(model, seed: int = 0) -> None:
    """LoRA B starts at zero; give it values so that gradients reach A and outputs depend on the adapters."""
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if ".lora_B." in n:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _batch(cfg, seed: int = 3):
    return make_batch([[21, SEG, 22], [SEG, 23]], [0, 1], [(40, 50), (32, 32)], cfg, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# gradient checkpointing


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = {}
    for ckpt in ("false", "true"):
        overrides = (f"model.gradient_checkpointing={ckpt}",)
        cfg = tiny_config(*overrides)
        model = tiny_model(*overrides, seed=5)
        prepare_for_training(model, cfg)
        _nonzero_lora_b(model)
        model.train()
        calls = []
        model.llava.model.language_model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        out = model(_batch(cfg))
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results[ckpt] = (out.loss.detach(), grads, len(calls))
    (loss0, grads0, calls0), (loss1, grads1, calls1) = results["false"], results["true"]
    assert (calls0, calls1) == (1, 2)  # checkpointing really recomputes the layer during backward
    torch.testing.assert_close(loss1, loss0, atol=0, rtol=0)
    assert grads1.keys() == grads0.keys() and any(".lora_A." in n for n in grads0)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-7, rtol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------
# bf16


@pytest.mark.parametrize("sasp", ["true", "false"], ids=["read", "lisa"])
def test_bf16_autocast_matches_fp32_within_tolerance(sasp):
    """Tolerances: loss 1e-3 relative, LM logits 2e-2 absolute, mask logits 5% of the fp32 logit range (observed:
    <= 4e-5, 3e-3 and 2%); SasP runs in fp32, so the point labels are identical."""
    cfg = tiny_config(f"sasp.enabled={sasp}")
    model = tiny_model(f"sasp.enabled={sasp}", seed=1).eval()
    batch = _batch(cfg, seed=1)
    with torch.no_grad():
        ref = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(batch)
    assert not torch.equal(low.logits.float(), ref.logits)  # autocast really ran in bf16
    assert abs(float(low.loss) - float(ref.loss)) <= 1e-3 * float(ref.loss)
    torch.testing.assert_close(low.logits.float(), ref.logits, atol=2e-2, rtol=0)
    for lo, hi, lab_lo, lab_hi in zip(low.pred_masks, ref.pred_masks, low.point_labels, ref.point_labels):
        assert lo.dtype == torch.float32
        torch.testing.assert_close(lo, hi, atol=0.05 * float(hi.abs().max()), rtol=0)
        assert torch.equal(lab_lo, lab_hi)


# ----------------------------------------------------------------------------------------------------------
# lora.train_embeddings = "new_rows"


def test_new_rows_trainable_set_and_identity_at_start():
    cfg = tiny_config(*NEW_ROWS)
    plain = tiny_model(*NEW_ROWS, seed=2).eval()
    model = tiny_model(*NEW_ROWS, seed=2).eval()
    names = set(prepare_for_training(model, cfg))
    lm = model.llava.model.language_model
    assert isinstance(lm.embed_tokens, NewTokenRows) and isinstance(model.llava.lm_head, NewTokenRows)
    assert lm.embed_tokens.token_ids.tolist() == NEW_IDS
    rows = {"llava.model.language_model.embed_tokens.rows", "llava.lm_head.rows"}
    assert rows <= names and not any(n.endswith("base_layer.weight") for n in names)
    assert {n for n in names if "embed_tokens" in n or "lm_head" in n} == rows
    batch = _batch(cfg)
    with torch.no_grad():  # LoRA B is zero and the rows are copies: same outputs
        a, b = plain(batch), model(batch)
    # the n_new logit columns come from a separate (n_new, H) matmul: equal up to float rounding
    torch.testing.assert_close(b.logits, a.logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-6, rtol=1e-6)


def test_new_rows_gradients_equal_the_full_matrix_rows():
    grads = {}
    for mode in ("full", "new_rows"):
        overrides = (f"lora.train_embeddings={mode}", f"model.text.vocab_size={BASE_VOCAB}")
        cfg = tiny_config(*overrides)
        model = tiny_model(*overrides, seed=4)
        prepare_for_training(model, cfg)
        _nonzero_lora_b(model)
        model(_batch(cfg)).loss.backward()
        grads[mode] = dict(model.named_parameters())
    full, new = grads["full"], grads["new_rows"]
    for full_name, row_name in [
        ("llava.model.language_model.embed_tokens.weight", "llava.model.language_model.embed_tokens.rows"),
        ("llava.lm_head.weight", "llava.lm_head.rows"),
    ]:
        torch.testing.assert_close(new[row_name].grad, full[full_name].grad[NEW_IDS], atol=1e-7, rtol=1e-6)
    lora = [n for n in full if ".lora_A." in n]
    for n in lora:
        torch.testing.assert_close(new[n].grad, full[n].grad, atol=1e-7, rtol=1e-6)


def test_new_rows_step_changes_only_the_new_rows_with_small_optimizer_state():
    cfg = tiny_config(*NEW_ROWS)
    model = tiny_model(*NEW_ROWS, seed=6)
    prepare_for_training(model, cfg)
    lm = model.llava.model.language_model
    emb_before = lm.embed_tokens.base_layer.weight.detach().clone()
    head_before = model.llava.lm_head.base_layer.weight.detach().clone()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model(_batch(cfg)).loss.backward()
    opt.step()

    hidden = cfg.model.text.hidden_size
    for module in (lm.embed_tokens, model.llava.lm_head):
        state = opt.state[module.rows]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (len(NEW_IDS), hidden)
    moments = sum(t.numel() for s in opt.state.values() for k, t in s.items() if k != "step")
    assert moments == 2 * sum(p.numel() for p in opt.state)  # (parameters that got a gradient)
    assert not any(t.shape[0] == VOCAB for s in opt.state.values() for t in s.values() if t.dim() == 2)

    merge_lora(model)
    emb, head = lm.embed_tokens.weight, model.llava.lm_head.weight
    assert isinstance(lm.embed_tokens, torch.nn.Embedding) and isinstance(model.llava.lm_head, torch.nn.Linear)
    assert torch.equal(emb[:BASE_VOCAB], emb_before[:BASE_VOCAB])
    assert torch.equal(head[:BASE_VOCAB], head_before[:BASE_VOCAB])
    changed_emb = [i for i in NEW_IDS if not torch.equal(emb[i], emb_before[i])]
    changed_head = [i for i in NEW_IDS if not torch.equal(head[i], head_before[i])]
    # the <image> input row is never read (image features replace it), and its output column is no class of the
    # LM (text_only_logits): neither row gets a gradient
    assert changed_emb == [SEG, IM_START, IM_END]
    assert changed_head == [SEG, IM_START, IM_END]


def test_new_rows_merge_equals_the_spliced_forward_and_saves_the_standard_layout(tmp_path):
    overrides = (*NEW_ROWS, "lora.enabled=false")
    cfg = tiny_config(*overrides)
    model = tiny_model(*overrides, seed=7)
    prepare_for_training(model, cfg)
    with torch.no_grad():
        for module in (model.llava.model.language_model.embed_tokens, model.llava.lm_head):
            module.rows.add_(torch.randn(module.rows.shape, generator=torch.Generator().manual_seed(0)))
    model.eval()
    batch = _batch(cfg)
    with torch.no_grad():
        spliced = model(batch)
    with pytest.raises(ValueError, match="merge"):
        save_pretrained(model, tmp_path / "unmerged")
    assert merge_lora(model) == 2
    with torch.no_grad():
        merged = model(batch)
    torch.testing.assert_close(merged.logits, spliced.logits, atol=1e-5, rtol=1e-5)  # one matmul instead of two
    torch.testing.assert_close(merged.logits[..., NEW_IDS], spliced.logits[..., NEW_IDS], atol=1e-5, rtol=1e-5)
    for a, b in zip(merged.pred_masks, spliced.pred_masks):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    save_pretrained(model, tmp_path / "m")
    fresh = tiny_model(*overrides)
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == set(fresh.state_dict())
    with torch.no_grad():
        loaded = from_pretrained(tmp_path / "m").eval()(batch)
    torch.testing.assert_close(loaded.logits, merged.logits, atol=0, rtol=0)


def test_new_rows_without_added_tokens_is_a_clear_error():
    cfg = tiny_config("lora.train_embeddings=new_rows")  # model.text.vocab_size = 32000 > 104 rows
    model = tiny_model("lora.train_embeddings=new_rows")
    with pytest.raises(ValueError, match="model.text.vocab_size=32000"):
        prepare_for_training(model, cfg)


# ----------------------------------------------------------------------------------------------------------
# parameter counts


@pytest.mark.parametrize("mode", ["full", "new_rows", "none"])
@pytest.mark.parametrize("lora", ["true", "false"])
def test_parameter_counts_equal_the_built_tiny_model(mode, lora):
    overrides = (f"lora.train_embeddings={mode}", f"lora.enabled={lora}", f"model.text.vocab_size={BASE_VOCAB}")
    cfg = tiny_config(*overrides)
    model = tiny_model(*overrides)
    assert measured_parameter_counts(model) == count_parameters(cfg, VOCAB, with_adapters=False)
    prepare_for_training(model, cfg)
    built = measured_parameter_counts(model)
    assert built == count_parameters(cfg, VOCAB)
    assert sum(measured_parameter_counts(model, trainable_only=True).values()) == count_trainable(cfg, VOCAB)
    assert (built["lora"] > 0) == (lora == "true") and (built["new_rows"] > 0) == (mode == "new_rows")


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("configs/bench_mid_cpu.yaml", ["lora.train_embeddings=new_rows"]),
        ("configs/bench_mid_cpu.yaml", ["model.projector_type=linear", "lora.target_modules=q_proj,k_proj,down_proj"]),
        (None, ["lora.r=64"]),  # READ-7B: LLaVA-1.5-7B + SAM ViT-H
    ],
    ids=["mid", "mid-variants", "7b"],
)
def test_parameter_counts_equal_the_model_built_on_the_meta_device(config, overrides):
    cfg = load_config(ROOT / config if config else None, overrides)
    with torch.device("meta"):
        model = build_read_model(cfg, 32004, seg_token_id=32000, image_token_id=32003)
    prepare_for_training(model, cfg)
    assert measured_parameter_counts(model) == count_parameters(cfg, 32004)
    assert sum(measured_parameter_counts(model, trainable_only=True).values()) == count_trainable(cfg, 32004)


def test_formulas_reproduce_the_spec_counts():
    cfg7 = load_config(None, [])
    cfg13 = load_config(None, LLAMA_13B)
    assert seg_projector_params(cfg7.model) == 17_830_144
    assert seg_projector_params(cfg13.model) == 27_530_496
    assert sam_mask_decoder_params(cfg7.model.sam) == 4_058_340
    # The reference's stated 6,476 includes the (2, 128) positional-encoding buffer; the parameters alone are 6,220
    assert sam_prompt_encoder_params(cfg7.model.sam) == 6_220
    assert sam_prompt_encoder_params(cfg7.model.sam) + sam_prompt_encoder_buffers(cfg7.model.sam) == 6_476
    assert lora_params(load_config(None, ["lora.r=8"])) == 4_194_304
    assert lora_params(load_config(None, ["lora.r=64"])) == 33_554_432
    assert lora_params(load_config(None, [*LLAMA_13B, "lora.r=64"])) == 52_428_800
    # SAM ViT-H as a whole (sam_vit_h_4b8939.pth): 641,090,608
    c7 = count_parameters(cfg7, 32004)
    assert c7["sam_image_encoder"] + c7["sam_prompt_encoder"] + c7["sam_mask_decoder"] == 641_090_608
    # LLaMA-2 7B / 13B at the 32000-token vocabulary: 6,738,415,616 and 13,015,864,320 parameters
    for cfg, total in ((cfg7, 6_738_415_616), (cfg13, 13_015_864_320)):
        c = count_parameters(cfg, 32000, with_adapters=False)
        assert c["embed_tokens"] + c["lm_layers"] + c["lm_norm"] + c["lm_head"] == total
    # full embeddings: 2 x 32004 x 4096 trainable; new_rows: 2 x 4 x 4096
    full = count_trainable(load_config(None, ["lora.r=64"]), 32004)
    rows = count_trainable(load_config(None, ["lora.r=64", "lora.train_embeddings=new_rows"]), 32004)
    assert full - rows == 2 * 32004 * 4096 - 2 * 4 * 4096


# ----------------------------------------------------------------------------------------------------------
# memory estimate


@pytest.mark.parametrize(
    "overrides",
    [["lora.dropout=0.05"], ["lora.dropout=0.0"], ["lora.dropout=0.05", "model.attn_implementation=eager"]],
    ids=["sdpa-dropout", "sdpa-nodropout", "eager"],
)
def test_layer_activation_formula_matches_the_tensors_autograd_saves(overrides):
    """Bytes of the distinct storages saved for backward inside one decoder layer (parameters excluded)."""
    overrides = [*overrides, "model.text.hidden_size=128", "model.text.intermediate_size=320", "sasp.enabled=false"]
    cfg = tiny_config(*overrides)
    model = tiny_model(*overrides)
    prepare_for_training(model, cfg)
    model.train()
    batch = make_batch([[21, SEG, 22], [SEG, 23, 24, 25]], [0, 1], [(40, 50), (32, 32)], cfg)
    layer = model.llava.model.language_model.layers[1]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inside, seen, saved = [False], set(), [0]
    layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    layer.register_forward_hook(lambda *_: inside.__setitem__(0, False))

    def pack(t):  # storages first saved inside layer 1 (the RoPE tables are shared with layer 0)
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            saved[0] += storage.nbytes() if inside[0] else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch)
    rows, length = batch.input_ids.shape
    estimate = lm_layer_activation_bytes(cfg, rows * length, length, device="cpu")
    assert abs(estimate - saved[0]) <= 0.01 * saved[0], (estimate, saved[0])


def test_estimate_orders_the_memory_levers():
    """Each lever lowers its own term of the estimate by the amount its formula says."""
    shape = StepShape(batch_size=2, seq_len=700)
    base = ["model.dtype=bfloat16", "lora.r=64"]
    full = estimate_memory(load_config(None, base), 32004, shape)
    ckpt = estimate_memory(load_config(None, [*base, "model.gradient_checkpointing=true"]), 32004, shape)
    rows = estimate_memory(load_config(None, [*base, "lora.train_embeddings=new_rows"]), 32004, shape)
    assert ckpt.activations < full.activations / 5 and ckpt.weights == full.weights
    assert full.trainable - rows.trainable == 2 * 4096 * 32000
    assert full.optimizer - rows.optimizer == 2 * 2 * (2 * 4096 * 32000)  # bf16 moments, plain AdamW
    cfg = load_config(None, base)
    t = full.trainable
    assert optimizer_bytes(cfg, t, optimizer="deepspeed", zero_stage=2, world_size=8) == (
        2 * t + 4 * t // 8,
        12 * t // 8,
    )
    assert optimizer_bytes(cfg, t, optimizer="deepspeed", zero_stage=2, offload_optimizer=True) == (2 * t, 0)
    assert estimate_memory(cfg, 32004, shape, training=False).gradients == 0


# ----------------------------------------------------------------------------------------------------------
# scale benchmark


def test_synthetic_batch_has_the_real_layout():
    cfg = load_config(ROOT / "configs" / "bench_mid_cpu.yaml")
    ids = bench_scale.token_ids(cfg)
    assert (ids.vocab_size, ids.seg, ids.image) == (32004, 32000, 32003)
    batch = bench_scale.synthetic_batch(cfg, ids, 3, 2, torch.Generator().manual_seed(0))
    batch.validate()
    assert batch.pixel_values.shape == (3, 3, 336, 336) and batch.sam_images.shape == (3, 3, 1024, 1024)
    assert batch.image_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert ((batch.input_ids == ids.image).sum(1) == 576).all()
    assert ((batch.input_ids == ids.seg).sum(1) == 1).all()
    prompt = batch.input_ids[:, :-1][batch.labels[:, 1:] == -100]  # not supervised
    text = batch.attention_mask.sum(1) - 576 - (batch.labels != -100).sum(1)
    assert ((text >= 60) & (text <= 120)).all() and prompt.numel() > 0
    assert batch.resized_sizes[0] == (768, 1024) and [m.shape[0] for m in batch.gt_masks] == [1] * 6


def test_bench_runs_and_its_counts_match(tmp_path, capsys):
    result = bench_scale.main(
        [
            "--config",
            str(ROOT / "configs" / "tiny_test.yaml"),
            "--steps",
            "1",
            "--eval_steps",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "r.json"),
            "model.text.vocab_size=100",
            "lora.train_embeddings=new_rows",
        ]
    )
    out = capsys.readouterr().out
    assert result["parameter_mismatch"] == [] and "formula == built model" in out
    assert len(result["train_s_per_step"]) == len(result["eval_s_per_step"]) == 1
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    # on the CPU the peak is the process's RSS high-water mark minus the RSS before the build; inside a long pytest
    # process earlier tests may already have set a higher mark, so only its type is checked here
    assert isinstance(result["train_peak_bytes"], int) and (tmp_path / "r.json").is_file()
    assert set(result["parameters"]) == set(GROUPS)
