#!/usr/bin/env python
"""Write tests/goldens/read_reference/: one training step of a toy READ, computed by READ's own code.

READ's original implementation (``model/READ.py`` of the public rui-qian/READ repository, with its vendored LLaVA
and SAM) builds a toy-size READ with random weights, and this script records, for a fixed batch, everything
``tests/test_reference_golden.py`` compares this project against:

* ``checkpoint/``: the model in the published layout (LoRA merged, CLIP left out, ``save_pretrained`` of
  transformers 4.31 with its ``config.json``, ``pytorch_model.bin`` and slow-tokenizer files), and ``clip/``: the
  CLIP tower it used;
* ``inputs/``: the images exactly as fed (CLIP's 336 px crop and SAM's resized image as PNG; both sides normalise
  and pad them with the same arithmetic), and in ``golden.safetensors`` the token ids (with LLaVA's -200 image
  token), labels, attention masks, ``offset``, ground-truth masks and the LoRA weights of the step;
* the outputs of ``READForCausalLM.model_forward`` in training mode: the losses (total, CE, BCE, Dice; READ's
  weighted values), the mask logits of every ``[SEG]``, the expanded-sequence index of each mask prompt, its
  hidden state, the similarity maps and SasP's points and labels, and after ``loss.backward()`` the gradient of
  every trainable parameter (LoRA, ``embed_tokens``, ``lm_head``, the SAM mask decoder, the ``[SEG]`` head);
* ``golden.json``: scalars, sizes, names, versions and the thread count.

The model: a 2-layer LLaMA of width 32 on the 1000-piece test tokenizer (``tests/assets/tiny_tokenizer``) plus
READ's three tokens, a 2-layer CLIP of width 16 at 336 px / patch 14 (576 image tokens, READ-7B's 24x24 grid, since
READ's SasP hard-codes the 336 px crop), and a SAM at READ's hard-coded 1024 px input with a 16-wide, 2-block
encoder (patch 32), 32-wide prompts and a 16-wide IoU head (not SAM's 256, so that the loader must read it from the
tensors). Images are non-square with odd crop excesses and one short side where READ's padding is -1.

Nothing of READ is copied here: its modules are imported from ``--read``. Three things are arranged from outside,
none of which changes a number: ``build_sam_vit_h`` (the name ``model/READ.py`` calls) is pointed at READ's own
SAM classes with the toy sizes; ``Tensor.cuda`` returns the tensor itself (READ moves a few index tensors to the
GPU); and where ``torchvision`` cannot be imported (a CPU-only torch with the CUDA torchvision wheel), an empty
stand-in is registered, because READ's SAM package imports it for its automatic mask generator, which the model
never uses.

Run it in a separate environment with READ's pins where they matter (transformers 4.31.0, tokenizers 0.13.3,
peft 0.4.0; any torch 2 CPU build: the committed goldens used 2.13.0+cpu), outside this repository::

    git clone https://github.com/rui-qian/READ /work/side/READ      # any local checkout of READ
    python3 -m venv /work/side/venv431
    /work/side/venv431/bin/pip install torch transformers==4.31.0 tokenizers==0.13.3 \\
        sentencepiece peft==0.4.0 "numpy<2" einops opencv-python-headless matplotlib pillow safetensors
    /work/side/venv431/bin/python scripts/make_reference_golden.py --read /work/side/READ --threads 1
    # run-to-run spread: another thread count into another folder, then compare
    /work/side/venv431/bin/python scripts/make_reference_golden.py --read /work/side/READ --threads 2 \\
        --out /tmp/golden_2threads --compare tests/goldens/read_reference
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import platform
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "goldens" / "read_reference"
TOKENIZER = ROOT / "tests" / "assets" / "tiny_tokenizer"

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
SAM_SIZE = 1024  # READ hard-codes 1024 (its point transform) and 336 (its SasP crop)
CLIP_SIZE = 336
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)

# Original image sizes (H, W), each with odd crop excesses at 336 and at 12 (120x172: the long side resizes to 481
# and 17): READ pads them symmetrically and loses a column, the CLIP processor's crop would not. 147x186 also has a
# short side where READ's coarse-map padding is -1 (it cuts a row at the top and at the bottom), 100x79 one where
# its 336 px padding is -1.
IMAGES = [(120, 172), (147, 186), (100, 79)]
# Conversation rows per image: (question, answer); every answer holds one [SEG].
ROWS = [
    [("What is the red shape in this image? Please output segmentation mask.", "Sure, it is [SEG]."),
     ("Please segment the blue circle in this image.", "It is [SEG].")],
    [("Can you segment the largest object in this image?", "Sure, the segmentation result is [SEG].")],
    [("Where is the green square? Please respond with segmentation mask.", "[SEG].")],
]  # fmt: skip

TEXT = dict(vocab=1000, hidden=32, intermediate=64, layers=2, heads=4, max_positions=2048)
CLIP = dict(hidden=16, intermediate=32, layers=2, heads=2, patch=14)
SAM = dict(embed=16, depth=2, heads=2, patch=32, window=4, global_attn=[1], prompt=32, decoder_mlp=64, iou_hidden=16)
LORA = dict(r=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"))
LOSS_WEIGHTS = dict(ce_loss_weight=1.0, bce_loss_weight=2.0, dice_loss_weight=0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--read", required=True, type=Path, help="a checkout of rui-qian/READ (model/READ.py inside)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", type=Path, default=None, help="another output folder: print the largest differences")
    args = p.parse_args(argv)
    if not (args.read / "model" / "READ.py").is_file():
        p.error(f"--read: {args.read} has no model/READ.py")
    args.read, args.out = args.read.resolve(), args.out.resolve()
    args.compare = args.compare.resolve() if args.compare is not None else None
    return args


# ----------------------------------------------------------------------------------------------------------
# importing READ


def import_read(read_dir: Path) -> types.ModuleType:
    """READ's ``model.READ`` module, with the three outside arrangements of the module docstring."""
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision.ops  # noqa: F401
        except (ImportError, RuntimeError):
            _stand_in_torchvision()
    else:
        _stand_in_torchvision()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # READ's .cuda() calls on index tensors; CPU run
    sys.path.insert(0, str(read_dir.resolve()))
    import model.READ as read_module
    from model.segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    def toy_sam(checkpoint: str | None = None):
        from functools import partial

        grid = SAM_SIZE // SAM["patch"]
        return Sam(
            image_encoder=ImageEncoderViT(
                depth=SAM["depth"], embed_dim=SAM["embed"], img_size=SAM_SIZE, mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=SAM["heads"], patch_size=SAM["patch"],
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=SAM["global_attn"], window_size=SAM["window"],
                out_chans=SAM["prompt"],
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=SAM["prompt"], image_embedding_size=(grid, grid), input_image_size=(SAM_SIZE, SAM_SIZE),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=SAM["prompt"], mlp_dim=SAM["decoder_mlp"], num_heads=8
                ),
                transformer_dim=SAM["prompt"], iou_head_depth=3, iou_head_hidden_dim=SAM["iou_hidden"],
            ),
        )  # fmt: skip

    read_module.build_sam_vit_h = toy_sam
    return read_module


