"""scripts/check_data.py on tiny on-disk datasets."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
from pathlib import Path

import pytest

from fixtures import write_all, write_bad_reason_seg_items, write_reason_seg, write_refcoco
from read.cli import run_main
from read.data.synthetic import SyntheticConfig, make_synthetic

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
    assert "== fprefcoco (refs(berkeley_exclude_unified).p (READ/SESAME convention)): OK" in out
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
    assert "== refcoco (refs(unc_exclude_unified).p (READ/SESAME convention)): PROBLEMS" in out
    # COCO-Stuff had its only label map: nothing to train on.
    assert "== cocostuff (sem_seg): UNUSABLE" in out and "Unusable: cocostuff (sem_seg)" in out
    assert rc == 2


def test_missing_refs_file_is_unusable(root, capsys):
    (root / "refer_seg/fprefcoco/refs(berkeley_exclude_unified).p").unlink()
    assert check_data.main(["--dataset_dir", str(root), "--datasets", "correct_refer_seg"]) == 2
    out = capsys.readouterr().out
    assert "== fprefcoco: UNUSABLE" in out
    assert "refs(berkeley_exclude_unified).p" in out
    assert "3 dataset(s) checked, 2 usable, 1 unusable" in out


def test_missing_dataset_dir(tmp_path, capsys):
    assert run_main(check_data.main, ["--dataset_dir", str(tmp_path / "nope")], error_status=2) == 2
    assert capsys.readouterr().err == f"error: --dataset_dir: directory not found: {tmp_path / 'nope'}\n"


def test_unknown_name(root, capsys):
    assert run_main(check_data.main, ["--dataset_dir", str(root), "--datasets", "imagenet"], error_status=2) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --datasets: unknown dataset name 'imagenet'; give a type (reason_seg, ")
    assert len(err.splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------
# as a user runs it


def test_standard_refs_files_are_detected_and_named(tmp_path, capsys):
    """LISA's standard RefCOCO files (refs(unc).p) only: usable, and the report says which file it used."""
    write_reason_seg(tmp_path)
    write_refcoco(tmp_path, "refcoco", "unc")
    write_refcoco(tmp_path, "refcocog", "umd")
    rc = check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "ReasonSeg", "refcoco", "refcocog",
                          "--decode"])  # fmt: skip
    out = capsys.readouterr().out
    assert "== refcoco (refs(unc).p (standard convention)): OK" in out
    assert "== refcocog (refs(umd).p (standard convention)): OK" in out
    assert "Summary: 3 dataset(s) checked, 3 usable, 0 unusable, 0 problem(s)" in out and rc == 0
    # both conventions present: READ/SESAME's, as training and evaluation pick
    write_refcoco(tmp_path, "refcoco", "unc_exclude_unified")
    assert check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "refcoco"]) == 0
    assert "== refcoco (refs(unc_exclude_unified).p (READ/SESAME convention)): OK" in capsys.readouterr().out
    assert check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "refcoco", "--refer_protocol", "lisa"]) == 0
    assert "== refcoco (refs(unc).p (standard convention)): OK" in capsys.readouterr().out


def test_reason_seg_checks_the_splits_that_exist(tmp_path, capsys):
    """The quickstart's data has train and val but no test split: usable, exit 0."""
    make_synthetic(str(tmp_path), 4, 2, 0, seed=0, cfg=SyntheticConfig(image_size=48, min_visible_pixels=20))
    assert check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "ReasonSeg"]) == 0
    out = capsys.readouterr().out
    assert "== ReasonSeg (reason_seg): OK" in out and "splits: train, val (absent: test)" in out
    assert "train: 4 images, 4 json" in out and "val: 2 images, 2 json" in out
    # a split asked for by name must exist
    assert check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "ReasonSeg|train_test"]) == 2
    out = capsys.readouterr().out
    assert "! missing split folder:" in out and "reason_seg/ReasonSeg/test" in out


def test_any_problem_gives_a_non_zero_exit_and_polygons_are_checked_without_decode(tmp_path, capsys):
    write_reason_seg(tmp_path)
    bad = write_bad_reason_seg_items(tmp_path, "val")
    rc = check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "ReasonSeg"])
    out = capsys.readouterr().out
    assert rc == 1 and "== ReasonSeg (reason_seg): PROBLEMS" in out  # still usable: exit 1, not 2
    assert f"! {bad['degenerate']}: shapes[0] ('target'): 2 distinct point(s); a polygon needs at least 3" in out
    assert f"! annotation without its image: {bad['missing_image']}" in out
    assert "truncated" not in out  # found only when decoding
    rc = check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "ReasonSeg", "--decode"])
    out = capsys.readouterr().out
    assert rc == 1 and f"! unreadable image: {bad['truncated']}: truncated JPEG" in out
    assert "Summary: 1 dataset(s) checked, 1 usable, 0 unusable, 3 problem(s)" in out


def test_refused_pickle_is_one_named_problem(root, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = root / "refer_seg/refcoco/refs(unc_exclude_unified).p"
    path.write_bytes(pickle.dumps([Evil()], protocol=2))
    rc = check_data.main(["--dataset_dir", str(root), "--datasets", "refcoco", "refcoco+", "ReasonSeg"])
    out = capsys.readouterr().out
    assert rc == 2
    assert "== refcoco: UNUSABLE" in out and f"! {path}: refusing to load global 'posix.system'" in out
    assert "== refcoco+ (refs(unc_exclude_unified).p (READ/SESAME convention)): OK" in out  # the check went on
    assert "== ReasonSeg (reason_seg): OK" in out
    assert "Summary: 3 dataset(s) checked, 2 usable, 1 unusable" in out


def test_refcoco_target_without_usable_mask_is_a_problem(tmp_path, capsys):
    from test_data_integrity import _refcoco_with_a_bad_val_ref

    _refcoco_with_a_bad_val_ref(tmp_path)
    for decode in ([], ["--decode"]):
        assert check_data.main(["--dataset_dir", str(tmp_path), "--datasets", "refcoco", *decode]) == 1
        out = capsys.readouterr().out
        for ref in (104, 105):
            assert f"ref {ref} (image COCO_train2014_000000000002.jpg): annotation 22: no usable polygon" in out
