"""Output folders that belong to one run, so that a run never overwrites an earlier one's files or mixes with them."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["RunFolder", "fresh_run_dir"]


def fresh_run_dir(root: str | Path) -> Path:
    """Create and return a new folder under ``root`` named by the local date and time (``20250130-142501``), with
    ``-2``, ``-3`` ... appended when that name is taken. The folder is created here (never reused), so two runs, even
    started in the same second, get two folders."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{root}: no free run folder name for {stamp}")


class RunFolder:
    """The output folder of one run, created by :func:`fresh_run_dir` the first time :attr:`path` is read (a run
    that writes nothing leaves no empty folder behind).

    Arguments:
        root: where the run folders go.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = fresh_run_dir(self.root)
        return self._path
