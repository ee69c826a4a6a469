"""eval.py end to end: a save_pretrained model and a released-layout checkpoint on a tiny ReasonSeg split; the
results file, per-query predictions, pictures, SasP overrides, and clear errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
from pathlib import Path

import cv2
import pytest
import torch

from fixtures import DEGENERATE_SHAPES, truncate_file, write_reason_seg_item
from read.cli import run_main
from read.data import templates as T
from read.data.eval_sets import build_eval_dataset
from read.evaluation import EvalConfig, evaluate, rle_decode
from read.model import save_pretrained
from released_fixtures import Sizes, write_clip_tower, write_released_checkpoint
from test_eval_support import tiny_eval_model, write_reason_seg_split

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 7


def load_cli():
    spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cli():
    return load_cli()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_data")
    write_reason_seg_split(root, "val", N_IMAGES)
    return root


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    save_pretrained(tiny_eval_model(tiny_tokenizer), d, tiny_tokenizer)
    return d


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_both_modes_with_sasp_override(cli, model_dir, data_dir, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "out"
    cli.main([
        "--model", str(model_dir), "--dataset_dir", str(data_dir), "--dataset", "ReasonSeg", "--split", "val",
        "--mode", "both", "--batch_size", "3", "--max_new_tokens", "2", "--num_workers", "0", "--vis", "2",
        "--sasp", "num_points=4", "t_pos=0.7", "--output_dir", str(out), "--no_progress",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "ReasonSeg val" in printed and "teacher   overall" in printed and "generate  long" in printed

    results = json.loads((out / "results.json").read_text())
    s = results["settings"]
    assert s["modes"] == ["teacher", "generate"] and s["conv_type"] == "llava_v1" and s["prompts"] == "read"
    assert s["templates"] == {
        "short": T.READ_EVAL_SHORT_QUESTION, "long": T.READ_EVAL_LONG_QUESTION, "answer": T.READ_EVAL_ANSWER
    }  # fmt: skip
    assert (s["sasp"]["num_points"], s["sasp"]["t_pos"], s["sasp"]["t_neg"]) == (4, 0.7, 0.2)
    assert (s["precision"], s["batch_size"], s["world_size"], s["num_images"]) == ("float32", 3, 1, N_IMAGES)
    teacher, generate = results["results"]["teacher"], results["results"]["generate"]
    assert teacher["overall"]["num_masks"] == N_IMAGES and teacher["see"] is None
    assert (teacher["short"]["num_masks"], teacher["long"]["num_masks"]) == (4, 3)
    assert generate["see"] is not None and generate["evaluated_images"] == N_IMAGES

    # the same numbers as the library on the same weights with the same SasP settings
    reference = tiny_eval_model(tiny_tokenizer, "sasp.num_points=4", "sasp.t_pos=0.7")
    dataset = build_eval_dataset(str(data_dir), "ReasonSeg", "val")
    lib = evaluate(reference, tiny_tokenizer, dataset, EvalConfig(batch_size=2))
    run_info = ("evaluated_images", "resumed_images", "restart_reason")
    assert lib.scores == {k: v for k, v in teacher.items() if k not in run_info}

    lines = read_jsonl(out / "teacher" / "predictions.jsonl")
    assert len(lines) == N_IMAGES and all(len(r["points"]) == 4 for r in lines)
    assert lines[0]["prompt"].startswith("A chat between a curious human")  # llava_v1
    assert all(rle_decode(r["mask_rle"]).sum() == r["pred_area"] for r in lines)
    assert all("text" in r for r in read_jsonl(out / "generate" / "predictions.jsonl"))
    for mode in ("teacher", "generate"):
        pictures = sorted(p.name for p in (out / mode / "vis").glob("*.png"))
        assert pictures == ["0_0.png", "1_0.png"]
    pic = cv2.imread(str(out / "teacher" / "vis" / "0_0.png"))
    h, w = dataset[0].image.shape[:2]
    assert pic.shape == (h, 4 * w, 3)  # image | ground truth | prediction | similarity map with points

    # rerun: everything is resumed, nothing evaluated again
    again = cli.main([
        "--model", str(model_dir), "--dataset_dir", str(data_dir), "--dataset", "ReasonSeg", "--split", "val",
        "--batch_size", "2", "--num_workers", "0", "--sasp", "num_points=4", "t_pos=0.7", "--output_dir", str(out),
        "--no_progress",
    ])  # fmt: skip
    assert again["teacher"].evaluated == 0 and again["teacher"].resumed == N_IMAGES
    assert again["teacher"].scores == lib.scores


def test_cli_released_checkpoint(cli, data_dir, tmp_path):
    ckpt, tower = tmp_path / "READ-tiny", tmp_path / "clip"
    write_released_checkpoint(ckpt, "read", Sizes())
    write_clip_tower(tower, Sizes())
    out = tmp_path / "out"
    results = cli.main([
        "--released", "--model", str(ckpt), "--vision_tower", str(tower), "--dataset_dir", str(data_dir),
        "--dataset", "ReasonSeg", "--split", "val", "--sasp", "num_points=5", "down_sample=1", "--num_workers", "0",
        "--output_dir", str(out), "--no_progress",
    ])  # fmt: skip
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["released"] and settings["sasp"]["enabled"]
    assert (settings["sasp"]["num_points"], settings["sasp"]["down_sample"], settings["sasp"]["t_pos"]) == (5, 1, 0.8)
    assert results["teacher"].scores["overall"]["num_masks"] == N_IMAGES
    assert all(len(r["points"]) == 5 for r in read_jsonl(out / "teacher" / "predictions.jsonl"))


def test_cli_defaults_for_fp_refcoco(cli):
    args = cli.resolve_defaults(
        cli.parse_args(["--model", "m", "--dataset_dir", "d", "--dataset", "fprefcoco+", "--split", "val"])
    )
    assert (args.mode, args.conv_type) == ("generate", "vicuna_v1")
    args = cli.resolve_defaults(
        cli.parse_args(["--model", "m", "--dataset_dir", "d", "--dataset", "refcocog", "--split", "test"])
    )
    assert (args.mode, args.conv_type) == ("teacher", "llava_v1")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--model": "missing"}, "--model: directory not found"),
        ({"--model": "EMPTY"}, "has no read_config.json; for an original READ/SESAME/LISA checkpoint add --released"),
        ({"--dataset_dir": "missing"}, "--dataset_dir: directory not found"),
        ({"--split": "nope"}, "reason_seg: no \\*.jpg images in"),
        ({"--sasp": "num_pts=3"}, "--sasp: unknown key\\(s\\) \\['num_pts'\\]"),
        ({"--sasp": "t_pos=0.1"}, "sasp: need finite t_neg < t_pos"),
    ],
)
def test_cli_errors_name_the_culprit(cli, model_dir, data_dir, tmp_path, capsys, change, message):
    (tmp_path / "EMPTY").mkdir()
    args = {"--model": str(model_dir), "--dataset_dir": str(data_dir), "--split": "val"}
    for k, v in change.items():
        args[k] = str(tmp_path / v) if v in ("missing", "EMPTY") else v
    argv = ["--dataset", "ReasonSeg", "--output_dir", str(tmp_path / "out"), "--no_progress"]
    for k, v in args.items():
        argv += [k, v]
    assert run_main(cli.main, argv) == 1
    err = one_error_line(capsys)
    assert re.match(f"error: .*{message}", err)


def one_error_line(capsys) -> str:
    """The single line eval.py printed on stderr (checked: one line, ``error: ``, no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# results a user can trust


def cli_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--dataset_dir", str(data), "--dataset", "ReasonSeg", "--split", "val",
            "--num_workers", "0", "--output_dir", str(out), "--no_progress", *extra]  # fmt: skip


