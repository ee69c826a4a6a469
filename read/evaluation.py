"""The evaluation loop behind ``eval.py`` and training validation (SPEC 6).

One call of :func:`evaluate` scores one evaluation dataset (``read.data.eval_sets``) in one mode:

* ``"teacher"`` (the reference protocol, ``train_read.py --eval_only``): the prompt already holds the answer with
  ``[SEG]``; one forward pass gives one mask per ``[SEG]``. Rows without ``[SEG]`` (false premises of FP-RefCOCO) are
  recorded but not scored.
* ``"generate"`` (FP-RefCOCO's ``test_read.py``): question-only prompts, greedy decoding. The prediction is the mask
  of the first generated ``[SEG]`` (``pred_mask[0] > 0``); without ``[SEG]`` it is empty. Predicted existence = a
  ``[SEG]`` was generated and its mask is not empty. Every row is scored against its ground truth (all zero for a
  false premise), so a false positive only adds to the union ("Segment" cIoU); "See" is the existence accuracy.

Batching: ``batch_size`` images per step; their CLIP and SAM encoders run once, and all their rows (any number per
image) go through one language-model pass (right padding for teacher forcing, left padding for generation).

Per-query results are *records* (plain dicts, see :func:`query_record`). With an ``output_dir`` every process
appends its records to ``<output_dir>/parts/rank<r>.jsonl`` after each batch; at the end the records are merged
into ``<output_dir>/predictions.jsonl`` (sorted, one line per query, the predicted mask as COCO RLE). A rerun with
the same ``output_dir`` skips every image whose records are already there (an interrupted run resumes; a torn last
line from a killed process is discarded and its image evaluated again), provided the records come from the same
evaluation: ``<output_dir>/run.json`` holds a fingerprint of everything that determines them (the settings, the
content of the data files, and whatever the caller adds: :func:`read.fingerprint.weights_fingerprint` of the model's
files, prompts ...). When it differs, the run starts over, deleting the earlier records and pictures, and says why
in one warning line (``EvalResult.restart_reason``). ``vis=N`` draws the first N images under ``<output_dir>/vis/``
(image | ground truth | prediction | similarity map with the SasP points).

Ground truth. A query that refers to an object in the image (``meta["exists"]`` true, not a gRefCOCO no-target
expression) must have a non-empty target mask: an empty target predicted empty would score IoU 1. The evaluation
datasets check this when they are built (``read.data.eval_sets``); a row that still has one stops the evaluation
with an error naming its image. Rows longer than the language model's context are refused the same way.

Distributed: with an initialised ``torch.distributed`` process group (torchrun / deepspeed launch, gloo or nccl;
with nccl the current CUDA device must be set) each process takes every ``world_size``-th pending image (no image
twice, no padding [FIX SPEC 6.1]); the records are gathered on rank 0 with ``gather_object``, de-duplicated by key,
and the scores are broadcast so that every rank returns the same :class:`EvalResult`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from read.batch import ReadBatch
from read.data.collate import ReadCollator
from read.data.sample import DataError, InvalidAnnotation, Sample
from read.errors import FileFormatError
from read.fingerprint import DIGEST_CACHE, DigestCache, describe_change, files_fingerprint
from read.metrics import IGNORE_VALUE, SegmentationMeter, existence_accuracy, intersection_union
from read.model.read_model import ReadModel, ReadOutput
from read.tokenizer import ReadTokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "EvalResult",
    "MODES",
    "evaluate",
    "format_table",
    "gather_records",
    "load_records",
    "merge_records",
    "query_record",
    "rle_decode",
    "rle_encode",
    "run_fingerprint",
    "shard",
    "summarize",
]

Mode = Literal["teacher", "generate"]
MODES: tuple[str, ...] = ("teacher", "generate")
PARTS_DIR = "parts"
PREDICTIONS_FILE = "predictions.jsonl"
FINGERPRINT_FILE = "run.json"
VIS_DIR = "vis"

# Fields of a record that stay in memory and travel between processes; the rest (mask RLE, points, text) only
# goes to the per-query file.
LIGHT_FIELDS = (
    "key", "index", "query_index", "queries_in_image", "subset", "scored", "intersection", "union", "gt_area",
    "pred_area", "gt_exists", "pred_exists",
)  # fmt: skip


@dataclass
class EvalConfig:
    """Settings of one evaluation run.

    Attributes:
        mode: "teacher" (answer given, the reference protocol) or "generate" (greedy decoding).
        batch_size: images per step (their rows share one language-model pass).
        conv_type: conversation template: "llava_v1" (training, ReasonSeg/RefCOCO parity) or "vicuna_v1"
            (FP-RefCOCO parity, SPEC 4.4).
        max_new_tokens: generation budget per row (the reference uses 512).
        kv_cache: generation decodes with a KV cache (default); False re-encodes the whole sequence at every step
            as the reference does (same records, many times slower; for speed comparisons).
        num_workers: DataLoader worker processes for reading and preprocessing images.
        output_dir: where per-query records, predictions and pictures go; None keeps everything in memory (no
            resume).
        resume: skip images already recorded in ``output_dir``.
        save_masks: write the predicted masks (RLE) and points to the per-query file.
        vis: write pictures for the first ``vis`` images of the dataset.
        progress: show a progress bar (rank 0 only).
    """

    mode: Mode = "teacher"
    batch_size: int = 1
    conv_type: str = "llava_v1"
    max_new_tokens: int = 512
    kv_cache: bool = True
    num_workers: int = 0
    output_dir: str | None = None
    resume: bool = True
    save_masks: bool = True
    vis: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_workers < 0 or self.vis < 0:
            raise ValueError("num_workers and vis must be >= 0")


@dataclass
class EvalResult:
    """Scores of one dataset in one mode (identical on every rank).

    Attributes:
        mode: "teacher" or "generate".
        scores: see :func:`summarize`.
        records: the light per-query records of the whole split, sorted by (image index, query index).
        evaluated: images evaluated by this call (all processes of the group; resumed ones excluded).
        resumed: images taken from an earlier run's records.
        restart_reason: why the records found in ``output_dir`` were discarded (None when there were none, they
            were resumed, or ``resume`` was off).
    """

    mode: str
    scores: dict[str, Any]
    records: list[dict[str, Any]] = field(repr=False)
    evaluated: int = 0
    resumed: int = 0
    restart_reason: str | None = None


# ----------------------------------------------------------------------------------------------------------
# records, RLE, files


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of a binary (H, W) mask; ``counts`` as a str, so the result is JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: (H, W) uint8 in {0, 1}."""
    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})


