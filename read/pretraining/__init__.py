"""Pre-training the tiny base of the synthetic quickstart: a tiny LLaVA (alignment on captions, then instruction
tuning) and a tiny SAM (promptable segmentation), from random weights, on synthetic scenes
(``scripts/pretrain_base.py``)."""
