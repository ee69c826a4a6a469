"""End-to-end DeepSpeed training on the tiny model and a synthetic ReasonSeg set (one CPU process, gloo):
loss/lr trajectory, checkpoints, resume after a crash equals an uninterrupted run, export equals the training model,
and non-finite steps leave the optimizer untouched."""

from __future__ import annotations

import copy
import errno
import importlib.util
import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fixtures import write_bad_reason_seg_items
from model_utils import SEG, TINY_CONFIG, make_batch, tiny_config, tiny_model
from read.cli import run_main
from read.config import load_config
from read.data.synthetic import SyntheticConfig, make_synthetic
from read.distributed import DistInfo, setup_distributed
from read.errors import UnsafeFileError
from read.model import from_pretrained
from read.model.sasp import NonFiniteActivation
from read.model.trainable import prepare_for_training
from read.training.checkpoint import CheckpointManager
from read.training.engine import create_engine
from read.training.export import consolidated_state_dict, export_checkpoint
from read.training.loop import (
    NonFiniteLossError,
    TrainState,
    install_nonfinite_guard,
    train_step,
)
from read.training.resume import ResumeConfigError
from read.training.safe_checkpoint import load_file

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "assets" / "tiny_tokenizer"
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def load_train_ds():
    """The top-level ``train_ds.py`` as a module (imported once per session)."""
    if "train_ds" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_ds", ROOT / "train_ds.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["train_ds"] = module
        spec.loader.exec_module(module)
    return sys.modules["train_ds"]


def make_data(root: Path, num_train: int = 8, num_val: int = 2) -> Path:
    """A few 48-px synthetic ReasonSeg images (seconds)."""
    make_synthetic(str(root), num_train, num_val, 0, seed=0, cfg=SyntheticConfig(image_size=48, min_visible_pixels=20))
    return root


