"""scripts/check_data.py on tiny on-disk datasets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fixtures import write_all
from read.cli import run_main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_data", ROOT / "scripts" / "check_data.py")
check_data = importlib.util.module_from_spec(_spec)
sys.modules["check_data"] = check_data  # dataclasses look their module up while the script is executed
_spec.loader.exec_module(check_data)


@pytest.fixture()
def root(tmp_path):
    write_all(tmp_path)
    return tmp_path


def test_everything_present(root, capsys):
    assert check_data.main(["--dataset_dir", str(root), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "== ReasonSeg (reason_seg): OK" in out
    assert "train: 3 images, 3 json (1 long queries, 1 with false_premise_QA)" in out
    assert "== fprefcoco (refs berkeley_exclude_unified): OK" in out
    assert "val: 1 refs, 2 sentences (1 false premises), 1 images (1 present)" in out
    assert "== ade20k (sem_seg): OK" in out and "2 label maps, 150 classes" in out
    assert "2 conversations, 2 with a present image" in out
    assert "Summary: 17 dataset(s) checked, 17 usable, 0 unusable, 0 problem(s)" in out


def test_missing_and_corrupt_files_are_listed(root, capsys):
    missing = root / "refer_seg/images/mscoco/images/train2014/COCO_train2014_000000000002.jpg"
    missing.unlink()
    (root / "reason_seg/ReasonSeg/val/v1.jpg").write_bytes(b"garbage")
    (root / "cocostuff/train2017/000000000009.png").unlink()
    rc = check_data.main(["--dataset_dir", str(root), "--datasets", "refcoco", "ReasonSeg", "cocostuff", "--decode"])
    out = capsys.readouterr().out
    assert f"! missing image: {missing}" in out
    assert "! unreadable image: cannot decode image" in out and "v1.jpg" in out
    assert "== refcoco (refs unc_exclude_unified): PROBLEMS" in out
    # COCO-Stuff had its only label map: nothing to train on.
    assert "== cocostuff (sem_seg): UNUSABLE" in out and "Unusable: cocostuff (sem_seg)" in out
    assert rc == 1


def test_missing_refs_file_is_unusable(root, capsys):
    (root / "refer_seg/fprefcoco/refs(berkeley_exclude_unified).p").unlink()
    assert check_data.main(["--dataset_dir", str(root), "--datasets", "correct_refer_seg"]) == 1
    out = capsys.readouterr().out
    assert "== fprefcoco (refs berkeley_exclude_unified): UNUSABLE" in out
    assert "refs(berkeley_exclude_unified).p" in out
    assert "3 dataset(s) checked, 2 usable, 1 unusable" in out


def test_missing_dataset_dir(tmp_path, capsys):
    assert run_main(check_data.main, ["--dataset_dir", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"error: --dataset_dir: directory not found: {tmp_path / 'nope'}\n"


def test_unknown_name(root, capsys):
    assert run_main(check_data.main, ["--dataset_dir", str(root), "--datasets", "imagenet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --datasets: unknown dataset name 'imagenet'; give a type (reason_seg, ")
    assert len(err.splitlines()) == 1