def _stand_in_torchvision() -> None:
    def unused(*args, **kwargs):
        raise RuntimeError("torchvision stand-in: not available in this environment")

    names = ["torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
             "torchvision.transforms.functional"]  # fmt: skip
    for name in names:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__getattr__ = lambda attr, _name=name: unused  # type: ignore[assignment]
        sys.modules[name] = mod


# ----------------------------------------------------------------------------------------------------------
# inputs


def synthetic_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth RGB scene (gradient background, three flat ellipses), (H, W, 3) uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 120 + 60], -1)
    for _ in range(3):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        image[inside] = rng.uniform(0, 255, 3)
    return image.round().clip(0, 255).astype(np.uint8)


def random_masks(count: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(count, H, W) uint8 0/1 ellipses."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.zeros((count, height, width), np.uint8)
    for i in range(count):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        ry, rx = rng.uniform(0.15, 0.35) * height, rng.uniform(0.15, 0.35) * width
        out[i] = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    return out


def sam_resized_size(height: int, width: int) -> tuple[int, int]:
    """SAM's ResizeLongestSide(1024) target size."""
    scale = SAM_SIZE / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def clip_tensor(image: np.ndarray) -> torch.Tensor:
    """(336, 336, 3) uint8 -> (3, 336, 336) float32, CLIP-normalised (the test does the same)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def sam_tensor(image: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 resized image -> (3, 1024, 1024) float32, SAM-normalised and zero-padded bottom/right."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    x = (x - torch.tensor(SAM_MEAN).view(3, 1, 1)) / torch.tensor(SAM_STD).view(3, 1, 1)
    return torch.nn.functional.pad(x, (0, SAM_SIZE - x.shape[2], 0, SAM_SIZE - x.shape[1]))


def write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


# ----------------------------------------------------------------------------------------------------------
# the run


def build_tokenizer(work: Path):
    """The test tokenizer as READ loads and extends it: slow LLaMA, legacy, [SEG] then the image markers."""
    from transformers import LlamaTokenizer

    src = work / "tokenizer"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(TOKENIZER / "tokenizer.model", src / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(str(src), legacy=True)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.add_tokens("[SEG]")
    tokenizer.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    return tokenizer


def write_clip_tower(directory: Path, seed: int) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        image_size=CLIP_SIZE, patch_size=CLIP["patch"], hidden_size=CLIP["hidden"],
        intermediate_size=CLIP["intermediate"], num_hidden_layers=CLIP["layers"], num_attention_heads=CLIP["heads"],
        projection_dim=CLIP["hidden"], hidden_act="quick_gelu",
    )  # fmt: skip
    CLIPVisionModel(config).save_pretrained(str(directory))
    processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
    )
    processor.save_pretrained(str(directory))


def build_model(read_module: types.ModuleType, tokenizer, clip_dir: str, seed: int):
    """READForCausalLM with random weights, extended, wrapped and made trainable the way READ's training does."""
    from model.llava.model.language_model.llava_llama import LlavaConfig
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LlavaConfig(
        vocab_size=TEXT["vocab"], hidden_size=TEXT["hidden"], intermediate_size=TEXT["intermediate"],
        num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"], num_key_value_heads=TEXT["heads"],
        max_position_embeddings=TEXT["max_positions"], rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=False, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_projector_type="mlp2x_gelu", pretrain_mm_mlp_adapter=None, mm_hidden_size=CLIP["hidden"], use_mm_proj=True,
        mm_use_im_patch_token=False,
    )  # fmt: skip
    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    im_start = tokenizer.convert_tokens_to_ids("<im_start>")
    model = read_module.READForCausalLM(
        config, seg_token_idx=seg, default_im_start_token_idx=im_start, train_mask_decoder=True,
        out_dim=SAM["prompt"], vision_pretrained=None, vision_tower=clip_dir, use_mm_start_end=True, **LOSS_WEIGHTS,
    )  # fmt: skip
    # transformers' N(0, 0.02) init leaves the toy mask decoder and head with near-zero outputs (mask logits ~0, BCE
    # ~ln 2): give their linear layers PyTorch's default init and scale the mask hypernetworks' output layers up, so
    # that the mask logits span a few units and the losses and gradients carry signal
    decoder = model.get_model().visual_model.mask_decoder
    for module in list(decoder.modules()) + list(model.get_model().text_hidden_fcs.modules()):
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    with torch.no_grad():
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20.0)
    model.get_model().initialize_vision_modules(model.get_model().config)
    for p in model.get_model().get_vision_tower().parameters():
        p.requires_grad = False
    for p in model.get_model().mm_projector.parameters():
        p.requires_grad = False
    excluded = ("visual_model", "vision_tower", "mm_projector", "text_hidden_fcs")
    targets = sorted(
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(x in name for x in excluded)
        and any(t in name for t in LORA["targets"])
    )  # fmt: skip
    lora = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=targets, lora_dropout=LORA["dropout"], bias="none",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(model, lora)
    model.resize_token_embeddings(len(tokenizer))
    for name, p in model.named_parameters():
        if any(part in name for part in ("lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs")):
            p.requires_grad = True
    return model