def test_another_model_exported_into_the_same_directory_is_evaluated_afresh(cli, data_dir, tiny_tokenizer,
                                                                             tmp_path, caplog):  # fmt: skip
    """What the quickstart does: evaluate the model in M, export another checkpoint into M, rerun the command.
    The records of the first model are not reused; the scores are those of a fresh evaluation of the second."""
    model = tmp_path / "M"
    out = tmp_path / "out"
    save_pretrained(tiny_eval_model(tiny_tokenizer, seed=0), model, tiny_tokenizer)
    first = cli.main(cli_args(model, data_dir, out))
    save_pretrained(tiny_eval_model(tiny_tokenizer, seed=1), model, tiny_tokenizer)
    with caplog.at_level(logging.WARNING):
        second = cli.main(cli_args(model, data_dir, out))
    assert (second["teacher"].resumed, second["teacher"].evaluated) == (0, N_IMAGES)
    reason = "its records come from another evaluation (weights changed (model/model.safetensors))"
    assert second["teacher"].restart_reason == reason
    assert f"{out / 'teacher'}: {reason}; starting over" in caplog.text
    fresh = cli.main(cli_args(model, data_dir, tmp_path / "fresh", "--no_resume"))
    assert second["teacher"].scores == fresh["teacher"].scores != first["teacher"].scores
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["teacher"]["restart_reason"] == reason
    # unchanged weights, copied to another path: resumed
    shutil.copytree(model, tmp_path / "M2")
    third = cli.main(cli_args(tmp_path / "M2", data_dir, out))
    assert (third["teacher"].resumed, third["teacher"].restart_reason) == (N_IMAGES, None)


