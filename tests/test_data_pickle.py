"""The restricted unpickler for refs(*).p files."""

from __future__ import annotations

import os
import pickle

import pytest

from read.data.safe_pickle import UnsafePickleError, load_pickle, loads_restricted

REFS = [
    {
        "ref_id": 1,
        "ann_id": [3, 4],
        "image_id": 7,
        "split": "train",
        "sentences": [{"sent": "the left man", "sent_id": 9, "tokens": ["the", "left", "man"]}],
        "box": (1.5, 2.0, 3.0, 4.0),
        "flags": {True, False},
        "raw": b"\x00\x01",
        "none": None,
        "frozen": frozenset({1, 2}),
        "big": 2**70,
        "c": complex(1, 2),
    }
]


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_builtin_containers_roundtrip(tmp_path, protocol):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(REFS, protocol=protocol))
    assert load_pickle(path) == REFS


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_os_system_reduce_is_refused(tmp_path):
    path = tmp_path / "refs(evil).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "x": _Evil()}], protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    message = str(info.value)
    assert "refs(evil).p" in message and "system" in message


class Custom:
    pass


def test_custom_class_is_refused():
    with pytest.raises(UnsafePickleError, match="Custom"):
        loads_restricted(pickle.dumps(Custom()), source="x.p")


def test_python2_string_pickle():
    # A protocol-2 pickle written by Python 2: BINSTRING 'abc' in a list (py2 ``str``).
    data = b"\x80\x02]q\x00U\x03abcq\x01a."
    assert loads_restricted(data) == ["abc"]
    # Non-ASCII bytes in a py2 str: ASCII fails, UTF-8 decodes.
    data = b"\x80\x02]q\x00U\x05caf\xc3\xa9q\x01a."
    assert loads_restricted(data) == ["caf\u00e9"]


def test_corrupt_and_missing(tmp_path):
    path = tmp_path / "refs(bad).p"
    path.write_bytes(pickle.dumps(REFS)[:20])
    with pytest.raises(pickle.UnpicklingError, match=r"refs\(bad\).p"):
        load_pickle(path)
    with pytest.raises(FileNotFoundError, match="nothing.p"):
        load_pickle(tmp_path / "nothing.p")
