#!/usr/bin/env python
"""Mean and spread over seeds of quickstart reports (``<out>/report/metrics.json`` of scripts/make_report.py).

    python scripts/seed_table.py runs/seed1/report/metrics.json runs/seed2/report/metrics.json \\
        runs/seed3/report/metrics.json [--json table.json]

Prints one Markdown row per run name (read, lisa, discrete ...) found in every file: validation gIoU and cIoU
(overall, short, long) and the pointing figures, each as ``mean ± sd (min-max)`` over the files, with the sample
standard deviation (n - 1). A run name missing from some file is left out, and said so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    ("gIoU", ("overall", "giou")),
    ("cIoU", ("overall", "ciou")),
    ("short gIoU", ("short", "giou")),
    ("long gIoU", ("long", "giou")),
    ("map peak in target", ("pointing", "peak_in_target")),
    ("positive points in target", ("pointing", "pos_in_target")),
    ("negative points outside", ("pointing", "neg_outside")),
)


class SeedTableError(ValueError):
    """A metrics file that cannot be read or has no runs."""


def load_runs(path: str | Path) -> dict[str, dict[str, Any]]:
    """The ``runs`` of one metrics file (SeedTableError naming the file when it is missing or malformed)."""
    path = Path(path)
    if not path.is_file():
        raise SeedTableError(f"{path}: no such file")
    try:
        runs = json.loads(path.read_text()).get("runs")
    except (json.JSONDecodeError, AttributeError) as e:
        raise SeedTableError(f"{path}: not a report metrics file ({e})") from e
    if not isinstance(runs, dict) or not runs:
        raise SeedTableError(f"{path}: holds no runs")
    return runs


def _value(entry: dict[str, Any], keys: tuple[str, str]) -> float | None:
    group = entry.get(keys[0])
    value = group.get(keys[1]) if isinstance(group, dict) else None
    return None if value is None else float(value)


def describe(values: list[float]) -> dict[str, float]:
    """{"mean", "sd" (n - 1; 0 for one value), "min", "max", "n"} of a non-empty list."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}


def seed_table(files: list[str | Path]) -> tuple[dict[str, dict[str, dict[str, float]]], list[str]]:
    """Per run name and column, :func:`describe` over the files; also the run names left out (not in every file).

    A column is described only when every file has a value for it.
    """
    per_file = [load_runs(f) for f in files]
    names = list(per_file[0])
    for runs in per_file[1:]:
        names += [n for n in runs if n not in names]
    common = [n for n in names if all(n in runs for runs in per_file)]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in common:
        row = {}
        for column, keys in COLUMNS:
            values = [_value(runs[name], keys) for runs in per_file]
            if all(v is not None for v in values):
                row[column] = describe(values)  # type: ignore[arg-type]
        table[name] = row
    return table, [n for n in names if n not in common]


def format_markdown(table: dict[str, dict[str, dict[str, float]]], num_files: int) -> str:
    """The table as Markdown, fractions as percentages for the pointing columns."""
    header = ["run"] + [c for c, _ in COLUMNS]
    lines = [
        f"{num_files} seed(s): mean ± sd (min-max)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, row in table.items():
        cells = [name]
        for column, keys in COLUMNS:
            d = row.get(column)
            if d is None:
                cells.append("-")
            elif keys[0] == "pointing":
                cells.append(
                    f"{100 * d['mean']:.1f} ± {100 * d['sd']:.1f} % ({100 * d['min']:.1f}-{100 * d['max']:.1f})"
                )
            else:
                cells.append(f"{d['mean']:.3f} ± {d['sd']:.3f} ({d['min']:.3f}-{d['max']:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", help="report metrics.json files, one per seed")
    p.add_argument("--json", help="also write the table as JSON here")
    args = p.parse_args(argv)
    try:
        table, left_out = seed_table(args.metrics)
    except SeedTableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_markdown(table, len(args.metrics)))
    if left_out:
        print(f"left out (not in every file): {', '.join(left_out)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"files": args.metrics, "runs": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
