"""The files of an evaluation's ``output_dir``, and whether an earlier run's records may be resumed.

* ``parts/rank<r>.jsonl``: every process appends the records of each batch (append-only logs);
* ``predictions.jsonl``: at the end, every record merged, sorted, one line per query;
* ``run.json``: the fingerprint of everything that determines the records; records with another fingerprint are
  discarded and the run starts over;
* ``vis/``: the pictures of ``EvalConfig.vis``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from read.errors import FileFormatError
from read.evaluation.config import EvalConfig
from read.evaluation.records import QueryRecord
from read.fingerprint import DigestCache, describe_change, files_fingerprint
from read.model.read_model import ReadModel

logger = logging.getLogger(__name__)

PARTS_DIR = "parts"
PREDICTIONS_FILE = "predictions.jsonl"
FINGERPRINT_FILE = "run.json"
VIS_DIR = "vis"


def part_path(out_dir: Path, rank: int) -> Path:
    """The append-only record file of process ``rank``."""
    return out_dir / PARTS_DIR / f"rank{rank:03d}.jsonl"


def repair_jsonl(path: Path) -> None:
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


def load_records(output_dir: str | Path) -> list[QueryRecord]:
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
    return merge_records([[QueryRecord.from_json(r) for r in latest.values()]])


def merge_records(lists: Iterable[Iterable[QueryRecord]]) -> list[QueryRecord]:
    """Concatenate record lists, keep the first record of every key, sort by (image index, query index).

    The sort makes the result independent of how the split was sharded, batched or resumed.
    """
    seen: dict[str, QueryRecord] = {}
    for records in lists:
        for r in records:
            seen.setdefault(r.key, r)
    return sorted(seen.values(), key=lambda r: (r.index, r.query_index, r.key))


def complete_images(records: Iterable[QueryRecord]) -> set[int]:
    """Indices of the images all of whose rows have a record."""
    counts: dict[int, int] = {}
    expected: dict[int, int] = {}
    for r in records:
        counts[r.index] = counts.get(r.index, 0) + 1
        expected[r.index] = r.queries_in_image
    return {i for i, n in counts.items() if n >= expected[i]}


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


def fingerprint_change(out_dir: Path, expected: dict[str, Any]) -> str | None:
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


def start_output_dir(out_dir: Path, fingerprint: dict[str, Any], fresh: bool) -> None:
    """Write the fingerprint; on a fresh start remove earlier records and pictures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        stale = [out_dir / PREDICTIONS_FILE, *(out_dir / PARTS_DIR).glob("*.jsonl"), *(out_dir / VIS_DIR).glob("*.png")]
        for path in stale:
            path.unlink(missing_ok=True)
    (out_dir / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")


def finalize_files(out_dir: Path) -> None:
    """Merge every record file into ``predictions.jsonl`` (sorted, one line per query) and drop the parts."""
    records = load_records(out_dir)
    tmp = out_dir / (PREDICTIONS_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(out_dir / PREDICTIONS_FILE)
    for part in (out_dir / PARTS_DIR).glob("*.jsonl"):
        part.unlink()