def query_record(
    *,
    key: str,
    index: int,
    query_index: int,
    queries_in_image: int,
    pred: np.ndarray | None,
    gt: np.ndarray | None,
    gt_exists: bool | None,
    pred_exists: bool,
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of one query.

    Arguments:
        key: unique id of the query within the split.
        index: the image's index in the dataset; query_index: the row's position among the image's rows.
        queries_in_image: rows of that image (an image is complete once that many records exist).
        pred: (H, W) bool prediction, or None when the row has nothing to score (teacher row without ``[SEG]``).
        gt: (H, W) uint8 ground truth (0 / 1 / 255), or None (not scored).
        gt_exists: ground-truth existence (None when unknown); pred_exists: predicted existence.
        meta: the row's metadata from the dataset and the collator.
        extra: more fields for the per-query file (mask RLE, points, generated text ...).

    Returns:
        A JSON-ready dict with the light fields (``LIGHT_FIELDS``) and descriptive ones.
    """
    scored = pred is not None and gt is not None
    inter, union = intersection_union(pred, gt) if scored else (0, 0)
    is_sentence = meta.get("is_sentence")
    record = {
        "key": key,
        "index": int(index),
        "query_index": int(query_index),
        "queries_in_image": int(queries_in_image),
        "subset": None if is_sentence is None else ("long" if is_sentence else "short"),
        "scored": scored,
        "intersection": inter,
        "union": union,
        "gt_exists": None if gt_exists is None else bool(gt_exists),
        "pred_exists": bool(pred_exists),
        "gt_area": int((gt == 1).sum()) if gt is not None else 0,
        "ignored_area": int((gt == IGNORE_VALUE).sum()) if gt is not None else 0,
        "pred_area": int(pred.sum()) if pred is not None else 0,
        "image": meta.get("image_path"),
        "dataset": meta.get("dataset"),
        "query": meta.get("query"),
        "prompt": meta.get("prompt"),
    }
    for name in ("image_id", "ref_id", "sent_id"):
        if name in meta:
            record[name] = meta[name]
    if extra:
        record.update(extra)
    return record


def _light(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in LIGHT_FIELDS}


def _repair_jsonl(path: Path) -> None:
    """Cut a torn last line (a process killed mid-write) so that appending starts on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: discarding a torn last line (%d bytes)", path, len(data) - cut)
        with path.open("r+b") as f:
            f.truncate(cut)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return  # torn last line: that query is evaluated again
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise FileFormatError(f"{path}:{n}: not a JSON record ({e}); delete the file to start over") from e


def load_records(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every record found in ``output_dir`` (merged predictions, then per-process parts), one per key, sorted.

    The files are append-only logs, so the last record of a key wins: an image whose records were cut short by a
    kill and that was evaluated again keeps the records of its complete evaluation.
    """
    d = Path(output_dir)
    files = [d / PREDICTIONS_FILE] + sorted((d / PARTS_DIR).glob("*.jsonl"))
    latest: dict[str, dict[str, Any]] = {}
    for f in files:
        if f.is_file():
            latest.update((r["key"], r) for r in _read_jsonl(f))
    return merge_records([latest.values()])


def merge_records(lists: Iterable[Iterable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Concatenate record lists, keep the first record of every key, sort by (image index, query index).

    The sort makes the result independent of how the split was sharded, batched or resumed.
    """
    seen: dict[str, dict[str, Any]] = {}
    for records in lists:
        for r in records:
            seen.setdefault(r["key"], r)
    return sorted(seen.values(), key=lambda r: (r["index"], r["query_index"], r["key"]))


def complete_images(records: Iterable[dict[str, Any]]) -> set[int]:
    """Indices of the images all of whose rows have a record."""
    counts: dict[int, int] = {}
    expected: dict[int, int] = {}
    for r in records:
        counts[r["index"]] = counts.get(r["index"], 0) + 1
        expected[r["index"]] = r["queries_in_image"]
    return {i for i, n in counts.items() if n >= expected[i]}


# ----------------------------------------------------------------------------------------------------------
# sharding and gathering


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's share of ``indices``: every ``world_size``-th one starting at ``rank``.

    The shares of all ranks are disjoint and cover ``indices`` exactly (no padding, unlike DistributedSampler).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(indices[rank::world_size])


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    """(rank, world_size, whether a process group is there to gather with)."""
    initialised = dist.is_available() and dist.is_initialized()
    if initialised:
        r, w = dist.get_rank(), dist.get_world_size()
        if (rank is not None and rank != r) or (world_size is not None and world_size != w):
            raise ValueError(f"rank/world_size ({rank}/{world_size}) disagree with torch.distributed ({r}/{w})")
        return r, w, w > 1
    return rank or 0, world_size or 1, False


def gather_records(records: list[dict[str, Any]], *, dst: int = 0) -> list[list[dict[str, Any]]] | None:
    """Collect every process's records on ``dst`` with ``torch.distributed.gather_object``.

    Returns:
        On ``dst``: one list per rank, in rank order; elsewhere None. Without a process group: ``[records]``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [records]
    rank = dist.get_rank()
    out: list[Any] | None = [None] * dist.get_world_size() if rank == dst else None
    dist.gather_object(records, out, dst=dst)
    return out


def _broadcast(obj: Any, src: int = 0) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------
# scores


def summarize(records: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Scores from per-query records.

    Returns:
        {"overall": {...}, ["short": {...}, "long": {...}] (when the records carry ``is_sentence``),
        "see": existence accuracy (generation mode, else None), "num_images", "num_queries", "num_scored"}. Each
        group is ``SegmentationMeter.compute()`` (giou, ciou, num_masks, intersection, union, duplicates).
    """
    scored = [r for r in records if r["scored"]]
    groups: dict[str, list[dict[str, Any]]] = {"overall": scored}
    if any(r["subset"] is not None for r in scored):
        groups["short"] = [r for r in scored if r["subset"] == "short"]
        groups["long"] = [r for r in scored if r["subset"] == "long"]
    out: dict[str, Any] = {}
    for name, group in groups.items():
        meter = SegmentationMeter()
        for r in group:
            meter.add(r["intersection"], r["union"], key=r["key"])
        out[name] = meter.compute()
    see = None
    if mode == "generate":
        known = [r for r in records if r["gt_exists"] is not None]
        see = existence_accuracy([r["pred_exists"] for r in known], [r["gt_exists"] for r in known])
    out["see"] = see
    out["num_images"] = len({r["index"] for r in records})
    out["num_queries"] = len(records)
    out["num_scored"] = len(scored)
    return out


def format_table(results: dict[str, EvalResult], title: str = "") -> str:
    """A plain-text table of gIoU / cIoU (percent), counts and See per mode and subset."""
    lines = [title] if title else []
    lines.append(f"{'mode':<9} {'subset':<8} {'gIoU':>7} {'cIoU':>7} {'queries':>8} {'See':>7}")
    for mode, res in results.items():
        for name in ("overall", "short", "long"):
            if name not in res.scores:
                continue
            s = res.scores[name]
            see = res.scores["see"] if name == "overall" and res.scores["see"] is not None else None
            see_txt = f"{100 * see:7.2f}" if see is not None else f"{'-':>7}"
            lines.append(
                f"{mode:<9} {name:<8} {100 * s['giou']:7.2f} {100 * s['ciou']:7.2f} {s['num_masks']:8d} {see_txt}"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# the loop


class _IndexedSamples(torch.utils.data.Dataset):
    """The pending images of an evaluation dataset; tags every row with its image index and position."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample | DataError:
        index = self.indices[i]
        try:
            sample = self.dataset[index]
        except DataError as e:  # handed to the main process as is (see _CollateOrError)
            return e
        if not sample.queries:
            raise ValueError(f"{sample.image_path}: evaluation image {index} has no query")
        for j, q in enumerate(sample.queries):
            q.meta = {**q.meta, "_index": index, "_query": j, "_queries": len(sample.queries)}
        return sample


class _CollateOrError:
    """The collator, except that a data error (raised here, or returned by ``_IndexedSamples`` for a sample) is
    returned instead of raised. A DataLoader worker would wrap a raised error in its own traceback; returned, it
    reaches the evaluation loop unchanged and is raised there with its one-line message."""

    def __init__(self, collator: ReadCollator) -> None:
        self.collator = collator

    def __call__(self, items: list[Sample | DataError]) -> ReadBatch | DataError:
        for item in items:
            if isinstance(item, DataError):
                return item
        try:
            return self.collator(items)
        except DataError as e:
            return e


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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


def _score_batch(
    model: ReadModel, batch: ReadBatch, tokenizer: ReadTokenizer, cfg: EvalConfig
) -> tuple[list[dict[str, Any]], ReadOutput]:
    """Run one batch and turn every row into a record (plus the model outputs, for pictures)."""
    gt_masks = batch.gt_masks
    run = replace(batch, labels=None, gt_masks=None).to(_model_device(model))
    new_tokens = None
    if cfg.mode == "teacher":
        out = model(run, return_logits=False)  # scoring reads the masks only
    else:
        new_tokens, out = model.generate(
            run,
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=cfg.kv_cache,
        )
    records = []
    for r, meta in enumerate(batch.meta):
        gt_all = gt_masks[r].numpy()  # (k, H, W) uint8
        logits = out.pred_masks[r]  # (k', H, W)
        extra: dict[str, Any] = {"num_seg": int(logits.shape[0])}
        if cfg.mode == "teacher":
            if logits.shape[0] > 1:
                raise ValueError(f"{meta.get('image_path')}: evaluation rows must hold at most one [SEG]")
            has_mask = logits.shape[0] == 1
            pred = (logits[0] > 0).cpu().numpy() if has_mask else None
            gt = gt_all[0] if has_mask else None
            pred_exists = bool(has_mask and pred.any())
        else:
            if gt_all.shape[0] != 1:
                raise ValueError(f"{meta.get('image_path')}: a generation row needs one ground-truth mask")
            gt = gt_all[0]
            if logits.shape[0] > 0:
                pred = (logits[0] > 0).cpu().numpy()
            else:
                pred = np.zeros(gt.shape, dtype=bool)
            pred_exists = bool(logits.shape[0] > 0 and pred.any())
            ids = new_tokens[r].tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            extra["text"] = tokenizer.decode(ids, skip_special_tokens=True)
        if cfg.save_masks:
            extra["mask_rle"] = rle_encode(pred) if pred is not None else None
            if logits.shape[0] > 0 and out.point_coords[r].shape[1] > 0:
                extra["points"] = [[round(float(v), 3) for v in p] for p in out.point_coords[r][0].tolist()]
                extra["point_labels"] = [int(v) for v in out.point_labels[r][0].tolist()]
        gt_exists = meta.get("exists")
        if gt is not None and gt_exists and not meta.get("no_target") and not (gt == 1).any():
            raise InvalidAnnotation(
                f"{meta.get('image_path')}: the query {meta.get('query')!r} refers to an object, but its ground-truth "
                "mask is empty (an empty prediction would score IoU 1); fix the annotation or leave it out"
            )
        records.append(
            query_record(
                key=f"{meta['_index']}/{meta['_query']}",
                index=meta["_index"],
                query_index=meta["_query"],
                queries_in_image=meta["_queries"],
                pred=pred,
                gt=gt,
                gt_exists=None if gt_exists is None else bool(gt_exists),
                pred_exists=pred_exists,
                meta=meta,
                extra=extra,
            )
        )
    return records, out


def _write_pictures(
    records: list[dict[str, Any]],
    batch: ReadBatch,
    out: ReadOutput,
    directory: Path,
    clip_size: int,
    limit: int,
    geometry: str,
) -> None:
    """One PNG per row of the first ``limit`` images: image | ground truth | prediction | similarity + points.

    ``geometry`` is the model's ``sasp.geometry``: the heat map undoes the CLIP crop the way SasP placed the points.
    """
    from read.data.transforms import load_image
    from read.viz import draw_points, mask_overlay, save_png, similarity_heatmap

    for r, rec in enumerate(records):
        if rec["index"] >= limit:
            continue
        image = load_image(batch.meta[r]["image_path"])
        gt = batch.gt_masks[r]
        gt_mask = gt[0].numpy() == 1 if gt.shape[0] else np.zeros(image.shape[:2], dtype=bool)
        logits = out.pred_masks[r]
        pred = (logits[0] > 0).cpu().numpy() if logits.shape[0] else np.zeros(image.shape[:2], dtype=bool)
        panels = [image, mask_overlay(image, gt_mask, colour=(0, 255, 0)), mask_overlay(image, pred)]
        if logits.shape[0] and out.similarity[r].shape[-1] > 0:
            panels.append(
                similarity_heatmap(
                    image,
                    out.similarity[r][0],
                    clip_size,
                    out.point_coords[r][0],
                    out.point_labels[r][0],
                    geometry=geometry,
                )
            )
        elif logits.shape[0] and out.point_coords[r].shape[1] > 0:
            panels.append(draw_points(image, out.point_coords[r][0], out.point_labels[r][0]))
        name = rec["key"].replace("/", "_") + ".png"
        save_png(np.concatenate(panels, axis=1), directory / name)


def evaluate(
    model: ReadModel,
    tokenizer: ReadTokenizer,
    dataset: Any,
    config: EvalConfig | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> EvalResult:
    """Score ``dataset`` with ``model`` (see the module docstring for modes, files, resume and sharding).

    Arguments:
        model: a :class:`ReadModel` (under DeepSpeed pass ``engine.module``); put into eval mode for the call.
        tokenizer: the model's tokenizer.
        dataset: an evaluation dataset (``read.data.eval_sets``) built for the mode: ``generation=True`` for
            "generate", False for "teacher"; ``len()`` and ``[i] -> Sample``.
        config: settings; default ``EvalConfig()`` (teacher forcing, batch 1, nothing written).
        fingerprint: JSON-ready values that determine the records besides what :func:`run_fingerprint` covers (the
            weights' content, prompts ...); stored in ``<output_dir>/run.json`` with it. Records of a run with
            another fingerprint are not resumed: the run starts over.
        rank, world_size: shard by hand without a process group (this call then scores its own shard only, in
            memory; merge the shards' records with :func:`merge_records` and :func:`summarize`). Leave None under
            torchrun.

    Returns:
        :class:`EvalResult`; identical on every rank of a process group.
    """
    cfg = config or EvalConfig()
    rank, world_size, gather = _dist_info(rank, world_size)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    if out_dir is not None and world_size > 1 and not gather:
        raise ValueError("shards run by hand (rank/world_size without a process group) cannot share an output_dir")

    previous, restart_reason = _resume(model, dataset, cfg, out_dir, rank, gather, fingerprint)
    done = complete_images(previous)
    previous = [_light(r) for r in previous if r["index"] in done]
    _barrier()  # nobody writes before every rank has read the same records
    if done:
        logger.info("resuming: %d of %d images already evaluated", len(done), len(dataset))
    pending = [i for i in range(len(dataset)) if i not in done]
    new_records = _run_shard(model, tokenizer, dataset, shard(pending, rank, world_size), cfg, out_dir, rank)

    if not gather:
        records = merge_records([previous, new_records])
        if out_dir is not None:
            _finalize_files(out_dir)
        evaluated = len({r["index"] for r in new_records})
        return EvalResult(cfg.mode, summarize(records, cfg.mode), records, evaluated, len(done), restart_reason)
    gathered = gather_records(new_records)
    payload = None
    if rank == 0:
        records = merge_records([previous, *gathered])
        if out_dir is not None:
            _finalize_files(out_dir)
        evaluated = len({r["index"] for rank_records in gathered for r in rank_records})
        payload = (summarize(records, cfg.mode), records, evaluated)
    scores, records, evaluated = _broadcast(payload)
    return EvalResult(cfg.mode, scores, records, evaluated, len(done), restart_reason)


def _resume(
    model: ReadModel,
    dataset: Any,
    cfg: EvalConfig,
    out_dir: Path | None,
    rank: int,
    gather: bool,
    fingerprint: dict[str, Any] | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Compare and write the run fingerprint; return the records an earlier run of the same evaluation left in
    ``out_dir`` and, when records of another evaluation were found, why they are discarded."""
    if out_dir is None:
        return [], None
    decision = None
    if rank == 0:  # one process hashes the files; the others get its verdict
        expected = {**run_fingerprint(model, dataset, cfg, DigestCache(out_dir / DIGEST_CACHE)), **(fingerprint or {})}
        reason = _fingerprint_change(out_dir, expected) if cfg.resume else None
        decision = (expected, reason)
    if gather:
        decision = _broadcast(decision)
    expected, reason = decision
    fresh = not cfg.resume or reason is not None
    if reason is not None and rank == 0:
        logger.warning("%s: %s; starting over", out_dir, reason)
    previous = [] if fresh else load_records(out_dir)
    _barrier()  # every rank has read the files before rank 0 touches them
    if rank == 0:
        _start_output_dir(out_dir, expected, fresh=fresh)
    return previous, reason


def _run_shard(
    model: ReadModel,
    tokenizer: ReadTokenizer,
    dataset: Any,
    indices: list[int],
    cfg: EvalConfig,
    out_dir: Path | None,
    rank: int,
) -> list[dict[str, Any]]:
    """Evaluate the images ``indices``; append full records to this rank's part file; return light records."""
    model_cfg = model.config.model
    collator = ReadCollator(
        tokenizer,
        cfg.conv_type,
        clip_size=model_cfg.vision.image_size,
        sam_size=model_cfg.sam.image_size,
        num_image_tokens=model_cfg.vision.num_patches,
        max_length=None,  # evaluation never drops a row
        padding_side="right" if cfg.mode == "teacher" else "left",
        strict=True,
    )
    loader = DataLoader(
        _IndexedSamples(dataset, indices),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=_CollateOrError(collator),
    )
    part = None
    if out_dir is not None:
        part_path = out_dir / PARTS_DIR / f"rank{rank:03d}.jsonl"
        part_path.parent.mkdir(parents=True, exist_ok=True)
        _repair_jsonl(part_path)
        part = part_path.open("a", encoding="utf-8")
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc=f"eval {cfg.mode}", unit="img", dynamic_ncols=True)
    new_records: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                if isinstance(batch, DataError):
                    raise batch
                _check_context(batch, model_cfg.text.max_position_embeddings)
                records, out = _score_batch(model, batch, tokenizer, cfg)
                if out_dir is not None and cfg.vis and any(r["index"] < cfg.vis for r in records):
                    _write_pictures(
                        records,
                        batch,
                        out,
                        out_dir / VIS_DIR,
                        model_cfg.vision.image_size,
                        cfg.vis,
                        model.config.sasp.geometry,
                    )
                if part is not None:  # one write per batch, flushed: a kill loses at most this batch
                    part.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                    part.flush()
                new_records.extend(_light(r) for r in records)
                if bar is not None:
                    bar.update(batch.num_images)
    finally:
        if part is not None:
            part.close()
        if bar is not None:
            bar.close()
        model.train(was_training)
    return new_records


def run_fingerprint(
    model: ReadModel, dataset: Any, cfg: EvalConfig, cache: DigestCache | None = None
) -> dict[str, Any]:
    """What determines the records apart from the weights: mode, template, SasP, dtype, device type, the dataset's
    identity and settings (``dataset.settings()``) and the content of its files (``dataset.source_files()``, see
    :func:`read.fingerprint.files_fingerprint`; digests cached in ``cache``)."""
    param = next(model.parameters())
    info: dict[str, Any] = {
        "mode": cfg.mode,
        "conv_type": cfg.conv_type,
        "dataset": getattr(dataset, "name", type(dataset).__name__),
        "num_images": len(dataset),
        "sasp": asdict(model.config.sasp),
        "dtype": str(param.dtype).replace("torch.", ""),
        "device": param.device.type,
    }
    if cfg.mode == "generate":
        info["max_new_tokens"] = cfg.max_new_tokens
    if hasattr(dataset, "settings"):
        info["dataset_settings"] = dataset.settings()
    if hasattr(dataset, "source_files"):
        cache = cache or DigestCache()
        info["data"] = files_fingerprint(dataset.source_files(), dataset.root, cache)
        cache.save()
    return json.loads(json.dumps(info))  # the JSON round trip makes it comparable with the stored copy


def _fingerprint_change(out_dir: Path, expected: dict[str, Any]) -> str | None:
    """Why the records in ``out_dir`` cannot be resumed (None when they can, or when there are none)."""
    path = out_dir / FINGERPRINT_FILE
    if not ((out_dir / PREDICTIONS_FILE).is_file() or any((out_dir / PARTS_DIR).glob("*.jsonl"))):
        return None  # nothing to resume or to discard
    if not path.is_file():
        return f"records without their {FINGERPRINT_FILE}, so their origin is unknown"
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return f"unreadable {FINGERPRINT_FILE}"
    change = describe_change(stored if isinstance(stored, dict) else {}, expected)
    return f"its records come from another evaluation ({change})" if change else None


def _start_output_dir(out_dir: Path, fingerprint: dict[str, Any], fresh: bool) -> None:
    """Write the fingerprint; on a fresh start remove earlier records and pictures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        stale = [out_dir / PREDICTIONS_FILE, *(out_dir / PARTS_DIR).glob("*.jsonl"), *(out_dir / VIS_DIR).glob("*.png")]
        for path in stale:
            path.unlink(missing_ok=True)
    (out_dir / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")


def _finalize_files(out_dir: Path) -> None:
    """Merge every record file into ``predictions.jsonl`` (sorted, one line per query) and drop the parts."""
    records = load_records(out_dir)
    tmp = out_dir / (PREDICTIONS_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out_dir / PREDICTIONS_FILE)
    for part in (out_dir / PARTS_DIR).glob("*.jsonl"):
        part.unlink()
