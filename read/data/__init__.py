"""Data pipeline: conversation templates, question/answer templates, tokenisation with label masking."""
