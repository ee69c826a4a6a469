"""The READ model: LLaVA + SAM + a ``[SEG]`` projection head + SasP point prompts.

``ReadModel`` composes finished modules (transformers' ``LlavaForConditionalGeneration``, pip ``Sam``, the
head and an optional ``SasP`` prompter); :mod:`read.model.builder` assembles them from a config.

Which hidden state is the mask prompt (docs/reference.md#mask-prompt): the last-layer (post-norm) hidden state at the
position that *predicts* ``[SEG]``, i.e. position q with ``input_ids[q + 1] == seg_token_id``. Image-token
states are found by id (``input_ids == image_token_id``), never by offset arithmetic.

The LM's classes are the token ids below ``<image>``: transformers' Llava needs that per-patch placeholder (the last
id of the vocabulary, one more than READ's), but it is no word. :func:`text_only_logits` leaves its ``lm_head``
column (and any padding columns after it) out of the cross-entropy and out of generation, so the loss is READ's,
over READ's vocabulary, and the placeholder row of ``lm_head`` gets no gradient.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn
from transformers import LlavaForConditionalGeneration

from read.batch import ReadBatch
from read.config import ReadConfig
from read.model.losses import read_losses
from read.model.sam import decode_masks_batched, to_sam_frame
from read.model.sasp import similarity_map


@dataclass
class MaskPrediction:
    """What :meth:`ReadModel.predict_masks` returns. Per-row lists have one entry per row (R entries).

    Attributes:
        masks: per row, (k_r, H, W) fp32 mask logits at the original image size, one per ``[SEG]`` of the row.
        point_coords: per row, (k_r, P, 2) SasP points (x, y) in original-image pixels (P = 0 without SasP).
        point_labels: per row, (k_r, P) point labels in {1, 0, -1}.
        similarity: per row, (k_r, N) similarity maps (N = 0 without SasP).
        prompts: (K, out_dim) projected ``[SEG]`` prompts of the whole batch, row-major (row 0's first).
    """

    masks: list[Tensor]
    point_coords: list[Tensor]
    point_labels: list[Tensor]
    similarity: list[Tensor]
    prompts: Tensor


@dataclass
class ReadOutput:
    """What a forward pass returns. Per-row lists have one entry per query row (R entries).

    Attributes:
        loss: weighted total (None without labels / masks).
        ce_loss, bce_loss, dice_loss: the unweighted parts (None where not computed).
        query_loss: the unweighted query-word loss (``loss.query_weight > 0`` and ``batch.query_ids`` given; not in
            READ, see ``read.model.losses.query_word_loss``), else None.
        logits: (R, L, V) LM logits over the whole ``lm_head`` (the ``<image>`` column included; see
            :func:`text_only_logits`); None when the pass was asked for none (``return_logits=False``, no labels).
        pred_masks: R tensors (k_r, H, W) float32 mask logits at the original image size, one per ``[SEG]``.
        point_coords: R tensors (k_r, P, 2) SasP points (x, y) in original-image pixels (P = 0 without SasP).
        point_labels: R tensors (k_r, P) point labels in {1, 0, -1}.
        similarity: R tensors (k_r, N) raw similarity maps over the N image tokens (without SasP, the LISA baseline,
            the same map without gradient in eval mode, for the pointing metrics and pictures; empty in training).
        num_masks: number of ground-truth masks that entered the mask losses.
    """

    loss: Tensor | None
    ce_loss: Tensor | None
    bce_loss: Tensor | None
    dice_loss: Tensor | None
    logits: Tensor | None
    pred_masks: list[Tensor]
    point_coords: list[Tensor] = field(default_factory=list)
    point_labels: list[Tensor] = field(default_factory=list)
    similarity: list[Tensor] = field(default_factory=list)
    num_masks: int = 0
    query_loss: Tensor | None = None


def text_only_logits(logits: Tensor, image_token_id: int) -> Tensor:
    """LM logits restricted to the text vocabulary: the ``<image>`` placeholder's column and every column after it
    (padding rows of a resized ``lm_head``) become -inf, so they take no probability, win no argmax and pass no
    gradient back to their ``lm_head`` rows. The loss and generation both go through this function.

    Arguments:
        logits: (..., V) logits over the whole ``lm_head``.
        image_token_id: id of ``<image>``, the last token of the vocabulary.

    Returns:
        (..., V) logits, a new tensor (column indices are still token ids).
    """
    columns = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill(columns >= image_token_id, float("-inf"))


def seg_prompt_mask(input_ids: Tensor, seg_token_id: int) -> Tensor:
    """Positions whose hidden state is a mask prompt: the token *before* each ``[SEG]``.

    Arguments:
        input_ids: (R, L) token ids.

    Returns:
        (R, L) bool, True at q where ``input_ids[:, q + 1] == seg_token_id``.
    """
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    mask[:, :-1] = input_ids[:, 1:] == seg_token_id
    return mask


def is_right_padded(attention_mask: Tensor) -> bool:
    """True when every row of ``attention_mask`` (R, L) is its real tokens followed by padding (or no padding)."""
    m = attention_mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all())


def image_token_states(hidden: Tensor, input_ids: Tensor, image_token_id: int, num_tokens: int) -> Tensor:
    """Gather the hidden states at the image-placeholder positions.

    Arguments:
        hidden: (R, L, C) hidden states.
        input_ids: (R, L) token ids.

    Returns:
        (R, N, C) states in patch (raster) order.
    """
    is_image = input_ids == image_token_id
    counts = is_image.sum(1)
    if not bool((counts == num_tokens).all()):
        raise ValueError(
            f"every row must contain exactly {num_tokens} image tokens (id {image_token_id}); found {counts.tolist()}"
        )
    return hidden[is_image].view(input_ids.shape[0], num_tokens, hidden.shape[-1])


class ReadModel(nn.Module):
    """LLaVA + SAM with ``[SEG]`` prompts; SasP point prompts when ``point_prompter`` is given (READ),
    the ``[SEG]`` embedding alone when it is None (the LISA baseline). ``query_head`` (Linear(out_dim, vocab)) exists
    only for the optional query-word loss (``loss.query_weight > 0``, not in READ): it reads the projected ``[SEG]``
    prompts, so the loss shapes what SAM receives and leaves the LM's next-token distribution alone."""

    def __init__(
        self,
        llava: LlavaForConditionalGeneration,
        sam: Sam,
        seg_projector: nn.Module,
        point_prompter: nn.Module | None,
        config: ReadConfig,
        *,
        seg_token_id: int,
        image_token_id: int,
        query_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.llava = llava
        self.sam = sam
        self.seg_projector = seg_projector
        self.point_prompter = point_prompter
        self.config = config
        self.seg_token_id = seg_token_id
        self.image_token_id = image_token_id
        self.num_image_tokens = config.model.vision.num_patches
        self.query_head = query_head

    # ------------------------------------------------------------------------------------------------------
    # encoders

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """CLIP features projected into the LM space.

        Arguments:
            pixel_values: (B, 3, S, S).

        Returns:
            (B, N, C_lm).
        """
        frozen = not any(
            p.requires_grad
            for m in (self.llava.model.vision_tower, self.llava.model.multi_modal_projector)
            for p in m.parameters()
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            out = self.llava.model.get_image_features(
                pixel_values=pixel_values.to(self.llava.dtype),
                vision_feature_layer=self.llava.config.vision_feature_layer,
                vision_feature_select_strategy=self.llava.config.vision_feature_select_strategy,
            )
        return torch.stack(list(out.pooler_output))

    def encode_sam_images(self, sam_images: Tensor) -> Tensor:
        """SAM image embeddings, batched; without autograd when the encoder is frozen.

        Arguments:
            sam_images: (B, 3, S_sam, S_sam).

        Returns:
            (B, C_prompt, S_sam/16, S_sam/16).
        """
        encoder = self.sam.image_encoder
        frozen = not any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return encoder(sam_images.to(next(encoder.parameters()).dtype))

    def embed_inputs(self, input_ids: Tensor, image_features: Tensor) -> Tensor:
        """Token embeddings with each row's image features scattered into its placeholder positions.

        Arguments:
            input_ids: (R, L).
            image_features: (R, N, C) projected features of each row's image.

        Returns:
            (R, L, C) input embeddings.
        """
        inputs_embeds = self.llava.get_input_embeddings()(input_ids)
        is_image = (input_ids == self.image_token_id).unsqueeze(-1)
        n_tokens, n_features = int(is_image.sum()), image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            raise ValueError(f"image tokens and image features do not match: {n_tokens} tokens, {n_features} features")
        return inputs_embeds.masked_scatter(is_image, image_features.to(inputs_embeds.dtype))

    def language_forward(self, input_ids: Tensor, attention_mask: Tensor, image_features: Tensor) -> Tensor:
        """Run the LM with the image features scattered into the placeholder positions.

        Arguments:
            input_ids, attention_mask: (R, L).
            image_features: (R, N, C) projected features of each row's image.

        Returns:
            (R, L, C) last-layer, post-norm hidden states.
        """
        inputs_embeds = self.embed_inputs(input_ids, image_features)
        # positions count real tokens only, so left-padded rows get the positions generate() gives them
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        mask: Tensor | None = attention_mask
        if is_right_padded(attention_mask):
            # Padding only at the end of the rows: the causal mask already hides it from every real token, so the
            # padding mask changes nothing but the (unused) states of the padding itself. Without it attention
            # takes the plain causal path, as a batch of one does (faster, and batch = 1 and batch > 1 run the same
            # kernel).
            mask = None
        out = self.llava.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    # ------------------------------------------------------------------------------------------------------
    # masks

    def predict_masks(
        self,
        hidden: Tensor,
        input_ids: Tensor,
        image_index: Tensor,
        sam_embeddings: Tensor,
        original_sizes: list[tuple[int, int]],
        resized_sizes: list[tuple[int, int]],
    ) -> MaskPrediction:
        """One mask per ``[SEG]`` in each row.

        Arguments:
            hidden: (R, L, C) last-layer hidden states.
            input_ids: (R, L).
            image_index: (R,) image of each row.
            sam_embeddings: (B, C_p, h, w).
            original_sizes, resized_sizes: B pairs (H, W) / (h, w).

        Returns:
            :class:`MaskPrediction`: per-row masks, points and similarity maps, and the projected prompts.
        """
        rows = input_ids.shape[0]
        prompt_pos = seg_prompt_mask(input_ids, self.seg_token_id)  # (R, L)
        seg_rows = prompt_pos.nonzero()[:, 0]  # (K,) row of each [SEG], row-major order
        seg_hidden = hidden[prompt_pos]  # (K, C)
        seg_embeddings = self.seg_projector(seg_hidden)  # (K, out_dim)
        seg_images = image_index[seg_rows]  # (K,)
        k_total = seg_rows.shape[0]
        n = self.num_image_tokens
        seg_original = [tuple(original_sizes[b]) for b in seg_images.tolist()]  # (H, W) of each [SEG]'s image
        seg_resized = [tuple(resized_sizes[b]) for b in seg_images.tolist()]

        coords_sam: Tensor | None = None
        labels: Tensor | None = None
        coords = hidden.new_zeros(k_total, 0, 2, dtype=torch.float32)
        labels_out = torch.zeros(k_total, 0, dtype=torch.long, device=hidden.device)
        sims = hidden.new_zeros(k_total, 0, dtype=torch.float32)
        if self.point_prompter is not None and k_total > 0:
            image_hidden = image_token_states(hidden, input_ids, self.image_token_id, n)[seg_rows]  # (K, N, C)
            prompts = self.point_prompter(image_hidden, seg_hidden, seg_original)
            coords, labels_out, sims = prompts.coords, prompts.labels, prompts.sim
            coords_sam = torch.stack([to_sam_frame(coords[j], seg_original[j], seg_resized[j]) for j in range(k_total)])
            labels = labels_out
        elif k_total > 0 and not self.training:
            # LISA: nothing prompts SAM with it, but the [SEG] state has the same similarity map, which evaluation
            # reports (read.evaluation.pointing); training has no use for it
            with torch.no_grad():
                image_hidden = image_token_states(hidden, input_ids, self.image_token_id, n)[seg_rows]
                sims = similarity_map(image_hidden, seg_hidden).float()

        # One mask-decoder call for every [SEG] of the batch, whatever image it is about.
        masks_per_seg = decode_masks_batched(
            self.sam, sam_embeddings[seg_images], seg_embeddings, coords_sam, labels, seg_resized, seg_original
        )

        out_masks, out_coords, out_labels, out_sims = [], [], [], []
        for r in range(rows):
            idx = (seg_rows == r).nonzero()[:, 0].tolist()
            h, w = original_sizes[int(image_index[r])]
            if idx:
                out_masks.append(torch.stack([masks_per_seg[j] for j in idx]))
            else:
                out_masks.append(hidden.new_zeros(0, h, w, dtype=torch.float32))
            out_coords.append(coords[idx])
            out_labels.append(labels_out[idx])
            out_sims.append(sims[idx])
        return MaskPrediction(out_masks, out_coords, out_labels, out_sims, seg_embeddings)

    # ------------------------------------------------------------------------------------------------------
    # forward

    def forward(
        self,
        batch: ReadBatch,
        image_features: Tensor | None = None,
        sam_embeddings: Tensor | None = None,
        return_logits: bool = True,
    ) -> ReadOutput:
        """Teacher-forced forward pass: LM logits and one mask per ``[SEG]`` in the inputs, plus the losses
        when ``batch.labels`` / ``batch.gt_masks`` are given.

        Arguments:
            batch: the inputs.
            image_features: optional cached (B, N, C) output of :meth:`encode_images`.
            sam_embeddings: optional cached (B, C_p, h, w) output of :meth:`encode_sam_images`.
            return_logits: False skips the LM head when no labels need it (teacher-forced evaluation reads only
                the masks): (R, L, V) logits are the largest activation of a 7B pass (~0.7 GB at batch 8 in fp32).
        """
        batch.validate()
        if image_features is None:
            image_features = self.encode_images(batch.pixel_values)  # (B, N, C)
        if sam_embeddings is None:
            sam_embeddings = self.encode_sam_images(batch.sam_images)
        hidden = self.language_forward(batch.input_ids, batch.attention_mask, image_features[batch.image_index])
        logits = self.llava.lm_head(hidden) if return_logits or batch.labels is not None else None  # (R, L, V)
        pred = self.predict_masks(
            hidden, batch.input_ids, batch.image_index, sam_embeddings, batch.original_sizes, batch.resized_sizes
        )
        text_logits = text_only_logits(logits, self.image_token_id) if batch.labels is not None else None
        use_query = self.config.loss.query_weight > 0 and batch.query_ids is not None
        if use_query and self.query_head is None:
            raise ValueError("loss.query_weight > 0 needs the model's query_head (build it with that config)")
        losses = read_losses(
            self.config.loss,
            text_logits,
            batch.labels,
            pred.masks,
            batch.gt_masks,
            self.query_head(pred.prompts) if use_query else None,
            batch.query_ids,
        )
        return ReadOutput(
            loss=losses.total,
            ce_loss=losses.ce,
            bce_loss=losses.bce,
            dice_loss=losses.dice,
            logits=logits,
            pred_masks=pred.masks,
            point_coords=pred.point_coords,
            point_labels=pred.point_labels,
            similarity=pred.similarity,
            num_masks=losses.num_masks,
            query_loss=losses.query,
        )

    # ------------------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(
        self,
        batch: ReadBatch,
        max_new_tokens: int = 512,
        eos_token_id: int | None = 2,
        pad_token_id: int = 0,
        image_features: Tensor | None = None,
        sam_embeddings: Tensor | None = None,
        use_cache: bool = True,
    ) -> tuple[Tensor, ReadOutput]:
        """Greedy answers, then one mask per generated ``[SEG]``.

        Decoding (``use_cache=True``): one pass over the prompts fills a KV cache, then every step feeds only the
        new token of each row. A row stops at its EOS and leaves the batch at once (its cache rows are dropped), so
        no work is spent on finished rows; decoding ends when no row is left or after ``max_new_tokens``.
        ``use_cache=False`` decodes as the reference does (READ's ``evaluate``): every step runs the language model
        over the whole sequence, and the masks come from the states of the last step.

        Masks (``use_cache=True``): [FIX] the reference reads the ``[SEG]`` states from the uncached last decoding
        step; here one teacher-forced pass over prompt + answer (right-padded, as teacher-forced evaluation) gives
        the same states, for the rows that generated a ``[SEG]`` only: at batch 1 bit for bit, in a batch up to
        float rounding. The decoding states themselves are not used, because cached and uncached arithmetic differ
        in the last bits. SAM's image encoder runs only for the images of those rows (unless ``sam_embeddings`` is
        given): an answer without ``[SEG]`` has an empty mask.

        Arguments:
            batch: prompts ending in "ASSISTANT:", left-padded; labels/gt_masks are ignored.
            max_new_tokens: the longest answer, EOS included.
            eos_token_id: ends a row; None decodes exactly ``max_new_tokens`` tokens per row (fixed-length timing).
            pad_token_id: fills each row after its EOS.
            image_features, sam_embeddings: optional cached encoder outputs (see :meth:`forward`).
            use_cache: False re-encodes the whole sequence at every step (the reference's way, for comparisons).

        Returns:
            (new_tokens (R, T) with ``pad_token_id`` after each row's EOS, T = the longest answer; the masks as a
            :class:`ReadOutput` without logits or losses).
        """
        batch.validate()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if image_features is None:
            image_features = self.encode_images(batch.pixel_values)
        features = image_features[batch.image_index]  # (R, N, C)
        if use_cache:
            new_tokens = self._decode_cached(batch, features, max_new_tokens, eos_token_id, pad_token_id)
            return new_tokens, self._answer_masks(batch, new_tokens, features, sam_embeddings, eos_token_id)
        new_tokens, hidden = self._decode_uncached(batch, features, max_new_tokens, eos_token_id, pad_token_id)
        return new_tokens, self._answer_masks(batch, new_tokens, features, sam_embeddings, eos_token_id, hidden)

    def _next_tokens(self, hidden: Tensor) -> Tensor:
        """Greedy choice from last-layer states (R, C): (R,) token ids."""
        logits = text_only_logits(self.llava.lm_head(hidden), self.image_token_id)  # (R, V)
        return logits.argmax(-1)

    def _decode_cached(
        self, batch: ReadBatch, features: Tensor, max_new_tokens: int, eos: int | None, pad: int
    ) -> Tensor:
        """Greedy decoding with a KV cache; finished rows leave the batch. Returns (R, T) new tokens."""
        lm = self.llava.model.language_model
        mask = batch.attention_mask
        rows = mask.shape[0]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        out = lm(
            inputs_embeds=self.embed_inputs(batch.input_ids, features),
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
        )
        cache = _returned_cache(out)
        tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=mask.device)
        live = torch.arange(rows, device=mask.device)  # the original row of each row still decoding
        next_position = mask.long().sum(1)  # (live,) position of the token fed next
        token = self._next_tokens(out.last_hidden_state[:, -1])  # (live,)
        steps = max_new_tokens
        for step in range(max_new_tokens):
            tokens[live, step] = token
            if step == max_new_tokens - 1:
                break
            if eos is not None:
                going = token != eos
                if not bool(going.all()):
                    keep = going.nonzero()[:, 0]
                    if keep.numel() == 0:
                        steps = step + 1
                        break
                    cache.reorder_cache(keep)
                    live, token, mask, next_position = live[keep], token[keep], mask[keep], next_position[keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            out = lm(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_position[:, None],
                use_cache=True,
                **{_cache_argument(lm): cache},
            )
            next_position = next_position + 1
            token = self._next_tokens(out.last_hidden_state[:, -1])
        return tokens[:, :steps]

    def _decode_uncached(
        self, batch: ReadBatch, features: Tensor, max_new_tokens: int, eos: int | None, pad: int
    ) -> tuple[Tensor, Tensor]:
        """Greedy decoding that runs the LM over the whole sequence at every step (the reference's way).

        Returns:
            (new_tokens (R, T), the last step's hidden states (R, L + T - 1, C): the states of prompt + answer
            without its last token).
        """
        ids, mask = batch.input_ids, batch.attention_mask
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        tokens = []
        for _ in range(max_new_tokens):
            hidden = self.language_forward(ids, mask, features)  # (R, L, C)
            token = torch.where(done, torch.full_like(done, pad, dtype=torch.long), self._next_tokens(hidden[:, -1]))
            tokens.append(token)
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            if eos is not None:
                done = done | (token == eos)
                if bool(done.all()):
                    break
        return torch.stack(tokens, 1), hidden

    def _answer_masks(
        self,
        batch: ReadBatch,
        new_tokens: Tensor,
        features: Tensor,
        sam_embeddings: Tensor | None,
        eos: int | None,
        hidden: Tensor | None = None,
    ) -> ReadOutput:
        """One mask per generated ``[SEG]``, computed for the rows that have one.

        Arguments:
            new_tokens: (R, T) answers (``pad`` after EOS).
            features: (R, N, C) image features of each row.
            hidden: the uncached decoder's last states (R, L + T - 1, C) over the left-padded prompt + answer;
                None runs a teacher-forced pass over prompt + answer (right-padded) instead.
        """
        rows, prompt_len = batch.input_ids.shape
        if eos is not None:
            is_eos = new_tokens == eos
            after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
        else:
            after_eos = torch.zeros_like(new_tokens, dtype=torch.bool)
        seg_rows = ((new_tokens == self.seg_token_id) & ~after_eos).any(1).nonzero()[:, 0]  # (S,)
        images = batch.image_index[seg_rows].unique()  # sorted images of those rows
        empty = [
            torch.zeros(0, *batch.original_sizes[int(batch.image_index[r])], dtype=torch.float32) for r in range(rows)
        ]
        masks: list[Tensor] = [e.to(features.device) for e in empty]
        coords = [features.new_zeros(0, 0, 2, dtype=torch.float32) for _ in range(rows)]
        labels = [torch.zeros(0, 0, dtype=torch.long, device=features.device) for _ in range(rows)]
        sims = [features.new_zeros(0, 0, dtype=torch.float32) for _ in range(rows)]
        if seg_rows.numel() > 0:
            if hidden is None:
                real = torch.cat([batch.attention_mask.bool(), ~after_eos], 1)  # (R, L + T)
                full = torch.cat([batch.input_ids, new_tokens], 1)[seg_rows]
                ids, attention = _right_align(full, real[seg_rows], pad=0)
                hidden_rows = self.language_forward(ids, attention, features[seg_rows])
            else:
                ids = torch.cat([batch.input_ids, new_tokens], 1)[seg_rows]
                last = hidden[seg_rows]
                hidden_rows = torch.cat([last, last.new_zeros(last.shape[0], 1, last.shape[2])], 1)  # align with ids
                ids = ids[:, : hidden_rows.shape[1]]
            if sam_embeddings is None:
                sam_of_images = self.encode_sam_images(batch.sam_images[images])
            else:
                sam_of_images = sam_embeddings[images]
            local_image = torch.searchsorted(images, batch.image_index[seg_rows])  # (S,) index into ``images``
            picked = images.tolist()
            out = self.predict_masks(
                hidden_rows,
                ids,
                local_image,
                sam_of_images,
                [batch.original_sizes[i] for i in picked],
                [batch.resized_sizes[i] for i in picked],
            )
            for j, r in enumerate(seg_rows.tolist()):
                masks[r], coords[r] = out.masks[j], out.point_coords[j]
                labels[r], sims[r] = out.point_labels[j], out.similarity[j]
        return ReadOutput(
            loss=None,
            ce_loss=None,
            bce_loss=None,
            dice_loss=None,
            logits=None,
            pred_masks=masks,
            point_coords=coords,
            point_labels=labels,
            similarity=sims,
        )


def _right_align(ids: Tensor, real: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Move each row's real tokens to the front, in order.

    Arguments:
        ids: (R, L) tokens; real: (R, L) bool, True at the tokens to keep.

    Returns:
        (ids (R, L'), attention mask (R, L')) right-padded with ``pad``, L' = the longest row.
    """
    counts = real.sum(1)
    width = int(counts.max())
    order = torch.sort((~real).long(), dim=1, stable=True).indices  # real tokens first, original order kept
    packed = ids.gather(1, order)[:, :width]
    attention = (torch.arange(width, device=ids.device)[None, :] < counts[:, None]).long()
    return packed.masked_fill(attention == 0, pad), attention


def _cache_argument(module: nn.Module) -> str:
    """The keyword under which ``module.forward`` takes a KV cache (``cache`` in newer transformers releases,
    ``past_key_values`` before)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(output: object) -> Any:
    """The KV cache of a language-model output (``cache`` or ``past_key_values``, by transformers release)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