def build_batch(tokenizer, rng: np.random.Generator, out: Path) -> tuple[dict, dict, dict]:
    """READ's training batch (its collate layout), the tensors to record, and the sizes for golden.json."""
    from model.llava import conversation as conversation_lib
    from model.llava.mm_utils import tokenizer_image_token

    rows, labels, images, images_clip, masks, shapes, records = [], [], [], [], [], [], {}
    offset = [0]
    sizes: dict[str, list] = {"original": [], "resized": []}
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    for i, ((h, w), conversations) in enumerate(zip(IMAGES, ROWS)):
        image = synthetic_image(h, w, rng)
        resized = sam_resized_size(h, w)
        import cv2

        sam_image = cv2.resize(image, (resized[1], resized[0]), interpolation=cv2.INTER_LINEAR)
        clip_image = cv2.resize(image, (CLIP_SIZE, CLIP_SIZE), interpolation=cv2.INTER_LINEAR)
        write_png(out / "inputs" / f"sam_{i}.png", sam_image)
        write_png(out / "inputs" / f"clip_{i}.png", clip_image)
        images.append(sam_tensor(sam_image))
        images_clip.append(clip_tensor(clip_image))
        gt = random_masks(len(conversations), h, w, rng)
        records[f"gt_masks.{i}"] = torch.from_numpy(gt)
        masks.append(torch.from_numpy(gt).float())
        shapes.append((resized, (h, w)))
        sizes["original"].append([h, w])
        sizes["resized"].append(list(resized))
        for question, answer in conversations:
            conv = conversation_lib.conv_templates["llava_v1"].copy()
            conv.append_message(conv.roles[0], "<image>\n" + question)
            conv.append_message(conv.roles[1], answer)
            prompt = conv.get_prompt().replace("<image>", "<im_start><image><im_end>")
            ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
            prefix = prompt[: prompt.index("ASSISTANT:") + len("ASSISTANT:")]
            prefix_ids = tokenizer_image_token(prefix, tokenizer, return_tensors="pt")
            if not torch.equal(ids[: len(prefix_ids)], prefix_ids):
                raise RuntimeError(f"the prompt prefix does not tokenise as a prefix: {prompt!r}")
            label = ids.clone()
            label[: len(prefix_ids)] = IGNORE_INDEX
            rows.append(ids)
            labels.append(label)
        offset.append(offset[-1] + len(conversations))
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    label_ids = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros(len(rows), length, dtype=torch.bool)
    for r, (ids, label) in enumerate(zip(rows, labels)):
        input_ids[r, : len(ids)] = ids
        label_ids[r, : len(ids)] = label
        attention[r, : len(ids)] = True
    batch = dict(
        images=torch.stack(images), images_clip=torch.stack(images_clip), input_ids=input_ids, labels=label_ids,
        attention_masks=attention, offset=torch.tensor(offset), masks_list=masks, sam_mask_shape_list=shapes,
        inference=False, image_paths=[f"image_{i}" for i in range(len(IMAGES))],
        conversation_list=[""] * len(rows),
    )  # fmt: skip
    records.update(input_ids=input_ids, labels=label_ids, attention_masks=attention, offset=batch["offset"])
    return batch, records, sizes


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    read_module = import_read(args.read)
    import os

    from safetensors.torch import save_file

    os.chdir(out)  # config.json names the CLIP tower "clip", relative to the working directory, as READ reads it
    write_clip_tower(Path("clip"), args.seed + 1)
    tokenizer = build_tokenizer(out / "work")
    model = build_model(read_module, tokenizer, "clip", args.seed)
    model.train()
    rng = np.random.default_rng(args.seed)
    batch, records, sizes = build_batch(tokenizer, rng, out)
    for name, p in model.named_parameters():
        if "lora_" in name:
            records["lora." + _short(name)] = p.detach().clone()

    captured: dict[str, list] = {"points": [], "labels": [], "similarity": [], "masks": [], "seg": []}
    inner = model.base_model.model
    original_points = inner.similarity_map_to_points
    original_masks = inner.generate_pred_masks
    original_sasp = inner.similarity_as_points

    def points_hook(sm, shape, t=0.8):
        captured["similarity"].append(sm.detach().clone())
        points, labels = original_points(sm, shape, t=t)
        captured["points"].append(points.detach().clone())
        captured["labels"].append(labels.clone())
        return points, labels

    def masks_hook(*a, **k):
        masks = original_masks(*a, **k)
        captured["masks"] = [m.detach().clone() for m in masks]
        return masks

    def sasp_hook(hidden, seg_mask, *a, **k):
        captured["seg"] = [seg_mask.nonzero(), hidden[seg_mask].detach().clone()]
        return original_sasp(hidden, seg_mask, *a, **k)

    inner.similarity_map_to_points = points_hook
    inner.generate_pred_masks = masks_hook
    inner.similarity_as_points = sasp_hook

    start = time.perf_counter()
    output = model(**batch)
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    output["loss"].backward()
    backward_s = time.perf_counter() - start

    losses = {k: float(output[k].detach()) for k in ("loss", "ce_loss", "mask_bce_loss", "mask_dice_loss")}
    for i, m in enumerate(captured["masks"]):
        records[f"pred_masks.{i}"] = m.float()
    for k, (points, labels, sim) in enumerate(zip(captured["points"], captured["labels"], captured["similarity"])):
        records[f"points.{k}"] = points.float()
        records[f"point_labels.{k}"] = labels.long()
        records[f"similarity.{k}"] = sim.float()
    records["seg_index"] = captured["seg"][0]
    records["seg_hidden"] = captured["seg"][1].float()
    trainable = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable.append(_short(name))
            records["grad." + _short(name)] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    for name, value in losses.items():
        records[f"loss.{name}"] = torch.tensor(value, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in records.items()}, str(out / "golden.safetensors"))

    # the published layout: LoRA merged, CLIP left out, transformers 4.31 save_pretrained
    merged = model.merge_and_unload()
    state = {k: v for k, v in merged.state_dict().items() if "vision_tower" not in k}
    merged.save_pretrained(str(out / "checkpoint"), state_dict=state)
    tokenizer.save_pretrained(str(out / "checkpoint"))
    shutil.rmtree(out / "work")
    import peft
    import transformers

    meta = {
        "losses": losses,
        "loss_weights": LOSS_WEIGHTS,
        "lora": {k: list(v) if isinstance(v, tuple) else v for k, v in LORA.items()},
        "image_sizes": sizes,
        "rows_per_image": [len(r) for r in ROWS],
        "trainable": sorted(trainable),
        "threads": args.threads,
        "seed": args.seed,
        "seconds": {"forward": round(forward_s, 3), "backward": round(backward_s, 3)},
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "read_commit": _git_head(args.read),
        },
    }  # fmt: skip
    (out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out}: losses {losses}; forward {forward_s:.2f} s, backward {backward_s:.2f} s")


