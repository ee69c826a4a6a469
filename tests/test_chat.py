"""chat.py driven end to end with a tiny saved model: one-shot mode, the interactive loop, bad inputs."""

from __future__ import annotations

import builtins
import logging
import time

import cv2
import numpy as np
import pytest
import torch

import chat
from model_utils import tiny_config
from read.cli import run_main
from read.inference import PromptTooLongError, ReadPredictor
from read.model import build_read_model, from_pretrained, save_pretrained
from read.outputs import RunFolder, fresh_run_dir
from read.tokenizer import ReadTokenizer


def tiny_tokenizer_for(model_dir):
    return ReadTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    model = build_read_model(
        tiny_config(),
        len(tiny_tokenizer),
        seg_token_id=tiny_tokenizer.seg_token_id,
        image_token_id=tiny_tokenizer.image_token_id,
    )
    head = model.llava.lm_head.weight.data
    v = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(1))
    head.zero_()
    head[tiny_tokenizer.seg_token_id], head[tiny_tokenizer.eos_token_id] = v, -v  # answers are runs of [SEG]
    d = tmp_path_factory.mktemp("model")
    save_pretrained(model, d, tiny_tokenizer)
    return d


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    img = np.random.default_rng(0).integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), img)
    return path


def run_folders(root):
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_one_shot_writes_the_three_pngs(model_dir, image_path, tmp_path, capsys):
    root = tmp_path / "out"
    code = chat.main(
        [
            "--model",
            str(model_dir),
            "--image",
            str(image_path),
            "--query",
            "the red circle",
            "--out_dir",
            str(root),
            "--max_new_tokens",
            "4",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "READ:" in printed and "[SEG]" in printed
    (out,) = run_folders(root)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["scene_000_mask.png", "scene_000_side_by_side.png", "scene_000_similarity.png"]
    side = cv2.imread(str(out / "scene_000_side_by_side.png"))
    assert side.shape == (40, 56 * 3, 3)
    for name in files:
        assert str(out / name) in printed


def test_interactive_loop_recovers_from_bad_input_and_exits_on_eof(
    model_dir, image_path, tmp_path, monkeypatch, capsys
):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    answers = iter(
        [
            "",  # no image yet
            str(tmp_path / "nope.jpg"),  # missing file
            str(bad),  # not an image
            str(image_path),
            "",  # empty question
            "",
            "where is it?",  # keep the image, ask
            "",
            "and now?",  # cached image again
        ]
    )

    def fake_input(prompt=""):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)
    code = chat.main(["--model", str(model_dir), "--out_dir", str(tmp_path / "o"), "--max_new_tokens", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "no image yet" in out
    assert "nope.jpg" in out and "notes.txt" in out
    assert "the question is empty" in out
    assert out.count("READ:") == 2
    assert out.rstrip().endswith("bye")
    (folder,) = run_folders(tmp_path / "o")
    assert (folder / "scene_001_side_by_side.png").is_file()


def test_each_run_writes_into_its_own_folder(model_dir, image_path, tmp_path, capsys):
    """A second run with the same image and --out_dir neither overwrites the first run's pictures nor leaves them
    beside its own."""
    root = tmp_path / "out"
    argv = ["--model", str(model_dir), "--image", str(image_path), "--query", "x", "--out_dir", str(root),
            "--max_new_tokens", "2"]  # fmt: skip
    assert chat.main(argv) == 0
    (first,) = run_folders(root)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert chat.main(argv) == 0
    folders = run_folders(root)
    assert len(folders) == 2 and folders[0] == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert sorted(p.name for p in folders[1].iterdir()) == sorted(before)
    printed = capsys.readouterr().out
    assert str(folders[1] / "scene_000_mask.png") in printed


def test_fresh_run_dir_never_reuses_a_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20250101-120000")
    names = [fresh_run_dir(tmp_path).name for _ in range(3)]
    assert names == ["20250101-120000", "20250101-120000-2", "20250101-120000-3"]
    folder = RunFolder(tmp_path / "lazy")
    assert not (tmp_path / "lazy").exists()  # nothing written, nothing created
    assert folder.path == folder.path == tmp_path / "lazy" / "20250101-120000"


def test_question_too_long_for_the_context(model_dir, image_path, tmp_path, capsys, caplog):
    """tiny_config: context 512 tokens, 16 image tokens. A 600-word question is refused with a clear error; one
    that leaves less room than --max_new_tokens limits the answer, with a warning."""
    root = tmp_path / "out"
    long_question = " ".join(["the red circle"] * 200)
    code = run_main(chat.main, ["--model", str(model_dir), "--image", str(image_path), "--query", long_question,
                                "--out_dir", str(root)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the question is") and "more than the model's context of 512 tokens allows" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not root.exists()

    model = from_pretrained(model_dir)
    predictor = ReadPredictor(model, tiny_tokenizer_for(model_dir), max_new_tokens=400)
    predictor.set_image(str(image_path))
    query = " ".join(["the red circle"] * 20)
    prompt = int(predictor._batch(query).input_ids.shape[1])
    assert 512 - prompt < 400
    with caplog.at_level(logging.WARNING):
        assert predictor._generation_budget(query, prompt) == 512 - prompt
    assert f"the answer is limited to {512 - prompt} new tokens instead of 400" in caplog.text
    with pytest.raises(PromptTooLongError, match="shorten the question"):
        predictor._generation_budget(query, 512)


def test_ctrl_c_exits_cleanly(model_dir, monkeypatch, capsys, tmp_path):
    def interrupt(prompt=""):
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "input", interrupt)
    assert chat.main(["--model", str(model_dir), "--out_dir", str(tmp_path)]) == 0
    assert "bye" in capsys.readouterr().out


def test_clear_errors_for_bad_model_dir_and_quantisation_on_cpu(model_dir, image_path, tmp_path, capsys):
    argv = [
        "--model",
        str(tmp_path / "missing"),
        "--image",
        str(image_path),
        "--query",
        "x",
        "--out_dir",
        str(tmp_path),
    ]
    assert run_main(chat.main, argv) == 1
    assert capsys.readouterr().err == f"error: --model {tmp_path / 'missing'} is not a directory\n"
    code = run_main(
        chat.main,
        [
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--load_in_8bit",
            "--image",
            str(image_path),
            "--query",
            "x",
            "--out_dir",
            str(tmp_path),
        ],
    )
    assert code == 1
    assert capsys.readouterr().err == "error: 8-bit loading needs a CUDA device (bitsandbytes); got cpu\n"


def test_image_and_query_go_together():
    with pytest.raises(SystemExit):
        chat.parse_args(["--model", "m", "--image", "a.png"])
