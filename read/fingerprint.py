"""Content fingerprints of the files an evaluation depends on: weights, annotations, images.

An interrupted evaluation may resume only with the records of the same model on the same data with the same
settings. Paths say nothing about that (an export into the same directory replaces the weights), so the files are
identified by the SHA-256 of their content. Hashing a 14 GB checkpoint takes a while, so every digest is kept in a
small JSON cache beside the results (:class:`DigestCache`) and reused while the file's size, modification time,
change time and inode are those it was computed for; any rewrite of the file changes at least one of them.

    cache = DigestCache(Path(output_dir) / DIGEST_CACHE)
    weights = weights_fingerprint({"model": model_dir}, cache)     # {"model/model.safetensors": sha256, ...}
    data = files_fingerprint(dataset.source_files(), dataset.root, cache)
    cache.save()
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DIGEST_CACHE",
    "DigestCache",
    "describe_change",
    "file_sha256",
    "files_fingerprint",
    "model_files",
    "shared_weights_fingerprint",
    "weights_fingerprint",
]

DIGEST_CACHE = "file_digests.json"
# Files of a model directory that determine its outputs: weights, configs, tokenizer.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model")
# Files an evaluation may write into a model directory used as its output directory.
NOT_MODEL_FILES = ("results.json", DIGEST_CACHE)
_CHUNK = 8 << 20
_PROGRESS_BYTES = 1 << 30  # show a progress bar when hashing more than this


def file_sha256(path: str | os.PathLike, progress: Any = None) -> str:
    """The SHA-256 of a file's content, as hex; ``progress`` (a tqdm bar) is advanced by the bytes read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class DigestCache:
    """SHA-256 digests of files, kept in a JSON file and reused while a file is unchanged.

    Arguments:
        path: the cache file (created by :meth:`save`); None keeps the digests in memory only.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, json.JSONDecodeError):
                logger.warning("%s: unreadable digest cache, hashing the files again", self.path)

    def digests(self, paths: Iterable[str | os.PathLike], desc: str = "hashing") -> dict[str, str]:
        """{path as given: sha256} for ``paths``; files without a valid cached digest are hashed (with a progress
        bar when that is more than 1 GiB).

        Raises:
            FileNotFoundError: a file does not exist.
        """
        paths = [Path(p) for p in paths]
        keys = {p: _stat_key(p) for p in paths}
        todo = [p for p in paths if self._cached(p, keys[p]) is None]
        total = sum(keys[p][0] for p in todo)
        bar = None
        if total > _PROGRESS_BYTES:
            from tqdm import tqdm

            logger.info("%s %d file(s), %.1f GB (once: the digests are cached in %s)", desc, len(todo), total / 1e9,
                        self.path)  # fmt: skip
            bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True)
        try:
            for p in todo:
                self._entries[str(p.resolve())] = {"stat": keys[p], "sha256": file_sha256(p, bar)}
                self._dirty = True
        finally:
            if bar is not None:
                bar.close()
        return {str(p): self._cached(p, keys[p]) or "" for p in paths}

    def _cached(self, path: Path, key: list[int]) -> str | None:
        entry = self._entries.get(str(path.resolve()))
        if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        return None

    def save(self) -> None:
        """Write the cache (atomically) if a digest was added."""
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self._entries, indent=0) + "\n")
        tmp.replace(self.path)
        self._dirty = False


def model_files(directory: str | os.PathLike) -> list[Path]:
    """The files of a model directory that determine its outputs: the top-level weight, config and tokenizer files
    (suffixes in ``MODEL_FILE_SUFFIXES``; hidden files and what an evaluation writes there are left out), sorted.
    Works for ``save_pretrained`` directories (``model.safetensors``, ``read_config.json``, tokenizer files),
    released checkpoints (``pytorch_model-*.bin`` shards and their index, ``config.json``) and CLIP towers."""
    d = Path(directory)
    return sorted(
        p for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix in MODEL_FILE_SUFFIXES
        and p.name not in NOT_MODEL_FILES
    )  # fmt: skip


def weights_fingerprint(directories: Mapping[str, str | os.PathLike | None], cache: DigestCache) -> dict[str, str]:
    """{"<name>/<file>": sha256} over the :func:`model_files` of each named directory (None entries are skipped).

    Example: ``weights_fingerprint({"model": ckpt_dir, "vision_tower": clip_dir}, cache)``.
    """
    out: dict[str, str] = {}
    for name, directory in directories.items():
        if directory is None:
            continue
        files = model_files(directory)
        digests = cache.digests(files, desc=f"fingerprinting {name} files")
        out.update({f"{name}/{p.name}": digests[str(p)] for p in files})
    return out


def shared_weights_fingerprint(
    directories: Mapping[str, str | os.PathLike | None], cache_path: str | os.PathLike
) -> dict[str, str]:
    """:func:`weights_fingerprint` computed by rank 0 alone (digests cached in ``cache_path``) and shared with the
    other processes of an initialised ``torch.distributed`` group; the same result on every rank."""
    import torch.distributed as dist

    group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    result = None
    if not group or dist.get_rank() == 0:
        cache = DigestCache(cache_path)
        result = weights_fingerprint(directories, cache)
        cache.save()
    if group:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result


def files_fingerprint(paths: Iterable[str | os.PathLike], root: str | os.PathLike, cache: DigestCache) -> str:
    """One SHA-256 over the files' paths relative to ``root`` and their digests (order does not matter)."""
    paths = [str(p) for p in paths]
    digests = cache.digests(paths, desc="fingerprinting the data")
    combined = hashlib.sha256()
    for rel, p in sorted((os.path.relpath(p, root), p) for p in paths):
        combined.update(f"{rel}\0{digests[p]}\n".encode())
    return combined.hexdigest()


def describe_change(stored: Mapping[str, Any], expected: Mapping[str, Any], limit: int = 3) -> str | None:
    """What differs between two fingerprints, in a few words; None when they are equal.

    Nested dicts (the weights) are named by their changed entries, long values are abbreviated:
    ``"weights changed (model/model.safetensors), conv_type: 'llava_v1' -> 'vicuna_v1'"``.
    """
    parts = []
    for key in sorted(set(stored) | set(expected)):
        old, new = stored.get(key), expected.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            names = ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")
            parts.append(f"{key} changed ({names})")
        elif key in ("weights", "data"):
            parts.append(f"{key} changed" if old is not None else f"{key} not recorded")
        else:
            parts.append(f"{key}: {_short(old)} -> {_short(new)}")
    return ", ".join(parts) or None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
