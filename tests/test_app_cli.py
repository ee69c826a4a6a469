"""app.py without a browser: which model and examples it finds, and its one-line errors."""

from __future__ import annotations

import json
import os
import socket

import pytest

import app
from read.app.discovery import collect_examples, newest_quickstart_model, validation_examples_dir
from read.cli import run_main
from read.errors import UserError


def _quickstart_model(root, run: str, mtime: float):
    model = root / "runs" / "quickstart" / run / "read" / "model"
    model.mkdir(parents=True)
    (model / "read_config.json").write_text("{}")
    os.utime(model / "read_config.json", (mtime, mtime))
    return model


def test_newest_quickstart_model_by_export_time(tmp_path):
    with pytest.raises(UserError, match=r"run `bash scripts/quickstart.sh` first, or pass --model DIR"):
        newest_quickstart_model(tmp_path)
    old = _quickstart_model(tmp_path, "20250101-000000", 1_000_000)
    new = _quickstart_model(tmp_path, "short", 2_000_000)  # names need not be dates
    _quickstart_model(tmp_path, "20990101-000000", 1_500_000)
    (tmp_path / "runs" / "quickstart" / "broken" / "read" / "model").mkdir(parents=True)  # never exported
    assert newest_quickstart_model(tmp_path) == new
    assert old != new


def test_examples_from_the_training_run_config(tmp_path):
    model = _quickstart_model(tmp_path, "a", 1)
    val = tmp_path / "data" / "synthetic" / "reason_seg" / "ReasonSeg" / "val"
    val.mkdir(parents=True)
    assert validation_examples_dir(model, tmp_path) is None  # no run config: a model from elsewhere
    (model.parent / "config.json").write_text(json.dumps({"data": {"dataset_dir": "data/synthetic"}}))
    assert validation_examples_dir(model, tmp_path) == val
    (model.parent / "config.json").write_text(json.dumps({"data": {"dataset_dir": str(tmp_path / "data/x")}}))
    assert validation_examples_dir(model, tmp_path) is None  # absolute, but no val split there
    (model.parent / "config.json").write_text("{not json")
    assert validation_examples_dir(model, tmp_path) is None


def test_examples_of_a_model_in_another_repository(tmp_path):
    other = tmp_path / "other"
    model = _quickstart_model(other, "a", 1)  # other/runs/quickstart/a/read/model
    (model.parent / "config.json").write_text(json.dumps({"data": {"dataset_dir": "data/synthetic"}}))
    root = tmp_path / "root"
    root.mkdir()
    assert validation_examples_dir(model, root) is None
    val = other / "data" / "synthetic" / "reason_seg" / "ReasonSeg" / "val"
    val.mkdir(parents=True)
    assert validation_examples_dir(model, root) == val  # where that repository trained it
    own = root / "data" / "synthetic" / "reason_seg" / "ReasonSeg" / "val"
    own.mkdir(parents=True)
    assert validation_examples_dir(model, root) == own  # the root comes first


def test_collect_examples_reads_reasonseg_questions(tmp_path):
    for stem in ("c", "a", "b", "d"):
        (tmp_path / f"{stem}.jpg").write_bytes(b"x")
    (tmp_path / "a.json").write_text(json.dumps({"text": ["the red one", "What is red?"]}))
    (tmp_path / "b.json").write_text(json.dumps({"text": "  Which is larger? ", "is_sentence": True}))
    (tmp_path / "c.json").write_bytes(b"\xff not json")
    (tmp_path / "notes.txt").write_text("not an image")
    got = collect_examples(tmp_path, limit=3)
    assert [(e.image.name, e.question) for e in got] == [
        ("a.jpg", "What is the red one in this image? Please output segmentation mask."),
        ("b.jpg", "Which is larger? Please output segmentation mask."),
        ("c.jpg", ""),
    ]
    with pytest.raises(UserError, match="is not a directory"):
        collect_examples(tmp_path / "missing", 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no image"):
        collect_examples(empty, 3)


def test_no_model_and_no_quickstart_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app, "ROOT", tmp_path)
    assert run_main(app.main, []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no --model given and no quickstart model under ")
    assert "bash scripts/quickstart.sh" in err[0]


def test_bad_model_and_examples_are_one_line(tmp_path, capsys):
    assert run_main(app.main, ["--model", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip() == f"error: --model {tmp_path / 'missing'} is not a directory"
    assert run_main(app.main, ["--model", str(tmp_path), "--examples", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.strip() == f"error: --examples {tmp_path / 'nope'} is not a directory"
    with pytest.raises(UserError, match="is not a directory"):  # --debug: the traceback instead of one line
        run_main(app.main, ["--model", str(tmp_path / "missing"), "--debug"])


def test_argument_checks():
    with pytest.raises(SystemExit):
        app.parse_args(["--load_in_8bit", "--load_in_4bit"])
    with pytest.raises(SystemExit):
        app.parse_args(["--queue_size", "0"])
    with pytest.raises(SystemExit):
        app.parse_args(["--released"])
    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.queue_size) == ("127.0.0.1", 7860, False, 16)


def test_taken_port_is_one_line(tmp_path, tiny_tokenizer, capsys):
    from app_utils import seg_model
    from read.model import save_pretrained

    save_pretrained(seg_model(tiny_tokenizer), tmp_path / "m", tiny_tokenizer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert run_main(app.main, ["--model", str(tmp_path / "m"), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot serve on 127.0.0.1:{port}: ")
    assert err[0].endswith("choose another --port")
