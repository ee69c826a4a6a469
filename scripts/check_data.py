#!/usr/bin/env python
"""Check a dataset folder before training or evaluation.

For every requested dataset it reports what it found (images and annotations per split) and lists every problem:
a missing, empty, truncated or unreadable file, an annotation without its image (or the reverse), ground truth that
training would skip and evaluation would refuse (a ReasonSeg annotation without a usable target polygon, a RefCOCO
ref whose object has no usable mask), a refs pickle that names a code object. Then it prints a summary.

    python scripts/check_data.py --dataset_dir data
    python scripts/check_data.py --dataset_dir data --datasets ReasonSeg refcoco fprefcoco ade20k --decode

Names: the training types (reason_seg, refer_seg, neg_refer_seg, correct_refer_seg, sem_seg, vqa; each expands to
the lists of ``DataConfig``) or single datasets (ReasonSeg, refcoco, ..., grefcoco, ade20k, ..., llava_instruct_150k).
``ReasonSeg`` checks the splits that exist (train, val, test); ``ReasonSeg|train_val`` requires those splits.
RefCOCO-family refs files are found as training and evaluation find them (``--refer_protocol auto``: READ/SESAME's
``refs(*_exclude_unified).p`` when present, else the standard ``refs(unc).p`` / ``refs(umd).p``); the report names
the file used. Polygons are checked against the image size read from the file header; ``--decode`` also decodes
every image, label map and RefCOCO mask (a truncated JPEG is found only then).

Exit status: 0 when no problem was found; 1 when problems were found but every requested dataset is still usable
(training skips the bad samples; evaluation refuses a split with one); 2 when a requested dataset is unusable (its
index files are missing or refused, or it has no usable sample), or for a usage error (an unknown dataset name, a
missing ``--dataset_dir``: one line ``error: ...``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from read.cli import add_debug_flag, run_main  # noqa: E402
from read.config import DataConfig  # noqa: E402
from read.data.reason_seg import (  # noqa: E402
    annotation_problems,
    find_reason_seg_files,
    json_path_for,
    parse_reason_seg_data,
    read_reason_seg_json,
)
from read.data.refer import REFER_DATASETS, REFER_PROTOCOLS, ReferIndex, sentence_exists  # noqa: E402
from read.data.refer_seg import image_sentences  # noqa: E402
from read.data.sample import DataError  # noqa: E402
from read.data.sem_seg import SEM_SEG_DATASETS, LabelMapSource, build_sem_seg_source, load_label_map  # noqa: E402
from read.data.transforms import image_size, load_image  # noqa: E402
from read.data.vqa import VQADataset, vqa_messages  # noqa: E402
from read.errors import ConfigError, MissingFileError, UserError  # noqa: E402

TYPES = ("reason_seg", "refer_seg", "neg_refer_seg", "correct_refer_seg", "sem_seg", "vqa")
REASON_SEG_SPLITS = ("train", "val", "test")
MAX_LISTED = 50  # problems printed per dataset (all are counted)
EXIT_OK, EXIT_PROBLEMS, EXIT_UNUSABLE = 0, 1, 2


@dataclass
class Report:
    """What was found for one dataset."""

    name: str
    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    usable: bool = True

    def fail(self, message: str) -> None:
        self.problems.append(message)
        self.usable = False


def _check_image(path: str, decode: bool, report: Report) -> bool:
    if not os.path.isfile(path):
        report.problems.append(f"missing image: {path}")
        return False
    if os.path.getsize(path) == 0:
        report.problems.append(f"empty image file: {path}")
        return False
    if decode:
        try:
            load_image(path)
        except DataError as e:
            report.problems.append(f"unreadable image: {e}")
            return False
    return True


def check_reason_seg(dataset_dir: str, folder: str, splits: list[str] | None, decode: bool) -> Report:
    """``splits=None``: the splits that exist (train, val, test); otherwise each given split must exist."""
    report = Report(f"{folder} (reason_seg)")
    root = os.path.join(dataset_dir, "reason_seg", folder)
    if splits is None:
        splits = [s for s in REASON_SEG_SPLITS if os.path.isdir(os.path.join(root, s))]
        absent = [s for s in REASON_SEG_SPLITS if s not in splits]
        report.found.append(f"splits: {', '.join(splits) or 'none'}" + (f" (absent: {', '.join(absent)})" if absent
                                                                          else ""))  # fmt: skip
        if not splits:
            report.fail(f"no split folder ({', '.join(REASON_SEG_SPLITS)}) in {root}")
            return report
    usable_total = 0
    for split in splits:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            report.fail(f"missing split folder: {split_dir}")
            continue
        try:
            files = find_reason_seg_files(dataset_dir, folder, [split])
        except FileNotFoundError as e:
            report.problems.append(str(e))
            continue
        report.problems += files.unpaired()
        usable, fp, long_q = 0, 0, 0
        for path in files.images:
            ok = _check_image(path, decode, report)
            json_path = json_path_for(path)
            try:
                ann = read_reason_seg_json(json_path)
            except DataError as e:
                report.problems.append(str(e))
                continue
            fp += ann.false_premise_qa is not None
            long_q += ann.is_sentence
            if not ok:
                continue
            try:
                height, width = load_image(path).shape[:2] if decode else image_size(path)
            except DataError as e:
                report.problems.append(f"unreadable image: {e}")
                continue
            problems = annotation_problems(ann, height, width, json_path)
            report.problems += problems
            usable += not problems
        n_images = len(files.images) + len(files.missing_annotations)
        n_jsons = len(files.images) + len(files.missing_images)
        report.found.append(
            f"{split}: {n_images} images, {n_jsons} json ({long_q} long queries, {fp} with false_premise_QA)"
        )
        usable_total += usable
    explanatory = os.path.join(root, "explanatory", "train.json")
    report.found.append(f"explanatory/train.json: {'present' if os.path.isfile(explanatory) else 'absent (optional)'}")
    if usable_total == 0 and report.usable:
        report.fail("no usable image")
    return report


def check_refer(dataset_dir: str, dataset: str, protocol: str, decode: bool) -> Report:
    report = Report(dataset)
    try:
        index = ReferIndex.open(os.path.join(dataset_dir, "refer_seg"), dataset, protocol)
    except (FileNotFoundError, UserError) as e:
        report.fail(str(e))
        return report
    report.name = f"{dataset} ({index.refs_file.describe()})"
    report.found.append(
        f"{os.path.basename(index.refs_path)}: {len(index.refs)} refs; instances.json: {len(index.images)} images, "
        f"{len(index.anns)} annotations"
    )
    splits = sorted({str(r["split"]) for r in index.refs})
    usable_total = 0
    for split in splits:
        refs = [r for r in index.refs if r["split"] == split]
        sentences = [s for r in refs for s in r["sentences"]]
        false_premises = sum(not sentence_exists(s) for s in sentences)
        image_ids = sorted({r["image_id"] for r in refs})
        ok_images = 0
        for image_id in image_ids:
            image = index.images.get(image_id)
            if image is None:
                report.problems.append(f"{index.instances_path}: no image record {image_id}")
                continue
            ok_images += _check_image(index.image_path(image), decode, report)
        for r in refs:
            image = index.images.get(r["image_id"])
            try:
                expects_target = any(s.expects_target for s in image_sentences([r]))
            except DataError as e:
                report.problems.append(f"{index.refs_path}: {e}")
                continue
            if image is None or not expects_target:
                continue
            problem = index.target_problem(r["ann_id"], image, decode=decode)
            if problem is not None:
                report.problems.append(f"{index.refs_path}: ref {r['ref_id']} (image {image['file_name']}): {problem}")
        report.found.append(
            f"{split}: {len(refs)} refs, {len(sentences)} sentences ({false_premises} false premises), "
            f"{len(image_ids)} images ({ok_images} present)"
        )
        usable_total += ok_images
    if usable_total == 0:
        report.fail("no usable image")
    return report


def check_sem_seg(dataset_dir: str, name: str, decode: bool) -> Report:
    report = Report(f"{name} (sem_seg)")
    try:
        source = build_sem_seg_source(dataset_dir, name)
    except (FileNotFoundError, DataError) as e:
        report.fail(str(e))
        return report
    usable = 0
    if isinstance(source, LabelMapSource):
        report.found.append(f"{len(source.labels)} label maps, {len(source.classes)} classes")
        for image, label in zip(source.images, source.labels):
            ok = _check_image(image, decode, report)
            if not os.path.isfile(label):
                report.problems.append(f"missing label map: {label}")
                ok = False
            elif decode:
                try:
                    load_label_map(label)
                except DataError as e:
                    report.problems.append(str(e))
                    ok = False
            usable += ok
    else:
        n_anns = sum(len(v) for v in source.image_anns.values())
        report.found.append(f"{len(source.images)} images, {n_anns} annotations, {len(source.class_map)} categories")
        for image in source.images:
            usable += _check_image(source.image_path(image), decode, report) and image["id"] in source.image_anns
    if usable == 0:
        report.fail("no usable image")
    return report


def check_vqa(dataset_dir: str, vqa_data: str, decode: bool) -> Report:
    report = Report(f"{vqa_data} (vqa)")
    try:
        ds = VQADataset(dataset_dir, vqa_data)
    except (FileNotFoundError, DataError) as e:
        report.fail(str(e))
        return report
    usable = 0
    for i, item in enumerate(ds.items):
        try:
            vqa_messages(item["conversations"], f"{ds.json_path}: item {i}")
        except (DataError, KeyError, TypeError) as e:
            report.problems.append(f"{ds.json_path}: item {i}: {e}")
            continue
        usable += _check_image(ds.image_path(item), decode, report)
    report.found.append(f"{len(ds.items)} conversations, {usable} with a present image")
    if usable == 0:
        report.fail("no usable conversation")
    return report


def expand(names: list[str], cfg: DataConfig) -> list[tuple[str, str]]:
    """Requested names -> (kind, dataset) pairs, de-duplicated in order."""
    out: list[tuple[str, str]] = []
    for name in names:
        if name == "reason_seg":
            out.append(("reason_seg", cfg.reason_seg_data or "ReasonSeg"))
        elif name in ("refer_seg", "neg_refer_seg", "correct_refer_seg"):
            lists = {"refer_seg": cfg.refer_seg_data, "neg_refer_seg": cfg.neg_refer_seg_data,
                     "correct_refer_seg": cfg.correct_refer_seg_data}  # fmt: skip
            out += [("refer", ds) for ds in lists[name]]
        elif name == "sem_seg":
            out += [("sem_seg", ds) for ds in cfg.sem_seg_data]
        elif name == "vqa":
            out.append(("vqa", cfg.vqa_data))
        elif name in REFER_DATASETS:
            out.append(("refer", name))
        elif name in SEM_SEG_DATASETS:
            out.append(("sem_seg", name))
        elif name == "ReasonSeg" or "|" in name:
            out.append(("reason_seg", name))
        elif name.startswith("llava"):
            out.append(("vqa", name))
        else:
            raise ConfigError(
                f"--datasets: unknown dataset name {name!r}; give a type ({', '.join(TYPES)}) or a dataset name "
                f"(ReasonSeg, refcoco, ..., ade20k, ..., llava_instruct_150k)"
            )
    seen, unique = set(), []
    for item in out:
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique


def run_checks(dataset_dir: str, names: list[str], cfg: DataConfig, decode: bool) -> list[Report]:
    """One report per requested dataset; a dataset whose files stop its check (e.g. a refused pickle) is one
    unusable report naming the file, and the other datasets are still checked."""
    reports = []
    for kind, ds in expand(names, cfg):
        try:
            if kind == "reason_seg":
                folder, splits = parse_reason_seg_data(ds) if "|" in ds else (ds, None)
                reports.append(check_reason_seg(dataset_dir, folder, splits, decode))
            elif kind == "refer":
                reports.append(check_refer(dataset_dir, ds, cfg.refer_protocol, decode))
            elif kind == "sem_seg":
                reports.append(check_sem_seg(dataset_dir, ds, decode))
            else:
                reports.append(check_vqa(dataset_dir, ds, decode))
        except (UserError, OSError) as e:
            report = Report(f"{ds} ({kind})")
            report.fail(str(e))
            reports.append(report)
    return reports


def exit_status(reports: list[Report]) -> int:
    """See the module docstring: 0 no problem, 1 problems in usable datasets, 2 an unusable dataset."""
    if any(not r.usable for r in reports):
        return EXIT_UNUSABLE
    return EXIT_PROBLEMS if any(r.problems for r in reports) else EXIT_OK


def print_reports(reports: list[Report], out=None) -> None:
    out = out or sys.stdout
    for r in reports:
        status = "OK" if r.usable and not r.problems else ("PROBLEMS" if r.usable else "UNUSABLE")
        print(f"== {r.name}: {status}", file=out)
        for line in r.found:
            print(f"   {line}", file=out)
        for p in r.problems[:MAX_LISTED]:
            print(f"   ! {p}", file=out)
        if len(r.problems) > MAX_LISTED:
            print(f"   ! ... and {len(r.problems) - MAX_LISTED} more problems", file=out)
    unusable = [r.name for r in reports if not r.usable]
    n_problems = sum(len(r.problems) for r in reports)
    print(
        f"Summary: {len(reports)} dataset(s) checked, {len(reports) - len(unusable)} usable, "
        f"{len(unusable)} unusable, {n_problems} problem(s)",
        file=out,
    )
    if unusable:
        print(f"Unusable: {', '.join(unusable)}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="dataset root (the layout of README 'Data')")
    parser.add_argument("--datasets", nargs="+", default=list(TYPES), help="types or single datasets to check")
    parser.add_argument("--decode", action="store_true", help="decode every image, label map and mask")
    parser.add_argument(
        "--refer_protocol",
        choices=REFER_PROTOCOLS,
        default="auto",
        help="refs-file convention (auto: READ/SESAME's file when present, else the standard one)",
    )
    parser.add_argument(
        "--reason_seg_data",
        default="ReasonSeg",
        help="the reason_seg type's data: a folder (its splits that exist) or folder|splits",
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dataset_dir):
        raise MissingFileError(f"--dataset_dir: directory not found: {args.dataset_dir}")
    cfg = DataConfig(dataset_dir=args.dataset_dir, refer_protocol=args.refer_protocol,
                     reason_seg_data=args.reason_seg_data)  # fmt: skip
    reports = run_checks(args.dataset_dir, args.datasets, cfg, args.decode)
    print_reports(reports)
    return exit_status(reports)


if __name__ == "__main__":
    sys.exit(run_main(main, error_status=EXIT_UNUSABLE))
