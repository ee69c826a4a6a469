"""Summarise quickstart runs in a report folder: metrics JSON, loss curves and a grid of predictions.

    python scripts/make_report.py --out reports/quickstart \\
        --run read runs/quickstart/read runs/quickstart/read/eval \\
        [--run lisa runs/quickstart/lisa runs/quickstart/lisa/eval] [--timing runs/quickstart/timing.json]

Each ``--run NAME TRAIN_DIR EVAL_DIR`` names a training output directory (``train.output_dir``) and an ``eval.py``
output directory (``results.json``, ``teacher/predictions.jsonl`` and the pictures of ``--vis``). Writes:

* ``<out>/metrics.json``: gIoU / cIoU overall, short and long per run, the number of images, the training steps,
  the optional timings, and with ``--dataset_dir`` (a synthetic dataset) the scores of query-blind guesses;
* ``<out>/loss_curve.png``: every training loss of every run against the step (from the run's ``metrics.jsonl``,
  or its TensorBoard event files), and the validation gIoU after each epoch;
* ``<out>/predictions.png``: for the first ``--grid`` evaluation images of each run, one row of
  image | ground truth | prediction | similarity map with the SasP points (the pictures ``eval.py --vis`` wrote);
  without them the row is drawn from the stored masks and points.

The last line printed is the path of ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from read.data.synthetic import SyntheticConfig, generate_scene
from read.evaluation.metrics import intersection_union, mask_iou

logger = logging.getLogger("make_report")

METRICS_FILE = "metrics.json"
LOSS_FILE = "loss_curve.png"
GRID_FILE = "predictions.png"
GROUPS = ("overall", "short", "long")


# ----------------------------------------------------------------------------------------------------------
# metrics


def read_eval_results(eval_dir: str | Path, mode: str = "teacher") -> dict[str, Any]:
    """Scores of one ``eval.py`` run.

    Arguments:
        eval_dir: the ``--output_dir`` of ``eval.py`` (holds ``results.json``).
        mode: "teacher" or "generate".

    Returns:
        {"overall"|"short"|"long": {"giou", "ciou", "num_masks"}, "num_images": int, "pointing": {...}}; groups
        missing from the results are left out, and "pointing" (``read.evaluation.pointing.summarize_pointing``) when
        the run has no similarity maps.
    """
    path = Path(eval_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no eval.py results at {path}")
    results = json.loads(path.read_text()).get("results", {})
    if mode not in results:
        raise ValueError(f"{path}: no '{mode}' results (modes present: {sorted(results)})")
    scores = results[mode]
    out: dict[str, Any] = {}
    for group in GROUPS:
        if isinstance(scores.get(group), dict):
            g = scores[group]
            out[group] = {
                "giou": round(float(g["giou"]), 4),
                "ciou": round(float(g["ciou"]), 4),
                "num_masks": int(g.get("num_masks", 0)),
            }
    if "overall" not in out:
        raise ValueError(f"{path}: the '{mode}' results have no 'overall' scores")
    out["num_images"] = int(scores.get("num_images", 0))
    if isinstance(scores.get("pointing"), dict) and scores["pointing"].get("num_queries"):
        out["pointing"] = scores["pointing"]
    return out


def read_scalars(train_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Training scalars of one run: ``<train_dir>/metrics.jsonl`` (written by ``train_dir``'s training), or else the
    TensorBoard event files under ``train_dir`` (searched recursively).

    Returns:
        {tag: [(step, value), ...] sorted by step}, tags as in TensorBoard ("train/loss", ...; "val/giou" and
        "val/ciou" from the per-epoch validation rows of metrics.jsonl); a step logged twice (a resumed run) keeps
        its later value.
    """
    series: dict[str, dict[int, float]] = {}
    log = Path(train_dir) / "metrics.jsonl"
    if log.is_file():
        with log.open() as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted run
                if row.get("kind") == "epoch" and "step" in row:
                    for key in ("val_giou", "val_ciou"):  # validation after the epoch
                        value = row.get(key)
                        if isinstance(value, (int, float)) and math.isfinite(value):
                            series.setdefault(f"val/{key[4:]}", {})[int(row["step"])] = float(value)
                    continue
                if row.get("kind") != "step" or "step" not in row:
                    continue
                for key, value in row.items():
                    if key in ("kind", "step", "epoch", "applied") or not isinstance(value, (int, float)):
                        continue
                    if isinstance(value, bool) or not math.isfinite(value):
                        continue
                    series.setdefault(f"train/{key}", {})[int(row["step"])] = float(value)
        return {tag: sorted(points.items()) for tag, points in series.items()}
    files = sorted(Path(train_dir).rglob("events.out.tfevents.*"))
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    for f in files:
        for event in EventFileLoader(str(f)).Load():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("tensor"):
                    arr = tensor_util.make_ndarray(value.tensor)
                    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
                        continue
                    v = float(arr.reshape(()))
                else:
                    v = float(value.simple_value)
                series.setdefault(value.tag, {})[int(event.step)] = v
    return {tag: sorted(points.items()) for tag, points in series.items()}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def loss_tags(scalars: dict[str, list[tuple[int, float]]]) -> list[str]:
    """The training loss tags, total loss first (tags containing "loss" and not "val"/"eval"); a term that is 0 at
    every logged step (switched off, e.g. the query-word loss with ``loss.query_weight`` 0) is left out."""
    tags = [
        t
        for t, points in scalars.items()
        if "loss" in t.lower() and "val" not in t.lower() and "eval" not in t.lower() and any(v != 0 for _, v in points)
    ]
    return sorted(tags, key=lambda t: (t.rsplit("/", 1)[-1] not in ("loss", "total_loss"), t))


