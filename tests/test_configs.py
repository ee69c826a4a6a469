"""Every config file parses; the recipes carry the reference hyper-parameters (docs/reference.md#hyper-parameters)
and their launch command; every DeepSpeed JSON is fully filled from a training config."""

from __future__ import annotations

from pathlib import Path

import pytest

from read.config import load_config
from read.pretraining.config import load_pretrain_config
from read.training.engine import build_deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "configs").glob("*.yaml"))
DS_JSONS = sorted((ROOT / "configs" / "deepspeed").glob("*.json"))
PRETRAIN_YAMLS = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))
RECIPES = [
    "read_7b_reasonseg",
    "read_13b_reasonseg",
    "refcoco",
    "lisa_7b_reasonseg",
    "synthetic_tiny",
    "synthetic_tiny_scratch",
]


def test_the_recipes_exist():
    names = {p.stem for p in YAMLS}
    assert set(RECIPES) <= names
    assert {p.name for p in DS_JSONS} >= {"zero2.json", "zero3.json", "zero2_offload.json"}


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_yaml_parses(path):
    cfg = load_config(path)
    assert cfg.to_dict()["train"]["epochs"] == cfg.train.epochs >= 1


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_header_gives_the_launch_command(name):
    text = (ROOT / "configs" / f"{name}.yaml").read_text()
    header = text.split("\n\n")[0].splitlines()
    assert all(line.startswith("#") for line in header[:5])
    assert f"train_ds.py --config configs/{name}.yaml" in text.split("\nmodel:")[0]
    assert "scripts/export_model.py --run" in text.split("\nmodel:")[0]


@pytest.mark.parametrize("ds_json", DS_JSONS, ids=[p.name for p in DS_JSONS])
@pytest.mark.parametrize("name", RECIPES)
def test_deepspeed_configs_fill_from_every_recipe(ds_json, name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    ds = build_deepspeed_config(cfg.train, world_size=4, precision="bf16", path=ds_json)
    assert ds["train_batch_size"] == cfg.train.batch_size * cfg.train.grad_accumulation_steps * 4
    assert ds["optimizer"]["params"]["lr"] == ds["scheduler"]["params"]["warmup_max_lr"] == cfg.train.lr
    assert ds["scheduler"]["params"]["total_num_steps"] == cfg.train.epochs * cfg.train.steps_per_epoch
    assert ds["zero_optimization"]["stage"] in (2, 3)


@pytest.mark.parametrize("path", PRETRAIN_YAMLS, ids=[p.name for p in PRETRAIN_YAMLS])
def test_every_pretraining_yaml_parses_and_names_a_model_config(path):
    cfg = load_pretrain_config(path)
    assert load_config(ROOT / cfg.model_config).model.text.vocab_size == cfg.tokenizer.vocab_size + 2


def test_reference_hyper_parameters():
    r7 = load_config(ROOT / "configs" / "read_7b_reasonseg.yaml")
    s = r7.sasp
    assert (s.enabled, s.num_points, s.t_pos, s.t_neg, s.down_sample) == (True, 30, 0.8, 0.2, 2)
    assert (r7.lora.r, r7.lora.alpha, r7.lora.dropout, r7.lora.target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])
    assert (r7.train.lr, r7.train.batch_size, r7.train.grad_accumulation_steps) == (1e-4, 2, 10)
    assert (r7.train.betas, r7.train.weight_decay, r7.train.warmup_steps, r7.train.grad_clip) == (
        [0.9, 0.95],
        0.0,
        100,
        1.0,
    )
    assert dict(zip(r7.data.datasets, r7.data.sample_rates)) == {
        "sem_seg": 10, "refer_seg": 1, "correct_refer_seg": 1, "vqa": 1, "neg_refer_seg": 1, "reason_seg": 10
    }  # fmt: skip
    assert (r7.loss.ce_weight, r7.loss.bce_weight, r7.loss.dice_weight) == (1.0, 2.0, 0.5)
    assert (r7.model.init, r7.data.num_classes_per_sample, r7.data.model_max_length) == ("released", 3, 2048)
    assert (r7.data.val_dataset, r7.data.val_split) == ("ReasonSeg", "val")

    r13 = load_config(ROOT / "configs" / "read_13b_reasonseg.yaml")
    assert (r13.sasp.num_points, r13.sasp.t_pos, r13.sasp.t_neg, r13.sasp.down_sample) == (10, 0.8, 0.2, 1)
    assert (r13.lora.r, r13.train.lr, r13.model.text.hidden_size, r13.model.text.num_hidden_layers) == (
        64,
        3e-4,
        5120,
        40,
    )
    assert r13.data.sample_rates == [10, 10, 2, 3, 1, 1]
    stage2 = load_config(ROOT / "configs" / "read_13b_reasonseg.yaml",
                         ["train.lr=1e-4", "sasp.num_points=30", "data.sample_rates=3,10,2,3,1,10"])  # fmt: skip
    assert (stage2.train.lr, stage2.sasp.num_points, stage2.data.sample_rates) == (1e-4, 30, [3, 10, 2, 3, 1, 10])

    lisa = load_config(ROOT / "configs" / "lisa_7b_reasonseg.yaml")
    assert not lisa.sasp.enabled
    assert dict(zip(lisa.data.datasets, lisa.data.sample_rates)) == {"sem_seg": 9, "refer_seg": 3, "vqa": 3,
                                                                     "reason_seg": 1}  # fmt: skip
    assert (lisa.data.explanatory, lisa.data.templates, lisa.train.lr, lisa.train.epochs) == (0.1, "lisa", 3e-4, 10)

    ref = load_config(ROOT / "configs" / "refcoco.yaml")
    assert dict(zip(ref.data.datasets, ref.data.sample_rates)) == {"refer_seg": 12, "correct_refer_seg": 2, "vqa": 2,
                                                                   "neg_refer_seg": 1}  # fmt: skip
    assert (ref.data.val_dataset, ref.data.val_split, ref.sasp.enabled) == ("refcoco", "val", True)
