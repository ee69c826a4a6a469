"""Evaluation behind ``eval.py`` and training validation (docs/reference.md#metrics).

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

Per-query results are *records* (:class:`QueryRecord`). With an ``output_dir`` every process
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
twice, no padding: docs/reference.md#distributed-evaluation-without-duplicates); the records are gathered on rank 0
with ``gather_object``, de-duplicated by key, and the scores are broadcast so that every rank returns the same
:class:`EvalResult`.

Modules: ``config`` (:class:`EvalConfig`, :class:`EvalResult`), ``records`` (:class:`QueryRecord`, mask RLE),
``loop`` (:func:`evaluate`, the teacher-forced and generation scoring), ``output_dir`` (record files, fingerprint,
resume), ``distributed`` (sharding, gathering), ``summary`` (scores, table), ``metrics`` (IoU counts, gIoU / cIoU).
"""

from read.evaluation.config import MODES, EvalConfig, EvalResult
from read.evaluation.distributed import shard
from read.evaluation.loop import evaluate, score_generation, score_teacher_forced
from read.evaluation.output_dir import complete_images, load_records, run_fingerprint
from read.evaluation.records import QueryPosition, QueryRecord, rle_decode, rle_encode
from read.evaluation.summary import format_pointing, format_table, summarize

__all__ = [
    "EvalConfig",
    "EvalResult",
    "MODES",
    "QueryPosition",
    "QueryRecord",
    "complete_images",
    "evaluate",
    "format_pointing",
    "format_table",
    "load_records",
    "rle_decode",
    "rle_encode",
    "run_fingerprint",
    "score_generation",
    "score_teacher_forced",
    "shard",
    "summarize",
]
