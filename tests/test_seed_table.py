"""scripts/seed_table.py: mean and spread over seeds of quickstart reports, with hand-computed answers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("seed_table", ROOT / "scripts" / "seed_table.py")
seed_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_table)


def _metrics(path: Path, read_giou: float, lisa_giou: float, peak: float | None, extra: str | None = None) -> Path:
    def run(giou: float) -> dict:
        entry = {
            "overall": {"giou": giou, "ciou": giou - 0.1, "num_masks": 200},
            "short": {"giou": giou + 0.05, "ciou": 0.0, "num_masks": 100},
            "long": {"giou": giou - 0.05, "ciou": 0.0, "num_masks": 100},
        }
        if peak is not None:
            entry["pointing"] = {"num_queries": 200, "peak_in_target": peak, "pos_in_target": 0.5, "neg_outside": 1}
        return entry

    runs = {"read": run(read_giou), "lisa": run(lisa_giou)}
    if extra:
        runs[extra] = run(0.9)
    path.write_text(json.dumps({"runs": runs}))
    return path


def test_mean_and_sample_sd_over_three_seeds(tmp_path):
    files = [
        _metrics(tmp_path / "a.json", 0.30, 0.20, 0.10),
        _metrics(tmp_path / "b.json", 0.40, 0.20, 0.20, extra="discrete"),
        _metrics(tmp_path / "c.json", 0.50, 0.20, 0.60),
    ]
    table, left_out = seed_table.seed_table(files)
    assert list(table) == ["read", "lisa"] and left_out == ["discrete"]
    g = table["read"]["gIoU"]
    assert g["mean"] == pytest.approx(0.4) and g["sd"] == pytest.approx(0.1) and (g["min"], g["max"]) == (0.3, 0.5)
    assert table["read"]["cIoU"]["mean"] == pytest.approx(0.3)
    assert table["read"]["long gIoU"]["mean"] == pytest.approx(0.35)
    assert table["lisa"]["gIoU"]["sd"] == pytest.approx(0.0, abs=1e-12)
    peak = table["read"]["map peak in target"]
    assert peak["mean"] == pytest.approx(0.3) and peak["sd"] == pytest.approx(math.sqrt(0.07))
    text = seed_table.format_markdown(table, 3)
    assert "| read | 0.400 ± 0.100 (0.300-0.500) |" in text
    assert "30.0 ± 26.5 % (10.0-60.0)" in text


def test_a_column_missing_from_one_file_is_left_empty(tmp_path):
    files = [_metrics(tmp_path / "a.json", 0.3, 0.2, 0.1), _metrics(tmp_path / "b.json", 0.4, 0.2, None)]
    table, _ = seed_table.seed_table(files)
    assert "map peak in target" not in table["read"] and table["read"]["gIoU"]["n"] == 2


def test_cli_prints_the_table_and_names_a_bad_file(tmp_path, capsys):
    good = _metrics(tmp_path / "a.json", 0.3, 0.2, 0.1)
    assert seed_table.main([str(good), "--json", str(tmp_path / "t.json")]) == 0
    assert "1 seed(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "t.json").read_text())["runs"]["read"]["gIoU"]["mean"] == 0.3
    assert seed_table.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert seed_table.main([str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a report metrics file" in capsys.readouterr().err
