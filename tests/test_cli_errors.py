"""Every error a user can cause or fix ends a command-line tool with one line ``error: <what>, <which file>, <what to
do>`` and exit status 1, without a traceback; ``--debug`` / ``READ_DEBUG=1`` show it. (Checkpoint payloads, errors
during training set-up and a full disk are tested in test_train_ds.py; data-checker arguments in
test_check_data.py.)"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import chat
from read.cli import run_main
from read.errors import ConfigError
from read.model import save_pretrained
from test_eval_support import tiny_eval_model, write_reason_seg_split

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_ds():
    return load_script("train_ds_cli", ROOT / "train_ds.py")


@pytest.fixture(scope="module")
def eval_cli():
    return load_script("eval_cli_errors", ROOT / "eval.py")


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    save_pretrained(tiny_eval_model(tiny_tokenizer), d, tiny_tokenizer)
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_reason_seg_split(root, "val", 2)
    return root


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, size=(40, 56, 3), dtype=np.uint8))
    return path


def one_error_line(capsys) -> str:
    """The single line a tool printed on stderr (checked: one line, ``error: ``, no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# train_ds.py: config files


CONFIG_CASES = {
    "tabs": ("train:\n\tlr: 1e-3\n", "{f}: not valid YAML: line 2, column 1: while scanning for the next token found "
             "character '\\t' that cannot start any token (YAML does not allow tabs for indentation: use spaces)"),
    "syntax": ("train:\n  lr: [1e-3\n  epochs: 2\n", "{f}: not valid YAML: line 3, column 9: while parsing a flow "
               "sequence expected ',' or ']', but got ':'"),
    "unknown_key": ("train: {lrr: 1e-3}\n", "{f}: unknown config key(s) in 'train': 'train.lrr' (did you mean "
                    "'train.lr'?); known: batch_size, "),
    "wrong_type": ("train: {epochs: two}\n", "{f}: train.epochs: expected an integer, got 'two'"),
    "top_level": ("- a\n- b\n", "{f}: the top level must be a mapping of sections (model:, train:, ...)"),
    "num_workers": ("data: {num_workers: -1}\n", "{f}: data.num_workers must be >= 0 (0 loads data in the training "
                    "process), got -1"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_train_config_errors_are_one_line_naming_the_file(train_ds, tmp_path, capsys, case):
    text, expected = CONFIG_CASES[case]
    config = tmp_path / f"{case}.yaml"
    config.write_text(text)
    out = tmp_path / "run"
    assert run_main(train_ds.main, ["--config", str(config), f"train.output_dir={out}"]) == 1
    line = one_error_line(capsys)
    expected = "error: " + expected.format(f=config)
    if case in ("unknown_key", "wrong_type", "num_workers"):  # found after the override is merged in
        expected = expected.replace(f"{config}: ", f"{config} with the command-line overrides: ")
    assert line.startswith(expected), line
    assert not out.exists()


def test_a_base_chain_that_loops_and_a_missing_base(train_ds, tmp_path, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\ntrain: {lr: 1.0e-3}\n")
    b.write_text("base: a.yaml\n")
    assert run_main(train_ds.main, ["--config", str(a)]) == 1
    assert one_error_line(capsys) == (
        f"error: {a}: the 'base:' chain loops ({a} -> {b} -> {a}); remove one of the 'base:' lines"
    )
    b.write_text("base: gone.yaml\n")
    assert run_main(train_ds.main, ["--config", str(a)]) == 1
    assert one_error_line(capsys) == f"error: config file not found: {tmp_path / 'gone.yaml'} (the base of {b})"
    assert run_main(train_ds.main, ["--config", str(tmp_path / "nope.yaml")]) == 1
    assert one_error_line(capsys) == f"error: config file not found: {tmp_path / 'nope.yaml'}"


def test_bad_overrides(train_ds, tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("train: {lr: 1.0e-3}\n")
    for override, expected in (
        ("train.lr", "override 'train.lr' is not of the form key=value (e.g. sasp.num_points=60)"),
        ("train.betas=[0.9", "override 'train.betas=[0.9': the value is not valid YAML (line 1, column 5: while "
                             "parsing a flow sequence expected ',' or ']', but got '<stream end>'); quote it"),
        ("sasp.t_pos=0.1", f"{config} with the command-line overrides: sasp: need finite t_neg < t_pos, got "
                           "t_neg=0.2, t_pos=0.1"),
    ):  # fmt: skip
        assert run_main(train_ds.main, ["--config", str(config), override]) == 1
        assert one_error_line(capsys) == f"error: {expected}"


def test_debug_flag_and_environment_show_the_traceback(train_ds, tmp_path, monkeypatch, capsys):
    config = tmp_path / "tabs.yaml"
    config.write_text("train:\n\tlr: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        run_main(train_ds.main, ["--config", str(config), "--debug"])
    monkeypatch.setenv("READ_DEBUG", "1")
    with pytest.raises(ConfigError, match="not valid YAML"):
        run_main(train_ds.main, ["--config", str(config)])
    monkeypatch.setenv("READ_DEBUG", "0")
    assert run_main(train_ds.main, ["--config", str(config)]) == 1
    one_error_line(capsys)


def test_a_bug_keeps_its_traceback():
    def main(argv: list[str]) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        run_main(main, [])


def test_the_real_entry_point_prints_one_line(tmp_path):
    """``python train_ds.py`` itself: exit status 1, one line on stderr, nothing on stdout; --debug: the traceback."""
    config = tmp_path / "tabs.yaml"
    config.write_text("train:\n\tlr: 1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("READ_DEBUG", None)
    done = subprocess.run([sys.executable, str(ROOT / "train_ds.py"), "--config", str(config)], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {config}: not valid YAML: line 2, column 1: while scanning for the next token found character '\\t' "
        f"that cannot start any token (YAML does not allow tabs for indentation: use spaces)"
    ]


# ----------------------------------------------------------------------------------------------------------
# eval.py and chat.py: broken model directories


def broken_model(model_dir: Path, dest: Path, how: str) -> Path:
    """A copy of ``model_dir`` with a truncated / too-short model.safetensors, or a read_config.json whose sizes
    differ from the weights."""
    shutil.copytree(model_dir, dest)
    weights = dest / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "too_short":
        weights.write_bytes(b"\x08\x00\x00")
    else:
        meta = json.loads((dest / "read_config.json").read_text())
        meta["config"]["model"]["text"]["intermediate_size"] = 48
        (dest / "read_config.json").write_text(json.dumps(meta))
    return dest


def expected_model_error(d: Path, how: str) -> str:
    if how == "size_mismatch":
        return (
            f"error: {d / 'model.safetensors'} does not fit the model: 6 tensor(s) of another shape (e.g. "
            "llava.model.language_model.layers.0.mlp.down_proj.weight: (32, 64) in the file, (32, 48) in the model; "
            "llava.model.language_model.layers.0.mlp.gate_proj.weight: (64, 32) in the file, (48, 32) in the model); "
            "it was not written together with read_config.json: export the model again"
        )
    return f"error: {d / 'model.safetensors'}: not a readable safetensors file ("


@pytest.mark.parametrize("how", ["truncated", "too_short", "size_mismatch"])
def test_eval_with_a_broken_model(eval_cli, model_dir, data_dir, tmp_path, capsys, how):
    d = broken_model(model_dir, tmp_path / "model", how)
    argv = ["--model", str(d), "--dataset_dir", str(data_dir), "--dataset", "ReasonSeg", "--split", "val",
            "--num_workers", "0", "--output_dir", str(tmp_path / "out"), "--no_progress"]  # fmt: skip
    assert run_main(eval_cli.main, argv) == 1
    line = one_error_line(capsys)
    assert line.startswith(expected_model_error(d, how)), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["truncated", "too_short", "size_mismatch"])
def test_chat_with_a_broken_model(model_dir, image_path, tmp_path, capsys, how):
    d = broken_model(model_dir, tmp_path / "model", how)
    argv = ["--model", str(d), "--image", str(image_path), "--query", "x", "--out_dir", str(tmp_path / "out")]
    assert run_main(chat.main, argv) == 1
    assert one_error_line(capsys).startswith(expected_model_error(d, how))


# ----------------------------------------------------------------------------------------------------------
# chat.py: arguments


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model is an error: the argument checks must come first."""

    def load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(chat, "load", load)


def test_chat_unknown_conversation_template(model_dir, capsys):
    with pytest.raises(SystemExit) as done:
        chat.main(["--model", str(model_dir), "--conv_type", "nope"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "error: argument --conv_type: invalid choice: 'nope' (choose from 'llava_llama_2', 'llava_v1', 'vicuna_v1')"
        )
    )


def test_chat_out_dir_that_is_a_file_is_refused_before_loading(model_dir, image_path, tmp_path, capsys, no_model):
    existing = tmp_path / "notes.txt"
    existing.write_text("x")
    for out_dir, what in ((existing, "is a file"), (existing / "sub", f"lies under {existing}, which is a file")):
        argv = ["--model", str(model_dir), "--image", str(image_path), "--query", "x", "--out_dir", str(out_dir)]
        assert run_main(chat.main, argv) == 1
        assert one_error_line(capsys) == (
            f"error: --out_dir {out_dir} {what}, not a directory: choose another --out_dir"
        )


def test_chat_directory_or_missing_image_is_refused_before_loading(model_dir, tmp_path, capsys, no_model):
    base = ["--model", str(model_dir), "--query", "x", "--out_dir", str(tmp_path / "out")]
    assert run_main(chat.main, [*base, "--image", str(tmp_path)]) == 1
    assert one_error_line(capsys) == f"error: {tmp_path} is a directory, not an image file"
    assert run_main(chat.main, [*base, "--image", str(tmp_path / "gone.png")]) == 1
    assert one_error_line(capsys) == f"error: image file not found: {tmp_path / 'gone.png'}"


def test_chat_accepts_quoted_and_home_relative_paths(model_dir, image_path, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(image_path, home / "my scene.png")
    monkeypatch.setenv("HOME", str(home))
    assert chat.clean_path("  '~/my scene.png' ") == str(home / "my scene.png")
    assert chat.clean_path('"/a b/c.png"') == "/a b/c.png"
    assert chat.clean_path("'unbalanced.png") == "'unbalanced.png"
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--image", "'~/my scene.png'", "--query", "the circle", "--out_dir",
            str(out), "--max_new_tokens", "2"]  # fmt: skip
    assert run_main(chat.main, argv) == 0
    assert len(list(out.glob("*/my scene_000_side_by_side.png"))) == 1  # in this run's folder under --out_dir
    capsys.readouterr()
    # the interactive loop reads the same forms
    answers = iter(['"~/my scene.png"', "where is it?"])

    def fake_input(prompt=""):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    assert run_main(chat.main, ["--model", str(model_dir), "--out_dir", str(out), "--max_new_tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert "error:" not in printed and printed.count("READ:") == 1


def test_export_out_that_is_a_file(tmp_path, capsys):
    export = load_script("export_model_cli", ROOT / "scripts" / "export_model.py")
    existing = tmp_path / "model"
    existing.write_text("x")
    assert run_main(export.main, ["--run", str(tmp_path), "--out", str(existing)]) == 1
    assert one_error_line(capsys) == f"error: --out {existing} is a file, not a directory: choose another --out"
