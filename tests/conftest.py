"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from read.tokenizer import ReadTokenizer

ASSETS = Path(__file__).resolve().parent / "assets"
GOLDENS = Path(__file__).resolve().parent / "goldens"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> Path:
    """A 1000-piece LLaMA-style tokenizer (see scripts/make_tokenizer.py); vocabulary + 4 added tokens = 1004."""
    return ASSETS / "tiny_tokenizer"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path) -> ReadTokenizer:
    return ReadTokenizer.from_pretrained(tiny_tokenizer_dir)
