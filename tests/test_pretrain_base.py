"""scripts/pretrain_base.py and read.pretraining: the tiny base of the quickstart (a very short schedule here; slow:
the shipped base is reproduced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from read.config import load_config
from read.pretraining.config import LlavaStage, PretrainConfig, SamStage, SceneSettings, load_pretrain_config
from read.pretraining.sam import draw_prompt
from read.pretraining.scenes import SceneStream

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pretrain_base.py"
SHIPPED = ROOT / "assets" / "synthetic_base"


def _tiny_schedule(tmp_path: Path) -> list[str]:
    """Overrides: a 400-piece vocabulary (a model config derived from the quickstart's: 400 pieces + <im_start>,
    <im_end>) and a few steps a stage."""
    model_cfg = tmp_path / "model.yaml"
    model_cfg.write_text(f"base: {ROOT / 'configs' / 'synthetic_tiny.yaml'}\nmodel: {{text: {{vocab_size: 402}}}}\n")
    return [f"model_config={model_cfg}", "tokenizer.vocab_size=400", "tokenizer.corpus_scenes=40",
            "alignment.steps=3", "alignment.batch_size=2", "instruction.steps=3", "instruction.batch_size=2",
            "sam.steps=3", "sam.batch_size=2", "eval_scenes=2"]  # fmt: skip


def _run(out: Path, overrides: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *overrides], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)  # fmt: skip


def test_shipped_config_parses_and_matches_the_quickstart_model():
    cfg = load_pretrain_config(ROOT / "configs" / "pretrain" / "synthetic_base.yaml")
    model = load_config(ROOT / cfg.model_config).model
    assert model.init == "llava" and model.llava_path == "assets/synthetic_base/llava"
    assert model.text.vocab_size == cfg.tokenizer.vocab_size + 2  # + <im_start>, <im_end>
    assert cfg.alignment.train == ["vision_tower", "projector", "language_model"]
    assert cfg.instruction.train == ["projector", "language_model"]


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="alignment.train"):
        PretrainConfig(alignment=LlavaStage(train=["sam"]))
    with pytest.raises(ValueError, match="num_objects"):
        PretrainConfig(scenes=SceneSettings(num_objects=[3, 2]))
    proc = _run(tmp_path / "base", ["--config", str(tmp_path / "missing.yaml")], timeout=60)
    assert proc.returncode == 2 and "error: config file not found" in proc.stderr


def test_scene_streams_are_deterministic_and_disjoint():
    a, b = SceneStream(SceneSettings(), "alignment"), SceneStream(SceneSettings(), "alignment")
    assert np.array_equal(a[5].image, b[5].image)
    other = SceneStream(SceneSettings(), "sam")[5]
    assert not np.array_equal(a[5].image, other.image)
    assert 2 <= len(a[5].objects) <= 4 and a[5].image.shape == (128, 128, 3)


def test_sam_prompts_lie_where_they_should():
    scene = SceneStream(SceneSettings(), "sam")[0]
    stage = SamStage(max_positive=6, max_negative=6)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        target = seed % len(scene.objects)
        mask = scene.objects[target].visible.astype(bool)
        coords, labels, box = draw_prompt(scene, target, "points", stage, rng)
        assert coords.shape == (12, 2) and box is None and (labels == 1).sum() >= 1
        xy = coords.astype(int)
        inside = mask[xy[:, 1], xy[:, 0]]
        assert inside[labels == 1].all() and not inside[labels == 0].any()
        coords, labels, box = draw_prompt(scene, target, "box", stage, rng)
        assert coords.shape == (0, 2) and box.shape == (4,)
        ys, xs = np.nonzero(mask)
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert abs(box[0] - xs.min()) <= 0.1 * w + 1e-4 and abs(box[3] - ys.max()) <= 0.1 * h + 1e-4


def test_pretrain_base_end_to_end_is_deterministic_and_loads_as_a_read_base(tmp_path):
    overrides = _tiny_schedule(tmp_path)
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        proc = _run(out, overrides)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == str(out / "manifest.json")
    m1 = json.loads((first / "manifest.json").read_text())
    m2 = json.loads((second / "manifest.json").read_text())
    assert set(m1["files"]) == {"sam.safetensors", "llava/config.json", "llava/generation_config.json",
                                "llava/model.safetensors", "llava/tokenizer.model", "llava/added_tokens.json",
                                "llava/tokenizer_config.json"}  # fmt: skip
    assert m1["files"] == m2["files"]  # same settings, same bytes
    assert m1["command"].startswith("python scripts/pretrain_base.py --config configs/pretrain/synthetic_base.yaml")
    assert [row["step"] for row in m1["llava"]["instruction"]["history"]] == [3]
    assert {"caption", "colour", "count", "exists", "where"} <= set(m1["llava"]["eval"])
    assert set(m1["sam"]["eval"]) == {"one_point", "points", "box", "box_points"}
    proc = _run(first, overrides, timeout=60)
    assert proc.returncode == 2 and "already holds a base" in proc.stderr

    from read.model.builder import build_from_base
    from read.tokenizer import ReadTokenizer

    tokenizer = ReadTokenizer.from_pretrained(first / "llava")
    # READ's layout: <image> last, as the LM's classes need (the base LLaVA had its own <image> at 402)
    assert tokenizer.added_tokens == {"<im_start>": 400, "<im_end>": 401, "[SEG]": 402, "<image>": 403}
    cfg = load_config(tmp_path / "model.yaml", [f"model.llava_path={first / 'llava'}",
                                                f"model.sam_checkpoint={first / 'sam.safetensors'}"])  # fmt: skip
    model = build_from_base(cfg, tokenizer)
    from safetensors.torch import load_file

    base = load_file(str(first / "llava" / "model.safetensors"))
    rows = base["language_model.model.embed_tokens.weight"]  # the llava-hf key layout
    assert rows.shape[0] == 403  # pieces, <im_start>, <im_end>, the base's own <image>
    ours = model.llava.model.language_model.embed_tokens.weight
    assert torch.equal(ours[:402], rows[:402]) and ours.shape[0] == 404  # [SEG] and <image> rows are new
    assert not torch.equal(ours[402], rows[402])
    sam = load_file(str(first / "sam.safetensors"))
    assert torch.equal(model.sam.mask_decoder.iou_token.weight, sam["mask_decoder.iou_token.weight"])


def test_the_shipped_base_is_what_its_manifest_says_and_loads_in_reads_layout():
    from read.model.builder import build_from_base
    from read.pretraining.base import sha256
    from read.tokenizer import ReadTokenizer

    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest["command"] == (
        "python scripts/pretrain_base.py --config configs/pretrain/synthetic_base.yaml --out assets/synthetic_base "
        "--threads 1"
    )
    assert manifest["config"] == load_pretrain_config(ROOT / "configs" / "pretrain" / "synthetic_base.yaml").to_dict()
    files = {str(p.relative_to(SHIPPED)) for p in SHIPPED.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert files == set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert sha256(SHIPPED / name) == digest, name
    tokenizer = ReadTokenizer.from_pretrained(SHIPPED / "llava")
    assert (tokenizer.seg_token_id, tokenizer.image_token_id, len(tokenizer)) == (1502, 1503, 1504)
    paths = [f"model.llava_path={SHIPPED / 'llava'}", f"model.sam_checkpoint={SHIPPED / 'sam.safetensors'}"]
    cfg = load_config(ROOT / "configs" / "synthetic_tiny.yaml", paths)
    model = build_from_base(cfg, tokenizer)
    from safetensors.torch import load_file

    rows = load_file(str(SHIPPED / "llava" / "model.safetensors"))["language_model.model.embed_tokens.weight"]
    assert torch.equal(model.llava.model.language_model.embed_tokens.weight[:1502], rows[:1502])


@pytest.mark.slow
def test_the_script_reproduces_the_shipped_base(tmp_path):
    """Reruns the exact command of the shipped manifest. The tokenizer is the same byte for byte on any machine. The
    weights are the same bytes on the kind of processor that made them (one thread per part); CPU kernels differ
    between processor types, so elsewhere the test checks that the held-out figures agree within a few points."""
    shipped = json.loads((SHIPPED / "manifest.json").read_text())
    out = tmp_path / "base"
    args = shipped["command"].split()[2:]
    out_at = args.index("--out") + 1
    args[out_at] = str(out)
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=4 * 3600,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = json.loads((out / "manifest.json").read_text())
    for name in ("llava/tokenizer.model", "llava/added_tokens.json", "llava/config.json"):
        assert made["files"][name] == shipped["files"][name]
    if made["files"] == shipped["files"]:
        return
    for kind, figures in shipped["llava"]["eval"].items():
        assert made["llava"]["eval"][kind]["exact"] == pytest.approx(figures["exact"], abs=0.05), kind
    for kind, figures in shipped["sam"]["eval"].items():
        assert made["sam"]["eval"][kind]["miou"] == pytest.approx(figures["miou"], abs=0.03), kind
