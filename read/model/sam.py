"""Thin adapter around pip ``segment_anything``: building SAM from a config, loading its weights safely, and
decoding one mask per ``[SEG]`` prompt. The pip classes are used unmodified.

Differences from the reference's vendored SAM, all done here from the outside:

* the ``[SEG]`` embedding is appended *after* the point tokens in the sparse prompts (the reference adds a
  ``text_embeds`` argument to ``PromptEncoder.forward``; same token order);
* the prompt encoder always runs in fp32 (its positional encoding breaks under bf16); its outputs are cast to
  the mask decoder's dtype;
* masks are post-processed in fp32 and returned as fp32 logits at the original image size.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor

from read.config import SamConfig
from read.errors import ConfigError
from read.model.weights import load_checked_state_dict, load_state_dict_file

_REGISTRY_SIZES = {
    "vit_h": dict(
        encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=[7, 15, 23, 31]
    ),
    "vit_l": dict(
        encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=[5, 11, 17, 23]
    ),
    "vit_b": dict(
        encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=[2, 5, 8, 11]
    ),
}


def keep_prompt_encoder_fp32(sam: Sam) -> None:
    """Put SAM's prompt encoder back in fp32 after the model was cast (or wrapped) to a half dtype: its positional
    encoding computes ``coords.to(torch.float)`` and fails against bf16/fp16 weights. In place."""
    sam.prompt_encoder.float()


def sam_config_for(variant: str) -> SamConfig:
    """The SamConfig of one of segment_anything's registry models (vit_h, vit_l, vit_b)."""
    if variant not in _REGISTRY_SIZES:
        raise ConfigError(f"unknown SAM variant {variant!r}; expected one of {sorted(_REGISTRY_SIZES)} or 'custom'")
    return SamConfig(variant=variant, **_REGISTRY_SIZES[variant])


def build_sam(cfg: SamConfig) -> Sam:
    """Build a randomly initialised pip ``Sam`` with the sizes of ``cfg``.

    For the registry variants (vit_h/vit_l/vit_b) the registry sizes are enforced, so a checkpoint file of that
    variant loads strictly.
    """
    if cfg.variant in _REGISTRY_SIZES:
        sizes = _REGISTRY_SIZES[cfg.variant]
        for key, value in sizes.items():
            if getattr(cfg, key) != value:
                raise ConfigError(f"model.sam.{key}={getattr(cfg, key)} does not match SAM {cfg.variant} ({value})")
    elif cfg.variant != "custom":
        raise ConfigError(f"model.sam.variant={cfg.variant!r} is not one of vit_h, vit_l, vit_b, custom")
    embed_size = cfg.image_size // cfg.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.image_size,
            mlp_ratio=cfg.encoder_mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
            window_size=cfg.encoder_window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(embed_size, embed_size),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )


def load_sam_checkpoint(sam: Sam, path: str | Path) -> None:
    """Load an original SAM checkpoint (e.g. ``sam_vit_h_4b8939.pth``) strictly, without executing code."""
    hint = "check that model.sam (variant and sizes) matches the checkpoint"
    load_checked_state_dict(sam, load_state_dict_file(path), f"SAM checkpoint {path}", hint=hint)


def to_sam_frame(coords: Tensor, original_size: tuple[int, int], resized_size: tuple[int, int]) -> Tensor:
    """Map (x, y) points from original-image pixels to SAM's resized frame (ResizeLongestSide.apply_coords).

    Arguments:
        coords: (..., 2) float (x, y) in original pixels.
        original_size: (H, W); resized_size: (h, w) after the longest-side resize.
    """
    (h0, w0), (h1, w1) = original_size, resized_size
    scale = coords.new_tensor([w1 / w0, h1 / h0])
    return coords * scale


def decode_masks(
    sam: Sam,
    image_embeddings: Tensor,
    seg_embeddings: Tensor,
    point_coords: Tensor | None,
    point_labels: Tensor | None,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
) -> Tensor:
    """Decode K masks for one image (see :func:`decode_masks_batched`).

    Arguments:
        image_embeddings: (1, C, h, w) SAM image embedding of this image.
        seg_embeddings: (K, C); point_coords: (K, P, 2) or None; point_labels: (K, P) or None.
        resized_size: (h, w) of the image inside SAM's padded input; original_size: (H, W).

    Returns:
        (K, H, W) float32 mask logits at the original resolution.
    """
    k = seg_embeddings.shape[0]
    masks = decode_masks_batched(
        sam, image_embeddings.expand(k, -1, -1, -1), seg_embeddings, point_coords, point_labels,
        [tuple(resized_size)] * k, [tuple(original_size)] * k,
    )  # fmt: skip
    return torch.stack(masks) if masks else seg_embeddings.new_zeros(0, *original_size, dtype=torch.float32)