def build_metrics(
    runs: list[tuple[str, str, str]], timing: dict[str, Any] | None = None, mode: str = "teacher"
) -> dict[str, Any]:
    """The metrics summary of all runs (see the module docstring)."""
    out: dict[str, Any] = {"runs": {}}
    for name, train_dir, eval_dir in runs:
        entry = read_eval_results(eval_dir, mode)
        scalars = read_scalars(train_dir)
        steps = max((s[-1][0] for t, s in scalars.items() if t in loss_tags(scalars) and s), default=None)
        entry["train_steps"] = steps
        final = {}
        for tag in loss_tags(scalars):
            tail = [v for _, v in scalars[tag][-20:]]
            final[tag] = round(float(np.mean(tail)), 5)
        entry["final_train_losses"] = final
        entry["train_dir"] = str(train_dir)
        entry["eval_dir"] = str(eval_dir)
        out["runs"][name] = entry
    if timing:
        out["timing_s"] = timing
    return out


# ----------------------------------------------------------------------------------------------------------
# pictures


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    c = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_losses(
    curves: dict[str, dict[str, list[tuple[int, float]]]],
    path: str | Path,
    window: int = 20,
    chance_giou: float | None = None,
) -> Path:
    """One panel per loss tag, one line per run (raw values faint, moving average solid), and a last panel with
    the validation gIoU after each epoch (with ``chance_giou`` as a dashed line) when the runs logged it.

    Arguments:
        curves: {run name: {tag: [(step, value), ...]}}.
        path: PNG to write.
        window: moving-average window in logged points.
        chance_giou: the gIoU of a query-blind guess, drawn for reference.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags: list[str] = []
    for scalars in curves.values():
        tags += [t for t in loss_tags(scalars) if t not in tags]
    if not tags:
        raise ValueError("no training loss scalars found in any run (TensorBoard event files)")
    if any(scalars.get("val/giou") for scalars in curves.values()):
        tags.append("val/giou")
    cols = min(2, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, tag in zip(axes.flat, tags):
        for k, (name, scalars) in enumerate(curves.items()):
            if tag not in scalars:
                continue
            steps = np.array([s for s, _ in scalars[tag]])
            values = np.array([v for _, v in scalars[tag]])
            colour = colours[k % len(colours)]
            if tag.startswith("val/"):
                ax.plot(steps, values, color=colour, marker="o", linewidth=1.6, label=name)
                continue
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(values, window), color=colour, linewidth=1.6, label=name)
        if tag == "val/giou" and chance_giou is not None:
            ax.axhline(chance_giou, color="grey", linestyle="--", linewidth=1.0, label="query-blind guess")
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(tags) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _records(eval_dir: str | Path, mode: str) -> list[dict[str, Any]]:
    path = Path(eval_dir) / mode / "predictions.jsonl"
    if not path.is_file():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _record_row(record: dict[str, Any]) -> np.ndarray | None:
    """image | ground truth | prediction (+ points) drawn from a stored record, or None if not possible."""
    from pycocotools import mask as mask_utils

    from read.data.reason_seg import load_reason_seg_item
    from read.viz import draw_points, mask_overlay

    if not record.get("image") or not record.get("mask_rle"):
        return None
    image, _, gt = load_reason_seg_item(record["image"])
    rle = dict(record["mask_rle"])
    if isinstance(rle.get("counts"), str):
        rle["counts"] = rle["counts"].encode()
    pred = mask_utils.decode(rle).astype(bool)
    panels = [image, mask_overlay(image, gt == 1, colour=(0, 255, 0)), mask_overlay(image, pred)]
    if record.get("points"):
        panels.append(draw_points(image, np.asarray(record["points"]), np.asarray(record["point_labels"])))
    return np.concatenate(panels, axis=1)


def _caption(panel: np.ndarray, text: str, height: int = 22) -> np.ndarray:
    """The panel with a white strip above it holding ``text`` (cut to fit)."""
    width = panel.shape[1]
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    scale = 0.4
    max_chars = max(8, int(width / (8.5 * scale / 0.4 * 0.85)))
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    cv2.putText(strip, text, (4, height - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def _pad_to(panel: np.ndarray, width: int) -> np.ndarray:
    if panel.shape[1] >= width:
        return panel
    pad = np.full((panel.shape[0], width - panel.shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([panel, pad], axis=1)


def _run_picture(record: dict[str, Any], eval_dir: str | Path, mode: str) -> np.ndarray | None:
    """image | ground truth | prediction | similarity + points of one record: ``eval.py --vis``'s picture when there
    is one, else drawn from the stored masks and points."""
    vis = Path(eval_dir) / mode / "vis" / (record["key"].replace("/", "_") + ".png")
    if vis.is_file():
        return cv2.cvtColor(cv2.imread(str(vis), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return _record_row(record)


def _iou(record: dict[str, Any]) -> float:
    return record["intersection"] / record["union"] if record["union"] else 1.0


def prediction_grid(
    runs: list[tuple[str, str, str]], path: str | Path, num_images: int = 6, mode: str = "teacher"
) -> Path:
    """One row per evaluation query (the first ``num_images`` scored queries of the first run that every run
    has): image | ground truth, then each run's prediction and similarity map with its points, side by side.

    A run's panels come from ``<eval_dir>/<mode>/vis/<index>_<query>.png`` (``eval.py --vis``) when present,
    otherwise they are drawn from ``predictions.jsonl``. A header names the columns; each row is captioned with the
    query and every run's IoU.
    """
    from read.viz import save_png

    by_run = []
    for name, _, eval_dir in runs:
        records = sorted(_records(eval_dir, mode), key=lambda r: (r["index"], r["query_index"]))
        by_run.append((name, eval_dir, {r["key"]: r for r in records if r.get("scored")}))
    keys = [k for k in by_run[0][2] if all(k in recs for _, _, recs in by_run)][:num_images]
    rows: list[np.ndarray] = []
    headers: list[str] = []
    for key in keys:
        image_width = None
        parts: list[np.ndarray] = []
        labels: list[str] = []
        for j, (name, eval_dir, recs) in enumerate(by_run):
            picture = _run_picture(recs[key], eval_dir, mode)
            if picture is None:
                break
            if image_width is None:
                from read.data.transforms import load_image

                image_width = load_image(recs[key]["image"]).shape[1]
                labels += ["image", "ground truth"]
            panels = picture.shape[1] // image_width
            labels += [f"{name}: mask", f"{name}: map, points"][: panels - 2]
            parts.append(picture if j == 0 else picture[:, 2 * image_width :])
        if len(parts) != len(by_run):
            continue
        rec = by_run[0][2][key]
        scores = " | ".join(f"{name} IoU {_iou(recs[key]):.2f}" for name, _, recs in by_run)
        rows.append(_caption(np.concatenate(parts, axis=1), f"{rec.get('query') or ''} | {scores}"))
        if len(labels) > len(headers):
            headers = labels
            header_width = image_width
    if not rows:
        raise ValueError("no predictions to draw: run eval.py with an --output_dir (and --vis N for pictures)")
    width = max(r.shape[1] for r in rows)
    header = np.concatenate([_caption(np.zeros((0, header_width, 3), np.uint8), h) for h in headers], axis=1)
    grid = np.concatenate([_pad_to(header, width)] + [_pad_to(r, width) for r in rows], axis=0)
    return save_png(grid, path)


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--run", nargs=3, action="append", required=True, metavar=("NAME", "TRAIN_DIR", "EVAL_DIR"),
        help="a run: its name, training output directory and eval.py output directory (repeatable)",
    )  # fmt: skip
    p.add_argument("--timing", default=None, help="JSON file of wall times in seconds, copied into metrics.json")
    p.add_argument(
        "--dataset_dir", default=None,
        help="the synthetic dataset that was evaluated: adds the scores of query-blind guesses (a random object, "
        "all objects) on --split to metrics.json, the floor a model that understood nothing would reach",
    )  # fmt: skip
    p.add_argument("--split", default="val", help="the evaluated split of --dataset_dir")
    p.add_argument("--mode", choices=("teacher", "generate"), default="teacher")
    p.add_argument("--grid", type=int, default=6, help="evaluation images per run in the prediction grid")
    return p.parse_args(argv)


def chance_scores(dataset_dir: str, split: str = "val") -> dict[str, Any]:
    """What segmenting without understanding the query scores on a written split: the floor a trained model must
    clear. The scenes are redrawn from ``synthetic_config.json`` (generation is deterministic).

    Returns:
        {"random_object": {"giou", "ciou"} (the expectation when one of the scene's objects is picked uniformly),
        "all_objects": {"giou", "ciou"} (the union of every object), "num_images": int}, also per "short" / "long";
        and "target_area_fraction": the mean fraction of an image that its target covers, the chance that a point
        placed without looking (the similarity map's peak, a positive SasP point) falls inside the target.
    """
    meta_path = Path(dataset_dir) / "reason_seg" / "ReasonSeg" / "synthetic_config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: chance scores need a dataset written by make_synthetic")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    raw = dict(meta["config"])
    for key in ("num_objects", "object_size", "texts_per_image", "colors", "shapes"):
        raw[key] = tuple(raw[key])
    raw["holdout"] = tuple(tuple(c) for c in raw["holdout"])
    cfg = SyntheticConfig(**raw)
    acc = {g: {"random_object": [[], 0.0, 0.0], "all_objects": [[], 0.0, 0.0]} for g in ("overall", "short", "long")}
    num = int(meta["counts"].get(split, 0))
    area_fractions = []
    for i in range(num):
        _, annotation, objects = generate_scene(cfg, split, i, int(meta["seed"]))
        target = objects[annotation["synthetic"]["target"]].visible
        area_fractions.append(float(np.count_nonzero(target)) / target.size)
        groups = ("overall", "long" if annotation["is_sentence"] else "short")
        # Expected intersection/union of a uniformly random pick: their means over the objects.
        pairs = [intersection_union(o.visible, target) for o in objects]
        ious = [mask_iou(inter, union) for inter, union in pairs]
        exp_i = float(np.mean([p[0] for p in pairs]))
        exp_u = float(np.mean([p[1] for p in pairs]))
        union_all = np.any([o.visible for o in objects], axis=0)
        ui, uu = intersection_union(union_all, target)
        for g in groups:
            acc[g]["random_object"][0].append(float(np.mean(ious)))
            acc[g]["random_object"][1] += exp_i
            acc[g]["random_object"][2] += exp_u
            acc[g]["all_objects"][0].append(mask_iou(ui, uu))
            acc[g]["all_objects"][1] += ui
            acc[g]["all_objects"][2] += uu
    out: dict[str, Any] = {"num_images": num, "target_area_fraction": float(np.mean(area_fractions)) if num else None}
    for g, by_name in acc.items():
        out[g] = {
            name: {"giou": float(np.mean(v[0])) if v[0] else float("nan"), "ciou": v[1] / v[2] if v[2] else 0.0,
                   "num_masks": len(v[0])}
            for name, v in by_name.items()
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = [tuple(r) for r in args.run]
    names = [r[0] for r in runs]
    if len(set(names)) != len(names):
        raise SystemExit(f"make_report.py: error: run names must be distinct, got {names}")
    timing = None
    if args.timing:
        timing = json.loads(Path(args.timing).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        metrics = build_metrics(runs, timing, args.mode)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"make_report.py: error: {e}") from e
    curves = {name: read_scalars(train_dir) for name, train_dir, _ in runs}
    if args.dataset_dir:
        try:
            metrics["chance"] = chance_scores(args.dataset_dir, args.split)
        except FileNotFoundError as e:
            raise SystemExit(f"make_report.py: error: {e}") from e
    chance = metrics["chance"]["overall"]["random_object"]["giou"] if "chance" in metrics else None
    files = {"metrics": METRICS_FILE}
    if any(loss_tags(c) for c in curves.values()):
        plot_losses(curves, out / LOSS_FILE, chance_giou=chance)
        files["loss_curve"] = LOSS_FILE
    else:
        logger.warning("no TensorBoard loss scalars under %s: no loss curve", [r[1] for r in runs])
    try:
        prediction_grid(runs, out / GRID_FILE, args.grid, args.mode)
        files["predictions"] = GRID_FILE
    except ValueError as e:
        logger.warning("no prediction grid: %s", e)
    metrics["files"] = files
    path = out / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    for name, entry in metrics["runs"].items():
        parts = [f"{g} gIoU {entry[g]['giou']:.3f} cIoU {entry[g]['ciou']:.3f}" for g in GROUPS if g in entry]
        print(f"{name}: " + " | ".join(parts))
        p = entry.get("pointing")
        if p:
            print(f"{name}: map peak inside the target {_pct(p['peak_in_target'])}, positive points inside "
                  f"{_pct(p['pos_in_target'])}, negative points outside {_pct(p['neg_outside'])} "
                  f"({p['num_queries']} queries)")  # fmt: skip
    if "chance" in metrics:
        c = metrics["chance"]["overall"]
        print(
            f"query-blind guesses on the same images: a random object gIoU {c['random_object']['giou']:.3f}, "
            f"all objects gIoU {c['all_objects']['giou']:.3f}"
        )
        area = metrics["chance"].get("target_area_fraction")
        if area is not None:
            print(f"a point placed at random lies inside the target {_pct(area)} of the time (mean target area)")
    print(path)
    return path


if __name__ == "__main__":
    main()