def test_skip_invalid_scores_the_valid_queries_and_lists_the_others(cli, model_dir, data_dir, tmp_path, capsys):
    """A split with 4 unusable annotations (the issue's 17-image case, here 7 + 4): refused with the files named;
    with --skip_invalid the score equals that of the 7 valid images alone and results.json lists the 4."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    bad = []
    for kind in ("two_points", "outside", "absurd", "no_shapes"):
        image = write_reason_seg_item(data, "val", f"z_{kind}", shapes=DEGENERATE_SHAPES[kind][0])
        bad.append(str(image.with_suffix(".json")))
    assert run_main(cli.main, cli_args(model_dir, data, tmp_path / "refused")) == 1
    message = one_error_line(capsys)
    assert message.startswith("error: ReasonSeg val: 4 of 11 queries have ground truth that cannot be scored")
    assert all(b in message for b in bad) and not (tmp_path / "refused" / "results.json").exists()

    out = tmp_path / "out"
    skipped = cli.main(cli_args(model_dir, data, out, "--skip_invalid"))
    valid_only = cli.main(cli_args(model_dir, data_dir, tmp_path / "valid_only"))
    assert skipped["teacher"].scores == valid_only["teacher"].scores
    assert skipped["teacher"].scores["overall"]["num_masks"] == N_IMAGES
    results = json.loads((out / "results.json").read_text())
    assert [i["file"] for i in results["invalid"]] == sorted(bad)
    assert results["settings"]["skip_invalid"] is True and results["settings"]["num_images"] == N_IMAGES


def test_missing_and_truncated_images_are_errors_naming_the_file(cli, model_dir, data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    split = data / "reason_seg/ReasonSeg/val"
    (split / "img02.jpg").unlink()
    (split / "img05.jpg").unlink()
    assert run_main(cli.main, cli_args(model_dir, data, tmp_path / "out")) == 1
    message = one_error_line(capsys)
    assert "ReasonSeg val: 2 file(s) without their partner" in message
    assert str(split / "img02.json") in message and str(split / "img05.json") in message

    (split / "img02.json").unlink()
    (split / "img05.json").unlink()
    truncate_file(split / "img04.jpg")
    for workers in ("0", "2"):  # also from a DataLoader worker process: the same one-line message
        argv = cli_args(model_dir, data, tmp_path / f"out{workers}") + ["--num_workers", workers]
        assert run_main(cli.main, argv) == 1
        assert one_error_line(capsys) == (
            f"error: {split / 'img04.jpg'}: truncated JPEG (no end-of-image marker after the image data); "
            "download or copy the file again"
        )
