"""Where the demo finds its model and its example images when the user names neither.

* The model: the newest ``<run>/read/model`` under ``runs/quickstart/`` (what ``scripts/quickstart.sh`` exports,
  newest by the time its ``read_config.json`` was written).
* Examples: ReasonSeg-layout folders (``*.jpg`` with a ``*.json`` of the same stem whose ``text`` gives the
  question) or plain folders of images (no question). The validation split of the dataset a model was trained on
  (the quickstart's synthetic one) is found through the training run's ``config.json`` (its ``data.dataset_dir``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from read.constants import IMAGE_TOKEN
from read.data.templates import READ_EVAL_LONG_QUESTION, READ_EVAL_SHORT_QUESTION
from read.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Where scripts/quickstart.sh puts its runs (relative to the repository root).
QUICKSTART_RUNS = Path("runs") / "quickstart"
VAL_IMAGES = Path("reason_seg") / "ReasonSeg" / "val"


@dataclass(frozen=True)
class Example:
    """An example of the page: an image file and a question about it ("" when the folder gives none)."""

    image: Path
    question: str


def newest_quickstart_model(root: Path) -> Path:
    """The most recently exported quickstart model under ``root / runs/quickstart``.

    Raises:
        UserError: there is none.
    """
    runs = root / QUICKSTART_RUNS
    found = [p.parent for p in runs.glob("*/read/model/read_config.json")]
    if not found:
        raise UserError(
            f"no --model given and no quickstart model under {runs}/*/read/model: "
            "run `bash scripts/quickstart.sh` first, or pass --model DIR"
        )
    return max(found, key=lambda d: ((d / "read_config.json").stat().st_mtime, str(d)))


def validation_examples_dir(model_dir: Path, root: Path) -> Path | None:
    """The ReasonSeg validation images of the dataset the model was trained on, if they exist.

    A model exported from a training run (as the quickstart's ``<run>/read/model``) sits next to the run's
    ``config.json``, whose ``data.dataset_dir`` names the dataset. A relative ``dataset_dir`` was relative to where
    training ran: ``root`` first (where the quickstart runs), then each folder above the model (a repository
    elsewhere whose ``runs/`` holds the model). Any other model has no such examples.
    """
    run_config = model_dir.parent / "config.json"
    if not run_config.is_file():
        return None
    try:
        named = json.loads(run_config.read_text(encoding="utf-8"))["data"]["dataset_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(named, str) or not named:
        return None
    if Path(named).is_absolute():
        bases = [Path("/")]
    else:
        bases = [root, *model_dir.resolve().parents]
    for base in bases:
        folder = base / named / VAL_IMAGES
        if folder.is_dir():
            return folder
    return None


def collect_examples(folder: Path, limit: int) -> list[Example]:
    """Up to ``limit`` examples from ``folder``, in file-name order.

    An image ``x.jpg`` with a ReasonSeg ``x.json`` next to it takes its first ``text`` entry as the question, in the
    words of READ's evaluation ("What is {text} in this image? Please output segmentation mask." for a phrase,
    "{text} Please output segmentation mask." for a sentence, ``is_sentence``); a JSON file that cannot be read
    leaves the question empty.

    Raises:
        UserError: ``folder`` is not a directory or holds no image.
    """
    if not folder.is_dir():
        raise UserError(f"--examples {folder} is not a directory")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"--examples {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return [Example(p, _question_of(p)) for p in images[:limit]]


def _question_of(image: Path) -> str:
    """The question of a ReasonSeg JSON next to ``image``, phrased as READ's evaluation asks it."""
    side = image.with_suffix(".json")
    if not side.is_file():
        return ""
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        text, is_sentence = data.get("text"), bool(data.get("is_sentence", False))
    except (OSError, ValueError, AttributeError):
        return ""
    if isinstance(text, list):
        text = text[0] if text else ""
    if not isinstance(text, str) or not text.strip():
        return ""
    template = READ_EVAL_LONG_QUESTION if is_sentence else READ_EVAL_SHORT_QUESTION
    return template.removeprefix(IMAGE_TOKEN).strip().format(sent=text.strip(), class_name=text.strip())
