"""scripts/quickstart.sh: its command line, and (slow) a whole run with a tiny schedule."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "quickstart.sh"


def _run(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_help_and_bad_arguments():
    usage = _run("--help")
    assert usage.returncode == 0 and "bash scripts/quickstart.sh --compare" in usage.stdout
    bad = _run("--bogus")
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr
    missing = _run("--out")
    assert missing.returncode == 2 and "--out needs a value" in missing.stderr


def test_refuses_to_overwrite_a_finished_run(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text("{}")
    done = _run("--out", str(tmp_path))
    assert done.returncode == 2 and "already holds a finished quickstart" in done.stderr


@pytest.mark.slow
def test_whole_quickstart_with_a_tiny_schedule(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--ablation", "--seed", "3", "--out", str(out), "--data", str(data), "--",
         "train.epochs=1", "train.steps_per_epoch=3", "train.save_every=3"],
        capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == str(out / "report" / "metrics.json")
    metrics = json.loads(Path(last).read_text())
    assert set(metrics["runs"]) == {"read", "lisa", "discrete"}
    for run in metrics["runs"].values():
        assert set(run["overall"]) == {"giou", "ciou", "num_masks"} and run["overall"]["num_masks"] == 200
        assert run["train_steps"] == 3
        # every run reports where its similarity map points (LISA's [SEG] state has a map too)
        assert run["pointing"]["num_queries"] == 200 and 0 <= run["pointing"]["peak_in_target"] <= 1
    assert metrics["chance"]["overall"]["random_object"]["giou"] == pytest.approx(1 / 3, abs=1e-3)
    for name in ("metrics.json", "loss_curve.png", "predictions.png"):
        assert (out / "report" / name).is_file()
    timing = json.loads((out / "timing.json").read_text())
    assert {"setup", "data", "train_read", "eval_read", "train_lisa", "eval_lisa", "train_discrete"} <= set(timing)
    assert "pointing: the similarity map's peak is inside the target" in (out / "eval_read.log").read_text()
    for name in ("read", "lisa", "discrete"):  # two data-parallel training processes, as the recipe's batch assumes
        checkpoints = out / name / "checkpoints"
        latest = checkpoints / (checkpoints / "latest").read_text().strip()
        assert json.loads((latest / "model_meta.json").read_text())["world_size"] == 2
    configs = {name: json.loads((out / name / "config.json").read_text()) for name in ("read", "lisa", "discrete")}
    for config in configs.values():  # READ's recipe: fine-tuned from the shipped base with READ's loss
        assert config["model"]["llava_path"] == "assets/synthetic_base/llava" and config["loss"]["query_weight"] == 0
        assert config["lora"]["enabled"] and config["train"]["seed"] == 3
    assert [configs[n]["sasp"]["enabled"] for n in ("read", "lisa", "discrete")] == [True, False, True]
    assert [configs[n]["sasp"]["dtoc"] for n in ("read", "discrete")] == [True, False]
