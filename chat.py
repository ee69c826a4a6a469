"""Chat with a READ model about images.

    python chat.py --model runs/synthetic/export                       # interactive
    python chat.py --model DIR --image dog.jpg --query "Where is the dog?"   # one shot (scriptable)
    python chat.py --model CKPT --released --vision_tower clip-vit-large-patch14-336 --precision bf16

For every answer it saves, into ``--out_dir``: the mask overlay, the similarity heat map with the SasP points, and a
side-by-side PNG, and prints where. Press Enter at the image prompt to keep asking about the previous image
(its encodings are cached); Ctrl-D or Ctrl-C exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from read.data.transforms import ImageLoadError
from read.inference import Prediction, ReadPredictor
from read.model.dtypes import PRECISIONS

logger = logging.getLogger("chat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Chat with a READ model about images.")
    p.add_argument("--model", required=True, help="model directory (save_pretrained / export_model.py output)")
    p.add_argument("--released", action="store_true", help="--model is a released READ/SESAME/LISA checkpoint")
    p.add_argument("--vision_tower", default=None, help="local CLIP tower directory (with --released)")
    p.add_argument("--image", default=None, help="image path: with --query, answer once and exit")
    p.add_argument("--query", default=None, help="question about --image")
    p.add_argument("--out_dir", default="chat_outputs", help="where the PNGs are written")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--load_in_8bit", action="store_true", help="8-bit LM weights via bitsandbytes (GPU)")
    p.add_argument("--load_in_4bit", action="store_true", help="4-bit LM weights via bitsandbytes (GPU)")
    p.add_argument("--conv_type", default="llava_v1", help="conversation template (llava_v1, vicuna_v1, llava_llama_2)")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--sasp", nargs="*", default=[], metavar="KEY=VALUE", help="SasP overrides, e.g. num_points=60")
    args = p.parse_args(argv)
    if (args.image is None) != (args.query is None):
        p.error("--image and --query go together (give both for a one-shot answer, neither for the chat)")
    if args.load_in_8bit and args.load_in_4bit:
        p.error("choose one of --load_in_8bit / --load_in_4bit")
    return args


def load(args: argparse.Namespace):
    """Model and tokenizer on the requested device and precision (:func:`read.model.load_model`; with
    ``--released``, SasP stays off for SESAME and LISA checkpoints unless ``--sasp enabled=true``)."""
    from read.config import parse_overrides
    from read.model import load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    sasp = parse_overrides(args.sasp) if args.sasp else {}
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model {args.model} is not a directory")
    model, tokenizer = load_model(
        args.model,
        released=args.released,
        vision_tower=args.vision_tower,
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


def answer(predictor: ReadPredictor, query: str, out_dir: Path, turn: int) -> None:
    pred = predictor.predict(query)
    print(f"READ: {pred.answer}")
    n = pred.masks.shape[0]
    print(f"      {n} mask(s); target {'found' if pred.found else 'not found'}")
    stem = f"{Path(predictor.image_path).stem or 'image'}_{turn:03d}"
    cfg = predictor.model.config
    for path in save_outputs(pred, predictor.image, out_dir, stem, cfg.model.vision.image_size, cfg.sasp.geometry):
        print(f"      saved {path}")


def interact(predictor: ReadPredictor, out_dir: Path) -> int:
    """The input() loop. Returns the exit code."""
    turn = 0
    print("Ask about an image. Enter an image path (Enter: keep the current image), then a question. Ctrl-D exits.")
    while True:
        try:
            path = input("image> ").strip()
            if path:
                try:
                    predictor.set_image(path)
                except (ImageLoadError, ValueError) as e:
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
                answer(predictor, query, out_dir, turn)
            except ValueError as e:
                print(f"error: {e}")
                continue
            turn += 1
        except (EOFError, KeyboardInterrupt):
            print("\nbye")
            return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        model, tokenizer = load(args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    predictor = ReadPredictor(model, tokenizer, conv_type=args.conv_type, max_new_tokens=args.max_new_tokens)
    out_dir = Path(args.out_dir)
    if args.image is not None:
        try:
            predictor.set_image(args.image)
            answer(predictor, args.query, out_dir, 0)
        except (ImageLoadError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    return interact(predictor, out_dir)


if __name__ == "__main__":
    sys.exit(main())