def train_overrides(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """tiny_test.yaml + the synthetic data: 2 epochs x 2 steps of batch 1, validation on 2 images."""
    return [
        f"model.tokenizer_path={TOKENIZER}",
        f"data.dataset_dir={data_dir}",
        "data.num_workers=0",
        "data.model_max_length=512",
        f"train.output_dir={out_dir}",
        "train.epochs=2",
        "train.steps_per_epoch=2",
        "train.batch_size=1",
        "train.grad_accumulation_steps=1",
        "train.warmup_steps=1",
        "train.lr=1e-3",
        *extra,
    ]


def step_rows(run_dir: Path) -> dict[int, dict]:
    """The last logged line of every step in ``metrics.jsonl`` (a replayed step is logged twice)."""
    rows = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "step":
            rows[row["step"]] = row
    return rows


def reference_lr(step: int, lr: float, warmup: int, total: int) -> float:
    """DeepSpeed WarmupDecayLR as used by the reference: the lr of optimizer step ``step`` (1-based).
    The scheduler starts at iteration -1 (lr = warmup_min_lr = 0) and is advanced after each step."""
    i = step - 2
    w = max(2, warmup)
    if i < 0:
        return 0.0
    if i < w:
        return lr * i / w
    return lr * max(0.0, (total - i) / max(1.0, total - w))


@pytest.fixture(scope="module")
def ds_world():
    """A one-process gloo world for the module; torn down (and the environment restored) afterwards."""
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    yield setup_distributed()
    if dist.is_initialized():
        dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The synthetic set plus unusable training files (a 2-point polygon, a truncated JPEG, an annotation without its
    image): training skips them, counted."""
    root = make_data(tmp_path_factory.mktemp("synthetic"))
    write_bad_reason_seg_items(root, "train", size=(48, 48))
    return root


@pytest.fixture(scope="module")
def run_a(ds_world, data_dir, tmp_path_factory):
    """An uninterrupted run (LoRA dropout on, so a resume must restore the RNG too); keeps its live engine."""
    train_ds = load_train_ds()
    out = tmp_path_factory.mktemp("run_a")
    cfg = load_config(TINY_CONFIG, train_overrides(data_dir, out, "lora.dropout=0.1", "train.save_every=1"))
    run = train_ds.setup(cfg)
    state = train_ds.train(run)
    return run, state, out


def test_trains_logs_and_checkpoints(run_a):
    run, state, out = run_a
    assert (state.epoch, state.step_in_epoch, state.global_step, state.skipped_steps) == (2, 0, 4, 0)
    rows = step_rows(out)
    assert sorted(rows) == [1, 2, 3, 4]
    for k, row in rows.items():
        assert row["applied"] is True
        assert row["lr"] == pytest.approx(reference_lr(k, 1e-3, 1, 4), abs=1e-12)
        assert all(torch.isfinite(torch.tensor(row[p])) for p in ("loss", "ce_loss", "bce_loss", "dice_loss"))
        assert row["loss"] == pytest.approx(row["ce_loss"] + 2.0 * row["bce_loss"] + 0.5 * row["dice_loss"], rel=1e-5)
    assert [rows[k]["lr"] for k in (1, 2, 3, 4)] == [0.0, 0.0, 5e-4, 1e-3]
    # the weights moved once the lr became positive
    assert rows[4]["loss"] != rows[3]["loss"]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(0.0 <= e["val_ciou"] <= 1.0 for e in epochs)
    assert [h["epoch"] for h in state.history] == [1, 2]
    assert state.best_ciou == max(e["val_ciou"] for e in epochs)
    manager = CheckpointManager(out)
    assert manager.latest().name == "step_00000004"
    assert manager.best().name == f"step_{2 * (state.best_epoch + 1):08d}"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert kept == sorted({manager.latest().name, manager.best().name})  # older ones were pruned
    assert json.loads((out / "config.json").read_text())["train"]["steps_per_epoch"] == 2
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # bad samples skipped while drawing each epoch's data: counted per step and per epoch, shown in the summary line
    expected = []
    for epoch in (0, 1):
        run.train_set.set_epoch(epoch)
        expected.append(sum(run.train_set[i].skipped for i in range(len(run.train_set))))
    assert sum(expected) > 0
    assert [e["skipped_samples"] for e in epochs] == expected
    assert sum(row["skipped_samples"] for row in rows.values()) == sum(expected) == state.skipped_samples
    assert [f"skipped steps 0, bad samples {n} |" in h["summary"] for h, n in zip(state.history, expected)] == [
        True,
        True,
    ]


class _Crash(Exception):
    pass


def test_resume_after_crash_matches_uninterrupted_run(run_a, data_dir, tmp_path, monkeypatch):
    """Crash at the start of step 4 (after the step-3 checkpoint, mid-epoch 2), resume with --resume auto: the
    final step, every logged loss and the final weights equal the uninterrupted run's."""
    _, state_a, out_a = run_a
    train_ds = load_train_ds()
    out = tmp_path / "run_b"
    cfg = load_config(TINY_CONFIG, train_overrides(data_dir, out, "lora.dropout=0.1", "train.save_every=1"))
    calls = {"n": 0}
    real_step = train_ds.train_step

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Crash
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_ds, "train_step", crashing_step)
    with pytest.raises(_Crash):
        train_ds.train(train_ds.setup(cfg))
    assert CheckpointManager(out).latest().name == "step_00000003"
    with pytest.raises(FileExistsError, match="--resume auto"):
        train_ds.setup(cfg)  # never silently restart on top of a run
    monkeypatch.setattr(train_ds, "train_step", real_step)
    run = train_ds.setup(cfg, resume="auto")
    assert (run.state.epoch, run.state.step_in_epoch, run.state.global_step) == (1, 1, 3)
    state = train_ds.train(run)
    assert state.global_step == state_a.global_step == 4
    rows_a, rows_b = step_rows(out_a), step_rows(out)
    for k in (1, 2, 3, 4):
        for part in ("loss", "ce_loss", "bce_loss", "dice_loss", "lr"):
            assert rows_b[k][part] == rows_a[k][part], (k, part)
    assert [h["ciou"] for h in state.history] == [h["ciou"] for h in state_a.history]
    wa = consolidated_state_dict(CheckpointManager(out_a).latest(), exclude_frozen=False)
    wb = consolidated_state_dict(CheckpointManager(out).latest(), exclude_frozen=False)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_a_changed_config_is_refused_unless_accepted(run_a, data_dir, tmp_path):
    """``--resume auto train.lr=5e-2 train.batch_size=2`` is refused with the diff and nothing is written; a change
    that does not alter the computation goes through; --accept_config_changes lets the others through too. Every
    change let through is recorded in config_changes.jsonl."""
    _, _, out_a = run_a
    out = tmp_path / "run"
    shutil.copytree(out_a, out)
    train_ds = load_train_ds()
    base = train_overrides(data_dir, out, "lora.dropout=0.1", "train.save_every=1")
    changed = load_config(TINY_CONFIG, base + ["train.lr=5e-2", "train.batch_size=2"])
    config_before = (out / "config.json").read_text()
    with pytest.raises(ResumeConfigError) as caught:
        train_ds.setup(changed, resume="auto")
    message = str(caught.value)
    assert message.startswith(f"{out / 'checkpoints' / 'step_00000004'} was written with another config")
    assert "would not continue that run: train.batch_size: 1 -> 2; train.lr: 0.001 -> 0.05. " in message
    assert "--accept_config_changes" in message
    assert (out / "config.json").read_text() == config_before and not (out / "config_changes.jsonl").exists()

    def recorded() -> list[dict]:
        return [json.loads(line) for line in (out / "config_changes.jsonl").read_text().splitlines()]

    train_ds.setup(load_config(TINY_CONFIG, base + ["train.log_every=2"]), resume="auto")
    (row,) = recorded()
    assert (row["step"], row["accepted"]) == (4, False)
    assert row["changes"] == [
        {"key": "train.log_every", "old": 1, "new": 2, "breaks_exact_resume": False},
        {"key": "train.output_dir", "old": str(out_a), "new": str(out), "breaks_exact_resume": False},
    ]

    run = train_ds.setup(changed, resume="auto", accept_config_changes=True)
    assert run.state.global_step == 4 and run.cfg.train.lr == 5e-2
    row = recorded()[-1]
    assert row["accepted"] is True
    assert [(c["key"], c["old"], c["new"], c["breaks_exact_resume"]) for c in row["changes"]] == [
        ("train.batch_size", 1, 2, True),
        ("train.lr", 1e-3, 5e-2, True),
        ("train.output_dir", str(out_a), str(out), False),
    ]
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 5e-2  # the config in effect


