"""A web page to ask a READ model about images (Gradio).

    python app.py                                          # the newest quickstart model, http://127.0.0.1:7860
    python app.py --model runs/synthetic_tiny/model --examples my_pictures/ --port 8000
    python app.py --model CKPT --released --vision_tower clip-vit-large-patch14-336 --precision bf16 [--load_in_8bit]

The page takes an uploaded (or example) image and a question and shows the answer, each [SEG]'s mask in its own
colour, the similarity maps with the SasP points, and the mask PNGs to download; the SasP settings can be changed
per question. Requests are served one at a time from a bounded queue. Models load as in chat.py
(read.model.load_model, then the device, precision and 4/8-bit quantisation chat.py applies).

A start-up error a user can fix (no quickstart model, a missing or broken model, a bad examples folder, a taken port)
ends with one line ``error: ...`` and exit status 1; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page never contacts anything but its users

from read.app.discovery import collect_examples, newest_quickstart_model, validation_examples_dir  # noqa: E402
from read.cli import add_debug_flag, run_main  # noqa: E402
from read.data.conversation import CONV_TEMPLATES  # noqa: E402
from read.errors import ConfigError  # noqa: E402
from read.model.dtypes import PRECISIONS  # noqa: E402

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A web page to ask a READ model about images.")
    p.add_argument(
        "--model",
        default=None,
        help="model directory (save_pretrained / export_model.py output); default: the newest "
        "quickstart model under runs/quickstart/",
    )
    p.add_argument("--released", action="store_true", help="--model is a released READ/SESAME/LISA checkpoint")
    p.add_argument("--vision_tower", default=None, help="local CLIP tower directory (with --released)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--load_in_8bit", action="store_true", help="8-bit LM weights via bitsandbytes (GPU)")
    p.add_argument("--load_in_4bit", action="store_true", help="4-bit LM weights via bitsandbytes (GPU)")
    p.add_argument("--conv_type", default="llava_v1", choices=sorted(CONV_TEMPLATES), help="conversation template")
    p.add_argument("--max_new_tokens", type=int, default=128, help="generation budget per answer")
    p.add_argument(
        "--sasp",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="SasP settings the page starts with, e.g. num_points=60",
    )
    p.add_argument(
        "--examples",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of example images (repeatable); a ReasonSeg JSON next to an image gives its question",
    )
    p.add_argument("--num_examples", type=int, default=8, help="examples taken from each folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also publish the page through a public Gradio link")
    p.add_argument("--queue_size", type=int, default=16, help="questions waiting at most; more are turned away")
    p.add_argument("--max_question_chars", type=int, default=1000, help="longer questions are refused")
    p.add_argument("--cache_images", type=int, default=8, help="images whose encodings are kept in memory")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.load_in_8bit and args.load_in_4bit:
        p.error("choose one of --load_in_8bit / --load_in_4bit")
    for name in ("max_new_tokens", "num_examples", "queue_size", "max_question_chars", "cache_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.released and args.model is None:
        p.error("--released needs --model (the checkpoint directory)")
    return args


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as it is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.model is None:
        args.model = _shown(newest_quickstart_model(ROOT))
        print(f"using the newest quickstart model: {args.model} (pass --model to choose another)", flush=True)
    model_dir = Path(args.model)
    folders = [Path(d) for d in args.examples]
    if not args.released:
        val = validation_examples_dir(model_dir, ROOT)  # the quickstart's synthetic validation images
        if val is not None:
            folders.insert(0, val)
    examples = [e for folder in folders for e in collect_examples(folder, args.num_examples)]

    from chat import load  # the same loading as chat.py: read.model.load_model, device, precision, 4/8-bit

    model, tokenizer = load(args)

    from read.app.page import CSS, build_page, theme
    from read.app.service import DemoService

    service = DemoService(
        model,
        tokenizer,
        conv_type=args.conv_type,
        max_new_tokens=args.max_new_tokens,
        max_question_chars=args.max_question_chars,
        cache_images=args.cache_images,
    )
    try:
        page = build_page(service, examples, model_name=str(model_dir))
        page.queue(max_size=args.queue_size, default_concurrency_limit=1)
        try:
            page.launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                theme=theme(),
                css=CSS,
                allowed_paths=[str(f.resolve()) for f in folders],
                show_error=False,
                quiet=True,
                prevent_thread_lock=True,
            )
        except OSError as e:  # e.g. the port is taken
            raise ConfigError(f"cannot serve on {args.host}:{args.port}: {e}; choose another --port") from e
        print(
            f"serving {page.local_url}" + (f" and {page.share_url}" if page.share_url else "") + "; Ctrl-C stops",
            flush=True,
        )
        page.block_thread()
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
