"""The evaluation loop: batches of images through the model, one :class:`QueryRecord` per query.

Teacher forcing and generation are scored by two functions, :func:`score_teacher_forced` and
:func:`score_generation`; :func:`evaluate` shards the pending images, runs the batches, writes the files and
gathers the records (see :mod:`read.evaluation` for modes, files, resume and sharding).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from read.batch import ReadBatch
from read.data.collate import ReadCollator
from read.data.sample import DataError, InvalidAnnotation, Sample
from read.evaluation.config import EvalConfig, EvalResult
from read.evaluation.distributed import barrier, broadcast, gather_records, rank_and_world_size, shard
from read.evaluation.output_dir import (
    VIS_DIR,
    complete_images,
    finalize_files,
    fingerprint_change,
    load_records,
    merge_records,
    part_path,
    repair_jsonl,
    run_fingerprint,
    start_output_dir,
)
from read.evaluation.pointing import query_pointing, would_be_points
from read.evaluation.records import QueryPosition, QueryRecord, rle_encode
from read.evaluation.summary import summarize
from read.fingerprint import DIGEST_CACHE, DigestCache
from read.model.read_model import ReadModel, ReadOutput
from read.tokenizer import ReadTokenizer

logger = logging.getLogger(__name__)


def evaluate(
    model: ReadModel,
    tokenizer: ReadTokenizer,
    dataset: Any,
    config: EvalConfig | None = None,
    *,
    fingerprint: dict[str, Any] | None = None,
) -> EvalResult:
    """Score ``dataset`` with ``model`` (see :mod:`read.evaluation` for modes, files, resume and sharding).

    Arguments:
        model: a :class:`ReadModel` (under DeepSpeed pass ``engine.module``); put into eval mode for the call.
        tokenizer: the model's tokenizer.
        dataset: an evaluation dataset (``read.data.eval_sets``) built for the mode: ``generation=True`` for
            "generate", False for "teacher"; ``len()`` and ``[i] -> Sample``.
        config: settings; default ``EvalConfig()`` (teacher forcing, batch 1, nothing written).
        fingerprint: JSON-ready values that determine the records besides what :func:`run_fingerprint` covers (the
            weights' content, prompts ...); stored in ``<output_dir>/run.json`` with it. Records of a run with
            another fingerprint are not resumed: the run starts over.

    Returns:
        :class:`EvalResult`; identical on every rank of a process group.
    """
    cfg = config or EvalConfig()
    rank, world_size = rank_and_world_size()
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None

    previous, restart_reason = _resume(model, dataset, cfg, out_dir, rank, world_size, fingerprint)
    done = complete_images(previous)
    previous = [r.light() for r in previous if r.index in done]
    barrier()  # nobody writes before every rank has read the same records
    if done:
        logger.info("resuming: %d of %d images already evaluated", len(done), len(dataset))
    pending = [i for i in range(len(dataset)) if i not in done]
    new_records = _run_shard(model, tokenizer, dataset, shard(pending, rank, world_size), cfg, out_dir, rank)

    gathered = gather_records(new_records)
    payload = None
    if rank == 0:
        records = merge_records([previous, *gathered])
        if out_dir is not None:
            finalize_files(out_dir)
        evaluated = len({r.index for rank_records in gathered for r in rank_records})
        payload = (summarize(records, cfg.mode), records, evaluated)
    if world_size > 1:
        payload = broadcast(payload)
    scores, records, evaluated = payload
    return EvalResult(cfg.mode, scores, records, evaluated, len(done), restart_reason)


def score_teacher_forced(
    model: ReadModel, batch: ReadBatch, positions: list[QueryPosition], cfg: EvalConfig
) -> tuple[list[QueryRecord], ReadOutput]:
    """One forward pass with the answers in the prompts; the mask of a row's ``[SEG]`` is its prediction.

    A row without ``[SEG]`` (a false premise) is recorded but not scored; a row with more than one is refused.
    """
    out = model(_without_targets(batch, model), return_logits=False)  # scoring reads the masks only
    records = []
    for r, (meta, position) in enumerate(zip(batch.meta, positions)):
        logits = out.pred_masks[r]  # (k, H, W)
        if logits.shape[0] > 1:
            raise ValueError(f"{meta.get('image_path')}: evaluation rows must hold at most one [SEG]")
        has_mask = logits.shape[0] == 1
        pred = (logits[0] > 0).cpu().numpy() if has_mask else None
        gt = batch.gt_masks[r].numpy()[0] if has_mask else None
        extra = {"num_seg": int(logits.shape[0])}
        pointing = _pointing(model, out, r, gt)
        records.append(_record(position, meta, pred, gt, bool(has_mask and pred.any()), extra, out, r, cfg, pointing))
    return records, out


def score_generation(
    model: ReadModel, batch: ReadBatch, positions: list[QueryPosition], tokenizer: ReadTokenizer, cfg: EvalConfig
) -> tuple[list[QueryRecord], ReadOutput]:
    """Greedy decoding from question-only prompts; the mask of the first generated ``[SEG]`` is the prediction.

    Without ``[SEG]`` the prediction is empty. Predicted existence: a ``[SEG]`` was generated and its mask is not
    empty. Every row is scored against its ground truth (all zero for a false premise).
    """
    new_tokens, out = model.generate(
        _without_targets(batch, model),
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=cfg.kv_cache,
    )
    records = []
    for r, (meta, position) in enumerate(zip(batch.meta, positions)):
        gt_all = batch.gt_masks[r].numpy()  # (k, H, W) uint8
        if gt_all.shape[0] != 1:
            raise ValueError(f"{meta.get('image_path')}: a generation row needs one ground-truth mask")
        gt = gt_all[0]
        logits = out.pred_masks[r]  # (k', H, W)
        pred = (logits[0] > 0).cpu().numpy() if logits.shape[0] > 0 else np.zeros(gt.shape, dtype=bool)
        ids = new_tokens[r].tolist()
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        extra = {"num_seg": int(logits.shape[0]), "text": tokenizer.decode(ids, skip_special_tokens=True)}
        pred_exists = bool(logits.shape[0] > 0 and pred.any())
        pointing = _pointing(model, out, r, gt)
        records.append(_record(position, meta, pred, gt, pred_exists, extra, out, r, cfg, pointing))
    return records, out


def _without_targets(batch: ReadBatch, model: ReadModel) -> ReadBatch:
    """The batch as the model gets it in evaluation: no labels, no ground truth, on the model's device."""
    return replace(batch, labels=None, gt_masks=None).to(next(model.parameters()).device)


def _record(
    position: QueryPosition,
    meta: dict[str, Any],
    pred: np.ndarray | None,
    gt: np.ndarray | None,
    pred_exists: bool,
    extra: dict[str, Any],
    out: ReadOutput,
    r: int,
    cfg: EvalConfig,
    pointing: dict[str, Any] | None,
) -> QueryRecord:
    """Check the ground truth of row ``r`` and score it; with ``save_masks`` the mask RLE and points go along, and
    the pointing figures (:func:`_pointing`) are kept with the scores."""
    if cfg.save_masks:
        extra["mask_rle"] = rle_encode(pred) if pred is not None else None
        if out.pred_masks[r].shape[0] > 0 and out.point_coords[r].shape[1] > 0:
            extra["points"] = [[round(float(v), 3) for v in p] for p in out.point_coords[r][0].tolist()]
            extra["point_labels"] = [int(v) for v in out.point_labels[r][0].tolist()]
    gt_exists = meta.get("exists")
    if gt is not None and gt_exists and not meta.get("no_target") and not (gt == 1).any():
        raise InvalidAnnotation(
            f"{meta.get('image_path')}: the query {meta.get('query')!r} refers to an object, but its ground-truth "
            "mask is empty (an empty prediction would score IoU 1); fix the annotation or leave it out"
        )
    return QueryRecord.score(
        position,
        pred=pred,
        gt=gt,
        gt_exists=None if gt_exists is None else bool(gt_exists),
        pred_exists=pred_exists,
        meta=meta,
        extra=extra,
        pointing=pointing,
    )


def _pointing(model: ReadModel, out: ReadOutput, r: int, gt: np.ndarray | None) -> dict[str, Any] | None:
    """Where row ``r``'s first ``[SEG]`` map points (read.evaluation.pointing); None for a row without a ``[SEG]``
    or a ground-truth object."""
    if out.pred_masks[r].shape[0] == 0 or gt is None or not (gt == 1).any():
        return None
    cfg = model.config
    return query_pointing(
        out.similarity[r][0], gt, out.point_coords[r][0], out.point_labels[r][0], cfg.sasp, cfg.model.vision.image_size
    )


def _resume(
    model: ReadModel,
    dataset: Any,
    cfg: EvalConfig,
    out_dir: Path | None,
    rank: int,
    world_size: int,
    fingerprint: dict[str, Any] | None,
) -> tuple[list[QueryRecord], str | None]:
    """Compare and write the run fingerprint; return the records an earlier run of the same evaluation left in
    ``out_dir`` and, when records of another evaluation were found, why they are discarded."""
    if out_dir is None:
        return [], None
    decision = None
    if rank == 0:  # one process hashes the files; the others get its verdict
        cache = DigestCache(out_dir / DIGEST_CACHE)
        expected = {**run_fingerprint(model, dataset, cfg, cache), **(fingerprint or {})}
        reason = fingerprint_change(out_dir, expected) if cfg.resume else None
        decision = (expected, reason)
    if world_size > 1:
        decision = broadcast(decision)
    expected, reason = decision
    fresh = not cfg.resume or reason is not None
    if reason is not None and rank == 0:
        logger.warning("%s: %s; starting over", out_dir, reason)
    previous = [] if fresh else load_records(out_dir)
    barrier()  # every rank has read the files before rank 0 touches them
    if rank == 0:
        start_output_dir(out_dir, expected, fresh=fresh)
    return previous, reason


class _IndexedSamples(torch.utils.data.Dataset):
    """The pending images of an evaluation dataset, each with its index."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Sample] | DataError:
        index = self.indices[i]
        try:
            sample = self.dataset[index]
        except DataError as e:  # handed to the main process as is (see _CollateOrError)
            return e
        if not sample.queries:
            raise ValueError(f"{sample.image_path}: evaluation image {index} has no query")
        return index, sample


class _CollateOrError:
    """The collator, plus the position of every row; a data error (raised here, or returned by
    ``_IndexedSamples`` for a sample) is returned instead of raised. A DataLoader worker would wrap a raised error in
    its own traceback; returned, it reaches the evaluation loop unchanged and is raised there with its one-line
    message."""

    def __init__(self, collator: ReadCollator) -> None:
        self.collator = collator

    def __call__(
        self, items: list[tuple[int, Sample] | DataError]
    ) -> tuple[ReadBatch, list[QueryPosition]] | DataError:
        for item in items:
            if isinstance(item, DataError):
                return item
        try:
            batch = self.collator([sample for _, sample in items])
        except DataError as e:
            return e
        # The collator is strict (no row is dropped), so its rows are the queries of the samples, in order.
        positions = [
            QueryPosition(index, j, len(sample.queries)) for index, sample in items for j in range(len(sample.queries))
        ]
        if len(positions) != batch.num_rows:
            raise RuntimeError(f"the collator made {batch.num_rows} rows of {len(positions)} queries")
        return batch, positions


def _check_context(batch: ReadBatch, context: int) -> None:
    """Refuse rows longer than the language model's context (positions beyond it give meaningless states)."""
    lengths = batch.attention_mask.sum(dim=1)
    too_long = (lengths > context).nonzero().flatten().tolist()
    if too_long:
        r = too_long[0]
        raise DataError(
            f"{batch.meta[r].get('image_path')}: the prompt is {int(lengths[r])} tokens (image tokens included), "
            f"longer than the model's context of {context} (model.text.max_position_embeddings)"
        )


def _run_shard(
    model: ReadModel,
    tokenizer: ReadTokenizer,
    dataset: Any,
    indices: list[int],
    cfg: EvalConfig,
    out_dir: Path | None,
    rank: int,
) -> list[QueryRecord]:
    """Evaluate the images ``indices``; append full records to this rank's part file; return them without details."""
    model_cfg = model.config.model
    padding_side = "right" if cfg.mode == "teacher" else "left"
    collator = ReadCollator.from_config(
        model.config, tokenizer, template=cfg.conv_type, padding_side=padding_side, inference=True
    )  # evaluation never drops a row
    loader = DataLoader(
        _IndexedSamples(dataset, indices),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=_CollateOrError(collator),
    )
    part = None
    if out_dir is not None:
        path = part_path(out_dir, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(path)
        part = path.open("a", encoding="utf-8")
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc=f"eval {cfg.mode}", unit="img", dynamic_ncols=True)
    new_records: list[QueryRecord] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for item in loader:
                if isinstance(item, DataError):
                    raise item
                batch, positions = item
                _check_context(batch, model_cfg.text.max_position_embeddings)
                if cfg.mode == "teacher":
                    records, out = score_teacher_forced(model, batch, positions, cfg)
                else:
                    records, out = score_generation(model, batch, positions, tokenizer, cfg)
                if out_dir is not None and cfg.vis and any(r.index < cfg.vis for r in records):
                    _write_pictures(records, batch, out, out_dir / VIS_DIR, model, cfg.vis)
                if part is not None:  # one write per batch, flushed: a kill loses at most this batch
                    part.write("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))
                    part.flush()
                new_records.extend(r.light() for r in records)
                if bar is not None:
                    bar.update(batch.num_images)
    finally:
        if part is not None:
            part.close()
        if bar is not None:
            bar.close()
        model.train(was_training)
    return new_records


def _write_pictures(
    records: list[QueryRecord], batch: ReadBatch, out: ReadOutput, directory: Path, model: ReadModel, limit: int
) -> None:
    """One PNG per row of the first ``limit`` images: image | ground truth | prediction | similarity + points (for a
    model without SasP, the points SasP would place from its map).

    The heat map undoes the CLIP crop with the model's ``sasp.geometry``, the way SasP placed the points.
    """
    from read.data.transforms import load_image
    from read.viz import draw_points, mask_overlay, save_png, similarity_heatmap

    clip_size, geometry = model.config.model.vision.image_size, model.config.sasp.geometry
    for r, rec in enumerate(records):
        if rec.index >= limit:
            continue
        image = load_image(batch.meta[r]["image_path"])
        gt = batch.gt_masks[r]
        gt_mask = gt[0].numpy() == 1 if gt.shape[0] else np.zeros(image.shape[:2], dtype=bool)
        logits = out.pred_masks[r]
        pred = (logits[0] > 0).cpu().numpy() if logits.shape[0] else np.zeros(image.shape[:2], dtype=bool)
        panels = [image, mask_overlay(image, gt_mask, colour=(0, 255, 0)), mask_overlay(image, pred)]
        if logits.shape[0] and out.similarity[r].shape[-1] > 0:
            coords, labels = out.point_coords[r][0], out.point_labels[r][0]
            if coords.shape[0] == 0:
                coords, labels = would_be_points(out.similarity[r][0], image.shape[:2], model.config.sasp, clip_size)
            panels.append(similarity_heatmap(image, out.similarity[r][0], clip_size, coords, labels, geometry=geometry))
        elif logits.shape[0] and out.point_coords[r].shape[1] > 0:
            panels.append(draw_points(image, out.point_coords[r][0], out.point_labels[r][0]))
        name = rec.key.replace("/", "_") + ".png"
        save_png(np.concatenate(panels, axis=1), directory / name)
