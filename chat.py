"""Chat with a READ model about images.

    python chat.py --model runs/synthetic/export                       # interactive
    python chat.py --model DIR --image dog.jpg --query "Where is the dog?"   # one shot (scriptable)
    python chat.py --model CKPT --released --vision_tower clip-vit-large-patch14-336 --precision bf16

For every answer it saves the mask overlay, the similarity heat map with the SasP points, and a side-by-side PNG into
a new folder of this run under ``--out_dir`` (``<out_dir>/<date>-<time>/``, so an earlier run's pictures are never
overwritten or mixed in), and prints where. A question too long for the model's context is refused. Press Enter at
the image prompt to keep asking about the previous image (its encodings are cached); Ctrl-D or Ctrl-C exits.
Image paths may be quoted or start with ``~``.

A user error (a missing or broken model, a bad setting, an unreadable image in one-shot mode) ends with one line
``error: ...`` and exit status 1; ``--debug`` shows its traceback. In the interactive loop such an error is printed
and the loop goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from read.cli import add_debug_flag, check_output_dir, run_main
from read.data.conversation import CONV_TEMPLATES
from read.data.transforms import load_image
from read.errors import MissingFileError, UserError
from read.inference import Prediction, ReadPredictor
from read.model.dtypes import PRECISIONS
from read.outputs import RunFolder

logger = logging.getLogger("chat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Chat with a READ model about images.")
    p.add_argument("--model", required=True, help="model directory (save_pretrained / export_model.py output)")
    p.add_argument("--released", action="store_true", help="--model is a released READ/SESAME/LISA checkpoint")
    p.add_argument("--vision_tower", default=None, help="local CLIP tower directory (with --released)")
    p.add_argument("--image", default=None, help="image path: with --query, answer once and exit")
    p.add_argument("--query", default=None, help="question about --image")
    p.add_argument(
        "--out_dir",
        default="chat_outputs",
        help="each run writes its PNGs into a new <date>-<time> folder under this one",
    )
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--load_in_8bit", action="store_true", help="8-bit LM weights via bitsandbytes (GPU)")
    p.add_argument("--load_in_4bit", action="store_true", help="4-bit LM weights via bitsandbytes (GPU)")
    p.add_argument("--conv_type", default="llava_v1", choices=sorted(CONV_TEMPLATES), help="conversation template")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--sasp", nargs="*", default=[], metavar="KEY=VALUE", help="SasP overrides, e.g. num_points=60")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error("--max_new_tokens must be >= 1")
    if (args.image is None) != (args.query is None):
        p.error("--image and --query go together (give both for a one-shot answer, neither for the chat)")
    if args.load_in_8bit and args.load_in_4bit:
        p.error("choose one of --load_in_8bit / --load_in_4bit")
    return args


def clean_path(text: str) -> str:
    """A path as typed or pasted: surrounding whitespace and matching quotes removed, ``~`` expanded."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return os.path.expanduser(text)


def load(args: argparse.Namespace):
    """Model and tokenizer on the requested device and precision (:func:`read.model.load_model`; with
    ``--released``, SasP stays off for SESAME and LISA checkpoints unless ``--sasp enabled=true``)."""
    from read.config import parse_overrides
    from read.model import load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    sasp = parse_overrides(args.sasp) if args.sasp else {}
    model_dir = Path(clean_path(args.model))
    if not model_dir.is_dir():
        raise MissingFileError(f"--model {model_dir} is not a directory")
    model, tokenizer = load_model(
        model_dir,
        released=args.released,
        vision_tower=clean_path(args.vision_tower) if args.vision_tower else None,
        dtype=PRECISIONS[precision],
        sasp_overrides=sasp,
    )
    if args.load_in_8bit or args.load_in_4bit:
        from read.model.quantize import quantize_language_model

        quantize_language_model(model, bits=8 if args.load_in_8bit else 4, device=device)
    model.to(device).eval()
    return model, tokenizer


def save_outputs(
    pred: Prediction, image: np.ndarray, out_dir: Path, stem: str, clip_size: int, geometry: str = "reference"
) -> list[Path]:
    """Mask overlay, similarity heat map with points, and both side by side, for the first mask."""
    from read.viz import mask_overlay, save_png, similarity_heatmap

    out_dir.mkdir(parents=True, exist_ok=True)
    mask = pred.masks[0] if pred.masks.shape[0] else np.zeros(image.shape[:2], dtype=bool)
    overlay = mask_overlay(image, mask)
    panels = [image, overlay]
    paths = [save_png(overlay, out_dir / f"{stem}_mask.png")]
    if pred.similarity.shape[0] and pred.similarity.shape[1]:
        heat = similarity_heatmap(
            image, pred.similarity[0], clip_size, pred.point_coords[0], pred.point_labels[0], geometry=geometry
        )
        panels.append(heat)
        paths.append(save_png(heat, out_dir / f"{stem}_similarity.png"))
    paths.append(save_png(np.concatenate(panels, axis=1), out_dir / f"{stem}_side_by_side.png"))
    return paths


def answer(predictor: ReadPredictor, query: str, out: RunFolder, turn: int) -> None:
    pred = predictor.predict(query)
    print(f"READ: {pred.answer}")
    n = pred.masks.shape[0]
    print(f"      {n} mask(s); target {'found' if pred.found else 'not found'}")
    stem = f"{Path(predictor.image_path).stem or 'image'}_{turn:03d}"
    cfg = predictor.model.config
    for path in save_outputs(pred, predictor.image, out.path, stem, cfg.model.vision.image_size, cfg.sasp.geometry):
        print(f"      saved {path}")


def interact(predictor: ReadPredictor, out: RunFolder) -> int:
    """The input() loop. Returns the exit code."""
    turn = 0
    print("Ask about an image. Enter an image path (Enter: keep the current image), then a question. Ctrl-D exits.")
    while True:
        try:
            path = clean_path(input("image> "))
            if path:
                try:
                    predictor.set_image(path)
                except UserError as e:
                    print(f"error: {e}")
                    continue
            elif predictor.image is None:
                print("error: no image yet; enter an image path")
                continue
            query = input("question> ").strip()
            if not query:
                print("error: the question is empty")
                continue
            try:
                answer(predictor, query, out, turn)
            except UserError as e:
                print(f"error: {e}")
                continue
            turn += 1
        except (EOFError, KeyboardInterrupt):
            print("\nbye")
            return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out_dir = Path(clean_path(args.out_dir))
    check_output_dir(out_dir, "--out_dir")  # before the model loads and the answer is computed
    image = clean_path(args.image) if args.image is not None else None
    if image is not None:
        load_image(image)  # a bad image path fails before the model loads
    model, tokenizer = load(args)
    predictor = ReadPredictor(model, tokenizer, conv_type=args.conv_type, max_new_tokens=args.max_new_tokens)
    out = RunFolder(out_dir)
    if image is not None:
        predictor.set_image(image)
        answer(predictor, args.query, out, 0)
        return 0
    return interact(predictor, out)


if __name__ == "__main__":
    sys.exit(run_main(main))
