"""How long the demo page takes to answer, measured in a real browser: app.py serves the model, headless Chromium
uploads each image and asks its question twice (after one uncounted warm-up question); the first answer includes
encoding the image, the second reuses the cached encodings. Prints both per image, their medians and ratio;
optionally saves a screenshot of the page after the first answer.

    python scripts/bench_app.py                                  # newest quickstart model, 5 validation images
    python scripts/bench_app.py --model runs/x/model --images a.jpg b.jpg --questions "the dog" "the cat"
    python scripts/bench_app.py --screenshot docs/app_screenshot.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from read.app.browser import ask, open_page, read_page, serve, upload_image  # noqa: E402
from read.app.discovery import collect_examples, newest_quickstart_model, validation_examples_dir  # noqa: E402
from read.cli import add_debug_flag, run_main  # noqa: E402
from read.errors import ConfigError, MissingFileError, UserError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time the demo page's answers in headless Chromium.")
    p.add_argument("--model", default=None, help="model directory (default: the newest quickstart model)")
    p.add_argument("--images", nargs="*", default=None, help="image files (default: the model's validation images)")
    p.add_argument("--questions", nargs="*", default=None, help="one question per --images entry")
    p.add_argument("--num_images", type=int, default=5, help="validation images used without --images")
    p.add_argument("--screenshot", default=None, help="PNG of the whole page after the first answer")
    p.add_argument("--app_args", nargs=argparse.REMAINDER, default=[], help="further app.py flags (last)")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = Path(args.model) if args.model else newest_quickstart_model(ROOT)
    if not model.is_dir():
        raise MissingFileError(f"--model {model} is not a directory")
    if args.images:
        questions = args.questions or []
        if len(questions) != len(args.images):
            raise ConfigError(f"--questions needs one question per image ({len(args.images)}), got {len(questions)}")
        cases = list(zip(map(Path, args.images), questions))
    else:
        folder = validation_examples_dir(model, ROOT)
        if folder is None:
            raise UserError(f"{model} has no validation images next to it: pass --images and --questions")
        cases = [(e.image, e.question) for e in collect_examples(folder, args.num_images) if e.question]
    try:  # shown in the page: keep it short
        model = model.resolve().relative_to(ROOT)
    except ValueError:
        pass
    print(f"model: {model}")
    first, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "app.log"
        warm_up = Path(tmp) / "warm_up.png"
        cv2.imwrite(str(warm_up), np.full((64, 64, 3), 127, np.uint8))
        with serve(["--model", str(model), *args.app_args], log=log) as url, open_page(url) as page:
            upload_image(page, warm_up)  # the page's first answer also pays for one-off set-up: not counted
            ask(page, "warm up")
            for i, (image, question) in enumerate(cases):
                upload_image(page, image)
                t_first = ask(page, question)
                shown = read_page(page)
                if i == 0 and args.screenshot:
                    Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=args.screenshot, full_page=True)
                t_cached = ask(page, question)
                first.append(t_first)
                cached.append(t_cached)
                print(
                    f"{image.name:>16}  new image {t_first:6.3f} s  cached {t_cached:6.3f} s  "
                    f"answer {shown.answer!r}  {shown.status}"
                )
    a, b = statistics.median(first), statistics.median(cached)
    print(
        f"median over {len(cases)} images: new image {a:.3f} s, cached image {b:.3f} s "
        f"(the cache saves {a - b:.3f} s, x{a / b:.2f})"
    )
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