def _short(name: str) -> str:
    """Parameter name without peft's wrapper prefix (READ's names inside READForCausalLM)."""
    return name.removeprefix("base_model.model.")


def _git_head(directory: Path) -> str | None:
    head = directory / ".git" / "HEAD"
    if not head.is_file():
        return None
    ref = head.read_text().strip()
    if ref.startswith("ref: "):
        target = directory / ".git" / ref[5:]
        return target.read_text().strip() if target.is_file() else ref[5:]
    return ref


def compare(a: Path, b: Path) -> None:
    """Largest absolute and relative differences between two output folders, per kind of record."""
    from safetensors.torch import load_file

    x, y = load_file(str(a / "golden.safetensors")), load_file(str(b / "golden.safetensors"))
    if set(x) != set(y):
        raise SystemExit(f"the two folders hold different records: {sorted(set(x) ^ set(y))[:5]}")
    groups: dict[str, tuple[float, float]] = {}
    for key in sorted(x):
        if not x[key].is_floating_point():
            same = torch.equal(x[key], y[key])
            groups[key.split(".")[0]] = (0.0 if same else float("inf"), 0.0 if same else float("inf"))
            continue
        diff = float((x[key].double() - y[key].double()).abs().max()) if x[key].numel() else 0.0
        scale = float(y[key].double().abs().max()) if y[key].numel() else 0.0
        group = key.split(".")[0]
        if group == "grad":
            parts = ("lora_", "lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs")
            group = "grad." + next((p.rstrip("_") for p in parts if p in key), "other")
        old = groups.get(group, (0.0, 0.0))
        groups[group] = (max(old[0], diff), max(old[1], diff / scale if scale else 0.0))
    for group, (absolute, relative) in groups.items():
        print(f"{group:40s} max |diff| {absolute:.3e}   relative to max |value| {relative:.3e}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run(args)
    if args.compare is not None:
        compare(args.out, args.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
