"""The evaluation package (read/evaluation/) and eval.py on a tiny model and tiny datasets in the real on-disk formats.

What is checked: per-query counts and scores against a literal batch-1 loop with the reference metric; batch > 1
(right and left padding) gives exactly the records and masks of batch 1; shards are disjoint and cover the split,
and gathered records merge (duplicates dropped) to the single-process result; an interrupted run resumes without
evaluating an image twice; generation mode's existence / empty-mask rules; the CLI's outputs and errors.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import rect_polygon, write_fprefcoco, write_refcoco
from read.data.collate import ReadCollator
from read.data.eval_sets import build_eval_dataset
from read.data.sample import DataError, InvalidAnnotation
from read.evaluation import (
    EvalConfig,
    QueryRecord,
    complete_images,
    evaluate,
    rle_decode,
    rle_encode,
    shard,
    summarize,
)
from test_eval_support import (
    emit_seg_for_some,
    reference_counts,
    reference_scores,
    tiny_eval_model,
    write_reason_seg_split,
)

N_IMAGES = 11


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest (and least disturbed by other processes) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    write_reason_seg_split(root, "val", N_IMAGES)
    return root


@pytest.fixture(scope="module")
def teacher_set(data_dir):
    return build_eval_dataset(str(data_dir), "ReasonSeg", "val")


@pytest.fixture(scope="module")
def generation_set(data_dir):
    return build_eval_dataset(str(data_dir), "ReasonSeg", "val", generation=True)


@pytest.fixture(scope="module")
def model(tiny_tokenizer, generation_set):
    m = tiny_eval_model(tiny_tokenizer)
    emits = emit_seg_for_some(m, tiny_tokenizer, generation_set)
    assert 0 < sum(emits) < len(emits)  # both branches of generation mode are exercised
    return m


@pytest.fixture(scope="module")
def teacher_bs1(model, tiny_tokenizer, teacher_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher_bs1")
    res = evaluate(model, tiny_tokenizer, teacher_set, EvalConfig(batch_size=1, output_dir=str(out)))
    return res, out


@pytest.fixture(scope="module")
def generate_bs1(model, tiny_tokenizer, generation_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("generate_bs1")
    cfg = EvalConfig(mode="generate", batch_size=1, max_new_tokens=1, output_dir=str(out))
    return evaluate(model, tiny_tokenizer, generation_set, cfg), out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------
# exactness


def test_teacher_records_match_a_literal_batch1_loop(model, tiny_tokenizer, teacher_set, teacher_bs1):
    res, out = teacher_bs1
    cfg = model.config.model
    collator = ReadCollator(
        tiny_tokenizer, "llava_v1", clip_size=cfg.vision.image_size, sam_size=cfg.sam.image_size,
        num_image_tokens=cfg.vision.num_patches, max_length=None,
    )  # fmt: skip
    counts = []
    with torch.no_grad():
        for i in range(len(teacher_set)):
            sample = teacher_set[i]
            gt = sample.queries[0].masks[0]
            logits = model(collator([sample])).pred_masks[0]
            assert logits.shape == (1, *gt.shape)
            counts.append(reference_counts((logits[0] > 0).numpy(), gt))
    assert [(r.intersection, r.union) for r in res.records] == counts
    assert any(i > 0 for i, _ in counts)  # not a trivial all-empty prediction set
    giou, ciou = reference_scores(counts)
    assert res.scores["overall"]["giou"] == pytest.approx(giou, abs=1e-12)
    assert res.scores["overall"]["ciou"] == pytest.approx(ciou, abs=1e-12)
    assert res.scores["overall"]["num_masks"] == N_IMAGES
    # short / long subsets: is_sentence is false for even images
    short = [c for k, c in enumerate(counts) if k % 2 == 0]
    long = [c for k, c in enumerate(counts) if k % 2 == 1]
    assert res.scores["short"]["giou"] == pytest.approx(reference_scores(short)[0], abs=1e-12)
    assert res.scores["long"]["ciou"] == pytest.approx(reference_scores(long)[1], abs=1e-12)
    assert (res.scores["short"]["num_masks"], res.scores["long"]["num_masks"]) == (6, 5)
    assert res.scores["see"] is None and res.evaluated == N_IMAGES and res.resumed == 0

    lines = read_jsonl(out / "predictions.jsonl")
    assert [r["key"] for r in lines] == [f"{i}/0" for i in range(N_IMAGES)]
    for rec, sample_index in zip(lines, range(N_IMAGES)):
        gt = teacher_set[sample_index].queries[0].masks[0]
        pred = rle_decode(rec["mask_rle"])
        assert pred.shape == gt.shape and int(pred.sum()) == rec["pred_area"]
        assert reference_counts(pred, gt) == (rec["intersection"], rec["union"])
        assert rec["gt_area"] == int((gt == 1).sum()) and rec["ignored_area"] == int((gt == 255).sum())
        assert len(rec["points"]) == model.config.sasp.num_points == len(rec["point_labels"])
    assert sum(r["ignored_area"] > 0 for r in lines) == 4  # images 0, 3, 6, 9


@pytest.mark.parametrize("sasp", [True, False], ids=["read", "lisa"])
def test_pointing_records_match_a_literal_computation(sasp, tiny_tokenizer, teacher_set, tmp_path):
    """Every scored query records where its [SEG]'s map points: for READ with its own points, for LISA with the
    points SasP would place from the same map; the summary pools them."""
    from read.evaluation.pointing import peak_pixel
    from read.model.sasp import select_points

    model = tiny_eval_model(tiny_tokenizer, f"sasp.enabled={str(sasp).lower()}")
    res = evaluate(model, tiny_tokenizer, teacher_set, EvalConfig(batch_size=3, output_dir=str(tmp_path)))
    cfg = model.config
    collator = ReadCollator(
        tiny_tokenizer, "llava_v1", clip_size=cfg.model.vision.image_size, sam_size=cfg.model.sam.image_size,
        num_image_tokens=cfg.model.vision.num_patches, max_length=None,
    )  # fmt: skip
    lines = read_jsonl(tmp_path / "predictions.jsonl")
    peaks, pos, pos_in = [], 0, 0
    with torch.no_grad():
        for i, rec in enumerate(lines):
            sample = teacher_set[i]
            gt = sample.queries[0].masks[0]
            out = model(collator([sample]))
            sim = out.similarity[0][0]
            coords, labels = select_points(sim[None], [gt.shape], cfg.sasp, clip_size=cfg.model.vision.image_size)
            x, y = peak_pixel(sim, gt.shape, cfg.sasp.geometry)
            p = rec["pointing"]
            assert p["peak"] == [x, y] and p["peak_in_target"] == (None if gt[y, x] == 255 else bool(gt[y, x] == 1))
            xy = coords[0][labels[0] == 1].round().long()
            values = torch.from_numpy(gt)[xy[:, 1], xy[:, 0]]
            values = values[values != 255]  # points on ignored pixels are not counted
            inside = int((values == 1).sum())
            assert (p["pos_points"], p["pos_in_target"]) == (len(values), inside)
            if p["peak_in_target"] is not None:
                peaks.append(p["peak_in_target"])
            pos, pos_in = pos + len(values), pos_in + inside
    summary = res.scores["pointing"]
    assert summary["num_queries"] == N_IMAGES and summary["peak_in_target"] == pytest.approx(np.mean(peaks))
    assert summary["pos_in_target"] == pytest.approx(pos_in / pos)
    assert all(r.pointing is not None for r in res.records)


@pytest.mark.parametrize("mode", ["teacher", "generate"])
def test_batched_evaluation_equals_batch1(mode, model, tiny_tokenizer, teacher_set, generation_set, teacher_bs1,
                                          generate_bs1, tmp_path):  # fmt: skip
    ref, ref_dir = teacher_bs1 if mode == "teacher" else generate_bs1
    dataset = teacher_set if mode == "teacher" else generation_set
    cfg = EvalConfig(mode=mode, batch_size=4, max_new_tokens=1, output_dir=str(tmp_path))  # 4 + 4 + 3 images
    res = evaluate(model, tiny_tokenizer, dataset, cfg)
    assert res.records == ref.records
    assert res.scores == ref.scores
    # masks (RLE), points and generated text too, line by line
    assert read_jsonl(tmp_path / "predictions.jsonl") == read_jsonl(ref_dir / "predictions.jsonl")


def test_generation_mode_rules(model, tiny_tokenizer, generation_set, generate_bs1):
    res, out = generate_bs1
    lines = read_jsonl(out / "predictions.jsonl")
    with_seg = [r for r in lines if r["num_seg"] > 0]
    without = [r for r in lines if r["num_seg"] == 0]
    assert with_seg and without
    assert all("[SEG]" in r["text"] for r in with_seg) and not any("[SEG]" in r["text"] for r in without)
    for r in without:  # no [SEG]: empty prediction, object predicted absent, the whole target is missed
        assert r["pred_area"] == 0 and not r["pred_exists"] and rle_decode(r["mask_rle"]).sum() == 0
        assert r["intersection"] == 0 and r["union"] == r["gt_area"]
    for r in with_seg:
        assert r["pred_exists"] == (r["pred_area"] > 0)
    assert all(r["scored"] for r in lines)
    expected_see = np.mean([r["pred_exists"] for r in lines])  # every ReasonSeg object exists
    assert res.scores["see"] == pytest.approx(expected_see)
    giou, ciou = reference_scores([(r["intersection"], r["union"]) for r in lines])
    assert res.scores["overall"]["giou"] == pytest.approx(giou, abs=1e-12)
    assert res.scores["overall"]["ciou"] == pytest.approx(ciou, abs=1e-12)


def test_fp_refcoco_generation_see_and_segment(tiny_tokenizer, tmp_path):
    """False premises have an all-zero target: a predicted mask only adds to the union; See compares existence."""
    write_fprefcoco(tmp_path)
    dataset = build_eval_dataset(str(tmp_path), "fprefcoco", "val", generation=True)
    model = tiny_eval_model(tiny_tokenizer)
    emit_seg_for_some(model, tiny_tokenizer, dataset, conv_type="vicuna_v1")
    cfg = EvalConfig(mode="generate", conv_type="vicuna_v1", max_new_tokens=1, batch_size=2)
    res = evaluate(model, tiny_tokenizer, dataset, cfg)
    recs = res.records
    assert [r.key for r in recs] == ["0/0", "0/1"] and [r.gt_exists for r in recs] == [True, False]
    fp = recs[1]
    assert fp.intersection == 0
    assert dataset[0].queries[1].masks.sum() == 0
    assert fp.union == fp.pred_area and fp.gt_area == 0
    assert [r.pred_exists for r in recs].count(True) <= 1  # one of the two rows emits [SEG]
    see = np.mean([r.pred_exists == r.gt_exists for r in recs])
    assert res.scores["see"] == pytest.approx(see)
    total_i = sum(r.intersection for r in recs)
    total_u = sum(r.union for r in recs)
    assert res.scores["overall"]["ciou"] == pytest.approx(total_i / (total_u + 1e-10))


# ----------------------------------------------------------------------------------------------------------
# sharding, gathering, de-duplication


def test_shard_is_a_disjoint_cover():
    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert shard(items, 0, 1) == items
    assert [shard([4, 7], r, 3) for r in range(3)] == [[4], [7], []]  # more ranks than items: no padding
    with pytest.raises(ValueError, match="rank"):
        shard(items, 3, 3)


def test_merged_records_drop_duplicate_keys_and_sort(teacher_bs1):
    """Records gathered from several processes merge to one per key, in (image, query) order, whatever the order
    they arrive in."""
    from read.evaluation.output_dir import merge_records

    ref, _ = teacher_bs1
    odd, even = ref.records[1::2], ref.records[0::2]
    duplicate = dataclasses.replace(ref.records[0], details={"stale": True})
    merged = merge_records([odd, even[::-1] + [duplicate]])
    assert merged == ref.records
    assert summarize(merged, "teacher") == ref.scores


def test_record_json_round_trip(teacher_bs1):
    ref, out = teacher_bs1
    lines = read_jsonl(out / "predictions.jsonl")
    records = [QueryRecord.from_json(line) for line in lines]
    assert records == ref.records
    assert [r.to_json() for r in records] == lines
    assert records[0].details["image"] == lines[0]["image"] and "mask_rle" in records[0].details
    assert ref.records[0].details == {}  # the records in memory carry no details


def test_records_rle_roundtrip():
    rng = np.random.default_rng(0)
    mask = rng.random((7, 5)) > 0.5
    rle = rle_encode(mask)
    assert rle["size"] == [7, 5] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_decode(json.loads(json.dumps(rle))), mask.astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------
# resume


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_repeating_images(model, tiny_tokenizer, teacher_set, teacher_bs1, tmp_path):
    ref, ref_dir = teacher_bs1
    rows_seen: list[int] = []

    def count_and_stop(module, args):
        rows_seen.append(args[0].num_rows)
        if stop_after is not None and len(rows_seen) > stop_after:
            raise Interrupt

    handle = model.register_forward_pre_hook(count_and_stop)
    try:
        stop_after = 2
        cfg = EvalConfig(batch_size=2, output_dir=str(tmp_path))
        with pytest.raises(Interrupt):
            evaluate(model, tiny_tokenizer, teacher_set, cfg)
        part = tmp_path / "parts" / "rank000.jsonl"
        assert [r["index"] for r in read_jsonl(part)] == [0, 1, 2, 3]
        assert complete_images(QueryRecord.from_json(r) for r in read_jsonl(part)) == {0, 1, 2, 3}
        # a process killed mid-write leaves a torn line: that record is ignored and its image evaluated again
        line = json.dumps(ref.records[4].to_json())
        with part.open("a") as f:
            f.write(line[: len(line) // 2])

        rows_seen.clear()
        stop_after = None
        res = evaluate(model, tiny_tokenizer, teacher_set, cfg)
        assert sum(rows_seen) == N_IMAGES - 4  # images 4..10, each once
        assert (res.resumed, res.evaluated) == (4, N_IMAGES - 4)
        assert res.records == ref.records and res.scores == ref.scores
        assert read_jsonl(tmp_path / "predictions.jsonl") == read_jsonl(ref_dir / "predictions.jsonl")
        assert not list((tmp_path / "parts").glob("*.jsonl"))

        rows_seen.clear()
        again = evaluate(model, tiny_tokenizer, teacher_set, cfg)  # a finished run: nothing left to do
        assert rows_seen == [] and again.scores == ref.scores and again.resumed == N_IMAGES

        rows_seen.clear()
        cfg = EvalConfig(batch_size=4, output_dir=str(tmp_path), resume=False)
        fresh = evaluate(model, tiny_tokenizer, teacher_set, cfg)
        assert sum(rows_seen) == N_IMAGES and fresh.resumed == 0 and fresh.scores == ref.scores
    finally:
        handle.remove()


def test_records_of_another_evaluation_are_not_resumed(model, tiny_tokenizer, teacher_set, teacher_bs1, tmp_path,
                                                       caplog):  # fmt: skip
    """Other settings or other weights: the run starts over (every image evaluated again, stale pictures
    removed) and says why in one line."""
    ref, ref_dir = teacher_bs1
    out = tmp_path / "out"
    shutil.copytree(ref_dir, out)
    (out / "vis").mkdir()
    (out / "vis" / "0_0.png").write_bytes(b"stale")
    res = evaluate(model, tiny_tokenizer, teacher_set, EvalConfig(conv_type="vicuna_v1", output_dir=str(out)))
    assert (res.resumed, res.evaluated) == (0, N_IMAGES)
    assert res.restart_reason == "its records come from another evaluation (conv_type: 'llava_v1' -> 'vicuna_v1')"
    assert f"{out}: {res.restart_reason}; starting over" in caplog.text
    assert not (out / "vis" / "0_0.png").exists()
    assert json.loads((out / "run.json").read_text())["conv_type"] == "vicuna_v1"

    # the caller's part of the fingerprint (here the weights' digests) counts too; then the same again resumes
    weights = {"weights": {"model/model.safetensors": "aaaa", "model/read_config.json": "bbbb"}}
    res = evaluate(model, tiny_tokenizer, teacher_set, EvalConfig(output_dir=str(out)), fingerprint=weights)
    assert res.restart_reason.endswith("(conv_type: 'vicuna_v1' -> 'llava_v1', weights not recorded)")
    assert res.records == ref.records
    weights["weights"]["model/model.safetensors"] = "cccc"
    res = evaluate(model, tiny_tokenizer, teacher_set, EvalConfig(output_dir=str(out)), fingerprint=weights)
    assert res.restart_reason == "its records come from another evaluation (weights changed (model/model.safetensors))"
    assert (res.resumed, res.evaluated) == (0, N_IMAGES)
    res = evaluate(model, tiny_tokenizer, teacher_set, EvalConfig(output_dir=str(out)), fingerprint=weights)
    assert (res.resumed, res.evaluated, res.restart_reason) == (N_IMAGES, 0, None)
    assert res.scores == ref.scores


def test_changed_data_files_are_not_resumed(model, tiny_tokenizer, tmp_path):
    """The fingerprint covers the content of the annotations and images, not their paths."""
    data = tmp_path / "data"
    write_reason_seg_split(data, "val", 3)
    out = tmp_path / "out"
    first = evaluate(model, tiny_tokenizer, build_eval_dataset(str(data), "ReasonSeg", "val"),
                     EvalConfig(output_dir=str(out)))  # fmt: skip
    assert first.evaluated == 3
    again = evaluate(model, tiny_tokenizer, build_eval_dataset(str(data), "ReasonSeg", "val"),
                     EvalConfig(output_dir=str(out)))  # fmt: skip
    assert (again.resumed, again.restart_reason) == (3, None)
    ann = data / "reason_seg/ReasonSeg/val/img01.json"
    content = json.loads(ann.read_text())
    content["shapes"][0]["points"] = rect_polygon(1, 1, 9, 9)
    ann.write_text(json.dumps(content))
    changed = evaluate(model, tiny_tokenizer, build_eval_dataset(str(data), "ReasonSeg", "val"),
                       EvalConfig(output_dir=str(out)))  # fmt: skip
    assert changed.restart_reason == "its records come from another evaluation (data changed)"
    assert (changed.resumed, changed.evaluated) == (0, 3)
    assert changed.records[1].gt_area == 81 != first.records[1].gt_area


def test_image_with_torn_records_is_evaluated_again_and_the_new_records_win(tiny_tokenizer, tmp_path):
    """RefCOCO puts every sentence of an image in one batch row group; if only some of its lines reached the file,
    the whole image is evaluated again and its fresh records replace the stale ones."""
    write_refcoco(tmp_path / "data")
    dataset = build_eval_dataset(str(tmp_path / "data"), "refcoco", "val")
    assert len(dataset) == 1 and len(dataset[0].queries) == 2
    model = tiny_eval_model(tiny_tokenizer)
    ref = evaluate(model, tiny_tokenizer, dataset, EvalConfig(output_dir=str(tmp_path / "ref")))
    assert [r.key for r in ref.records] == ["0/0", "0/1"] and ref.scores["overall"]["num_masks"] == 2

    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    (out / "run.json").write_text((tmp_path / "ref" / "run.json").read_text())
    stale = dict(read_jsonl(tmp_path / "ref" / "predictions.jsonl")[0], intersection=0, union=1)
    (out / "parts" / "rank000.jsonl").write_text(json.dumps(stale) + "\n")
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(args[0].num_rows))
    try:
        res = evaluate(model, tiny_tokenizer, dataset, EvalConfig(output_dir=str(out)))
    finally:
        handle.remove()
    assert rows == [2] and res.resumed == 0
    assert res.records == ref.records
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(tmp_path / "ref" / "predictions.jsonl")


# ----------------------------------------------------------------------------------------------------------
# ground truth and prompts the evaluation refuses


class _EmptyTargetOf:
    """A dataset wrapper whose image ``index`` has an all-zero target although its query refers to an object."""

    def __init__(self, dataset, index: int) -> None:
        self.dataset, self.index, self.name = dataset, index, dataset.name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        sample = self.dataset[i]
        if i == self.index:
            sample.queries[0].masks = np.zeros_like(sample.queries[0].masks)
        return sample


@pytest.mark.parametrize("mode", ["teacher", "generate"])
def test_empty_target_of_an_existing_object_stops_the_evaluation(mode, model, tiny_tokenizer, teacher_set,
                                                                 generation_set):  # fmt: skip
    """Scored, it would be IoU 1 for an empty prediction; the evaluation names the image instead."""
    dataset = _EmptyTargetOf(teacher_set if mode == "teacher" else generation_set, 3)
    message = r"img03\.jpg: the query 'What in this picture is like a cat on the mat\?' refers to an object, but its"
    with pytest.raises(InvalidAnnotation, match=message + " ground-truth mask is empty"):
        evaluate(model, tiny_tokenizer, dataset, EvalConfig(mode=mode, batch_size=2, max_new_tokens=1))


def test_prompt_longer_than_the_context_is_refused(tiny_tokenizer, teacher_set):
    """tiny_test.yaml has a 512-token context; a 64-token one cannot hold the 16 image tokens and the template."""
    short = tiny_eval_model(tiny_tokenizer, "model.text.max_position_embeddings=64")
    with pytest.raises(
        DataError,
        match=r"img00\.jpg: the prompt is \d+ tokens \(image tokens included\), longer than "
        r"the model's context of 64",
    ):
        evaluate(short, tiny_tokenizer, teacher_set, EvalConfig(batch_size=2))


@pytest.mark.parametrize("geometry", ["reference", "clip"])
def test_vis_heat_map_uses_the_models_geometry(geometry, model, tiny_tokenizer, teacher_set, tmp_path, monkeypatch):
    """The pictures of ``--vis`` undo the CLIP crop the way the model's SasP placed its points."""
    import dataclasses

    import read.viz

    seen: list[str] = []
    real = read.viz.similarity_heatmap

    def spy(*args, **kwargs):
        seen.append(kwargs["geometry"])
        return real(*args, **kwargs)

    monkeypatch.setattr(read.viz, "similarity_heatmap", spy)
    monkeypatch.setattr(model.config, "sasp", dataclasses.replace(model.config.sasp, geometry=geometry))
    evaluate(model, tiny_tokenizer, teacher_set, EvalConfig(batch_size=4, vis=3, output_dir=str(tmp_path)))
    assert len(list((tmp_path / "vis").glob("*.png"))) >= 3
    assert seen and set(seen) == {geometry}
