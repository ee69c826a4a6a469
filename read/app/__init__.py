"""The web demo (``app.py``): ``discovery`` finds the model and examples, ``service`` answers a question about an
image, ``render`` draws the masks and similarity maps, ``page`` is the Gradio page, ``browser`` drives the page in
headless Chromium (the browser test and ``scripts/bench_app.py``). Only ``page`` and ``browser`` import their web
packages."""
