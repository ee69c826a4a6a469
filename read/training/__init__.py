"""DeepSpeed training: engine set-up, the training loop, atomic checkpoints, progress output and export.

``train_ds.py`` is the entry point; ``scripts/export_model.py`` turns a checkpoint into a model directory.
"""