def decode_masks_batched(
    sam: Sam,
    image_embeddings: Tensor,
    seg_embeddings: Tensor | None,
    point_coords: Tensor | None,
    point_labels: Tensor | None,
    resized_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    boxes: Tensor | None = None,
) -> list[Tensor]:
    """Decode one mask per prompt, for prompts about any mix of images, in one mask-decoder call.

    pip's ``MaskDecoder.predict_masks`` repeats a single image embedding for every prompt, so a batch of images
    would need one call per image. Here each prompt brings its own image embedding (rows of the same image may be
    an ``expand`` of one tensor) and the decoder's modules run once on all K prompts: the same arithmetic as
    ``MaskDecoder.forward(..., multimask_output=False)`` followed by ``Sam.postprocess_masks`` (tested equal).

    Arguments:
        sam: the SAM model.
        image_embeddings: (K, C, h, w) SAM image embedding of each prompt's image.
        seg_embeddings: (K, C) projected ``[SEG]`` embeddings, or None: no ``[SEG]`` prompt (SAM on its own, prompted
            by points only, as when pre-training it).
        point_coords: (K, P, 2) (x, y) points in SAM's input frame, or None (LISA: no points).
        point_labels: (K, P) labels in {1, 0, -1}, or None.
        resized_sizes: K pairs (h, w), the image inside SAM's padded input.
        original_sizes: K pairs (H, W), the original image.
        boxes: optional (K, 4) box prompts (x0, y0, x1, y1) in SAM's input frame (SAM's own box prompt; READ does
            not use it).

    Returns:
        K float32 mask logits (H_k, W_k) at the original resolutions.
    """
    k = image_embeddings.shape[0]
    if k == 0:
        return []
    if seg_embeddings is None and point_coords is None and boxes is None:
        raise ValueError("decode_masks_batched: no prompt (neither [SEG] embeddings, points nor boxes)")
    decoder = sam.mask_decoder
    dtype = next(decoder.parameters()).dtype
    with torch.autocast(device_type=image_embeddings.device.type, enabled=False):
        points = None
        if point_coords is not None:
            points = (point_coords.float(), point_labels.float())
        box_prompts = None if boxes is None else boxes.float()
        # sparse: (K|1, P', C), the points (one padding point when there is no box), then the two box corners
        sparse, dense = sam.prompt_encoder(points=points, boxes=box_prompts, masks=None)  # dense: (K|1, C, h, w)
        dense_pe = sam.prompt_encoder.get_dense_pe()  # (1, C, h, w)
    sparse = sparse.expand(k, -1, -1).to(dtype)
    prompts = sparse  # (K, P', C): points, then [SEG]
    if seg_embeddings is not None:
        prompts = torch.cat([sparse, seg_embeddings[:, None].to(dtype)], dim=1)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).to(dtype)  # (1 + M, C)
    tokens = torch.cat([output_tokens.expand(k, -1, -1), prompts], dim=1)  # (K, 1 + M + P', C)
    src = image_embeddings.to(dtype) + dense.to(dtype)  # (K, C, h, w)
    pos = dense_pe.to(dtype).expand(k, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)  # (K, T, C), (K, h*w, C)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(k, c, h, w))  # (K, C', 4h, 4w)
    # Single-mask output uses the first mask token only (MaskDecoder's multimask_output=False slice).
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1])  # (K, C')
    low_res = torch.einsum("kc,kchw->khw", hyper, upscaled)[:, None].float()  # (K, 1, 4h, 4w)

    size = sam.image_encoder.img_size
    full = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)  # (K, 1, S, S)
    out: list[Tensor | None] = [None] * k
    groups: dict[tuple, list[int]] = {}
    for j in range(k):
        groups.setdefault((tuple(resized_sizes[j]), tuple(original_sizes[j])), []).append(j)
    for ((rh, rw), (oh, ow)), idx in groups.items():
        crop = full[idx, :, :rh, :rw]
        masks = F.interpolate(crop, (oh, ow), mode="bilinear", align_corners=False)[:, 0]
        for j, m in zip(idx, masks):
            out[j] = m
    return out  # type: ignore[return-value]