def test_export_equals_training_model(run_a, tmp_path):
    run, _, out = run_a
    target = export_checkpoint(out, tmp_path / "model", checkpoint="latest")
    for name in ("model.safetensors", "read_config.json", "tokenizer.model", "added_tokens.json"):
        assert (target / name).is_file(), name
    exported = from_pretrained(target)
    names = [n for n, _ in exported.named_parameters()]
    assert not any("lora_" in n or "base_layer" in n for n in names)
    live = run.engine.module
    live.eval()
    val = run.val_set[0]
    batch = run.collator([val])
    with torch.no_grad():
        a = live(batch)
        b = exported(batch)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    assert len(a.pred_masks) == len(b.pred_masks) == 1
    torch.testing.assert_close(b.pred_masks[0], a.pred_masks[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=1e-5)
    # LoRA changed the model: merging it in is not a no-op
    lora_b = [p for n, p in live.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)


# ----------------------------------------------------------------------------------------------------------
# checkpoint safety and one-line errors

MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def load_export_script():
    spec = importlib.util.spec_from_file_location("export_model", ROOT / "scripts" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def planted_copy(run_dir: Path, dest: Path, file: str, marker: Path, raw: bool = False) -> Path:
    """A copy of a run directory whose latest checkpoint has ``ds/<file>`` replaced by a payload: the real content
    plus an object that runs a command when unpickled (a ``torch.save`` archive), or a bare pickle of it."""
    shutil.copytree(run_dir, dest)
    target = CheckpointManager(dest).latest() / "ds" / file
    if raw:
        target.write_bytes(pickle.dumps(Payload(marker)))
    else:
        state = load_file(target)
        state["client_note"] = Payload(marker)
        torch.save(state, target)
    return target


def one_error_line(capsys, after_progress: bool = False) -> str:
    """The one ``error:`` line on stderr (after the progress bar's lines if ``after_progress``); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if after_progress:
        lines = [line for line in lines if line.strip() and "%|" not in line]  # tqdm redraws
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


REFUSAL = "refusing to load this checkpoint file: its pickle names 'posix.system'; a DeepSpeed checkpoint holds only"


@pytest.mark.parametrize("file, raw", [(MODEL_STATES, False), (OPTIM_STATES, False), (MODEL_STATES, True)])
def test_export_refuses_a_planted_payload(run_a, tmp_path, capsys, file, raw):
    _, _, out = run_a
    marker = tmp_path / "payload_ran"
    planted = planted_copy(out, tmp_path / "run", file, marker, raw=raw)
    target = tmp_path / "model"
    code = run_main(load_export_script().main, ["--run", str(tmp_path / "run"), "--checkpoint", "latest",
                                                "--out", str(target)])  # fmt: skip
    line = one_error_line(capsys)
    assert code == 1
    if raw:
        assert line.startswith(f"error: {planted}: refusing to load this checkpoint file: it is not a zip archive")
    else:
        assert line.startswith(f"error: {planted}: {REFUSAL}")
    assert not marker.exists() and not target.exists()


@pytest.mark.parametrize("file", [MODEL_STATES, OPTIM_STATES])
def test_resume_refuses_a_planted_payload(run_a, data_dir, tmp_path, capsys, file):
    _, _, out = run_a
    marker = tmp_path / "payload_ran"
    planted = planted_copy(out, tmp_path / "run", file, marker)
    config_before = (tmp_path / "run" / "config.json").read_bytes()
    argv = ["--config", str(TINY_CONFIG), *train_overrides(data_dir, tmp_path / "run", "lora.dropout=0.1"),
            "--resume", "auto"]  # fmt: skip
    assert run_main(load_train_ds().main, argv) == 1
    assert one_error_line(capsys).startswith(f"error: {planted}: {REFUSAL}")
    assert not marker.exists()
    assert (tmp_path / "run" / "config.json").read_bytes() == config_before  # nothing was written


@pytest.mark.parametrize("file", [MODEL_STATES, OPTIM_STATES])
def test_deepspeed_reads_checkpoints_weights_only(run_a, tmp_path, file):
    """The second layer, without the scan: DeepSpeed's own loads (engine.load_checkpoint through its checkpoint
    engine, and zero_to_fp32) refuse the payload too. Loads the same step-4 state into run_a's engine, so its
    weights do not change."""
    run, _, out = run_a
    marker = tmp_path / "payload_ran"
    planted = planted_copy(out, tmp_path / "run", file, marker)
    ckpt = planted.parent.parent
    with pytest.raises(UnsafeFileError, match=re.escape(f"{planted}: {REFUSAL}")):
        consolidated_state_dict(ckpt, exclude_frozen=False)
    with pytest.raises(UnsafeFileError, match=re.escape(f"{planted}: {REFUSAL}")):
        load_train_ds().load_checkpoint(run.engine, ckpt, 0)
    assert not marker.exists()
    assert torch.load is load_file.__globals__["_torch_load"]  # the swap is undone


def test_errors_in_setup_leave_no_run_directory(ds_world, data_dir, tmp_path, capsys):
    """Config, DeepSpeed JSON and data problems are found before anything is written to train.output_dir."""
    train_ds = load_train_ds()
    out = tmp_path / "run"
    cases = {
        "data.num_workers=-1": "data.num_workers must be >= 0 (0 loads data in the training process), got -1",
        f"data.dataset_dir={tmp_path / 'nodata'}": f"reason_seg: no *.jpg images in {tmp_path / 'nodata'}",
        "train.grad_clip=2.0": "contradicts the training config (2.0)",
    }
    ds_json = json.loads((ROOT / "configs" / "deepspeed" / "zero2.json").read_text())
    ds_json["gradient_clipping"] = 1.0
    (tmp_path / "ds.json").write_text(json.dumps(ds_json))
    for override, message in cases.items():
        extra = (f"train.deepspeed_config={tmp_path / 'ds.json'}", override)
        argv = ["--config", str(TINY_CONFIG), *train_overrides(data_dir, out, *extra)]
        assert run_main(train_ds.main, argv) == 1, override
        assert message in one_error_line(capsys)
        assert not out.exists()


def test_full_disk_during_a_checkpoint_save(ds_world, data_dir, tmp_path, monkeypatch, capsys):
    """The second epoch's save fails with ENOSPC: one line naming the directory, exit 1, the first checkpoint kept."""
    train_ds = load_train_ds()
    out = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "step_00000002" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    argv = ["--config", str(TINY_CONFIG), *train_overrides(data_dir, out, "train.steps_per_epoch=1",
                                                              "train.eval_every_epoch=false")]  # fmt: skip
    assert run_main(train_ds.main, argv) == 1
    first = out / "checkpoints" / "step_00000001"
    assert one_error_line(capsys, after_progress=True).startswith(
        f"error: no space left on device while writing checkpoint step_00000002 into {out / 'checkpoints'} ("
    )
    assert CheckpointManager(out).latest() == first
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000001"]


# ----------------------------------------------------------------------------------------------------------
# non-finite losses


def _tiny_engine(world: DistInfo, gas: int, zero: str = "zero2"):
    overrides = (
        "sasp.enabled=false", "train.batch_size=1", f"train.grad_accumulation_steps={gas}", "train.lr=1e-2",
        "train.warmup_steps=1", "train.epochs=1", "train.steps_per_epoch=10",
        f"train.deepspeed_config=configs/deepspeed/{zero}.json",
    )  # fmt: skip
    cfg = tiny_config(*overrides)
    model = tiny_model(*overrides)
    prepare_for_training(model, cfg)
    return create_engine(model, cfg, world, "fp32")


def _batches(n: int):
    cfg = tiny_config()
    return [make_batch([[20 + i, SEG, 13]], [0], [(40, 50)], cfg, seed=i) for i in range(n)]


def _snapshot(engine) -> dict:
    import deepspeed

    trainable = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in trainable], enabled=engine.zero_optimization_stage() == 3):
        params = {n: p.detach().clone() for n, p in trainable}
    return {
        "params": params,
        "optimizer": _clone_tree(engine.optimizer.state_dict()),
        "scheduler": engine.lr_scheduler.state_dict(),
        "lr": engine.get_lr(),
    }


def _same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _clone_tree(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clone_tree(v) for v in x]
    return copy.deepcopy(x)


def _same_tree(a, b) -> bool:
    """Exact equality of nested dicts / lists / tensors (an optimizer state dict); other objects by repr."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, str, bool, type(None))):
        return a == b
    return repr(a) == repr(b)  # e.g. DeepSpeed's loss-scaler object


ZERO3_BACKWARD = pytest.mark.xfail(
    strict=True, raises=RuntimeError, reason="ZeRO-3: the first backward pass fails inside SAM's mask decoder (README)"
)


@pytest.mark.parametrize("zero", ["zero2", pytest.param("zero3", marks=[pytest.mark.slow, ZERO3_BACKWARD])])
def test_nonfinite_step_is_skipped_without_touching_optimizer_state(ds_world, zero):
    """NaN images give a NaN loss (SasP off: the LISA path runs through to the loss)."""
    good = _batches(5)
    bad = replace(good[0], pixel_values=torch.full_like(good[0].pixel_values, float("nan")))
    device = torch.device("cpu")
    e1 = _tiny_engine(ds_world, gas=2, zero=zero)
    assert train_step(e1, iter(good[0:2]), device).applied
    assert train_step(e1, iter(good[2:4]), device).applied  # moments and lr are non-trivial from here on
    before = _snapshot(e1)
    result = train_step(e1, iter([good[4], bad]), device)  # the NaN comes after a good micro-batch
    assert not result.applied
    after = _snapshot(e1)
    assert _same_params(before["params"], after["params"])
    assert after["scheduler"] == before["scheduler"] and after["lr"] == before["lr"]
    # the fp32 master partitions, Adam moments and step counts are unchanged (only the overflow flag is set)
    assert (before["optimizer"].pop("overflow"), after["optimizer"].pop("overflow")) == (False, True)
    assert _same_tree(before["optimizer"], after["optimizer"])
    with torch.no_grad():
        assert result.losses["loss"] == pytest.approx(float(e1.module(good[4]).loss), rel=1e-6)  # finite part only
    # the next good step equals the same step in a run that never saw the NaN batch
    assert train_step(e1, iter(good[0:2]), device).applied
    e2 = _tiny_engine(ds_world, gas=2, zero=zero)
    for window in (good[0:2], good[2:4], good[0:2]):
        assert train_step(e2, iter(window), device).applied
    assert _same_params(_snapshot(e1)["params"], _snapshot(e2)["params"])
    assert e1.get_lr() == e2.get_lr()


def test_nonfinite_streak_stops_training_with_a_clear_message():
    state = TrainState()
    state.record_step(False, max_nonfinite=2)
    state.record_step(True, max_nonfinite=2)  # a good step resets the streak
    state.record_step(False, max_nonfinite=2)
    assert (state.global_step, state.skipped_steps, state.nonfinite_streak) == (3, 2, 1)
    message = r"2 optimizer steps in a row .*max_nonfinite_steps=2, last at step 4\)"
    with pytest.raises(NonFiniteLossError, match=message):
        state.record_step(False, max_nonfinite=2)


def test_nan_hidden_states_stop_the_forward_pass_as_nonfinite():
    """With SasP on, NaN hidden states end the forward pass in NonFiniteActivation (which train_step skips),
    not in SasP's input ValueError."""
    cfg = tiny_config()
    model = tiny_model()
    install_nonfinite_guard(model)
    install_nonfinite_guard(model)  # idempotent
    batch = _batches(1)[0]
    with torch.no_grad():
        assert torch.isfinite(model(batch).loss)
        bad = replace(batch, pixel_values=torch.full_like(batch.pixel_values, float("nan")))
        with pytest.raises(NonFiniteActivation, match="non-finite SasP input"):
            model(bad)
    assert cfg.sasp.enabled
