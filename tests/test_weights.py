"""Weight files are read without running code, and every problem names the file: shard names that leave the
checkpoint directory, truncated safetensors, pickles with payloads, tensors that do not fit the model."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from read.errors import FileFormatError, MissingFileError, UnsafeFileError
from read.model.weights import load_checked_state_dict, load_sharded_state_dict, load_state_dict_file, shard_path


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_sharded(d: Path, shards: dict[str, dict[str, torch.Tensor]], names: dict[str, str] | None = None) -> None:
    """A ``pytorch_model.bin.index.json`` directory; ``names`` overrides the shard name written for a tensor."""
    d.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for file, tensors in shards.items():
        torch.save(tensors, d / file)
        weight_map.update({k: file for k in tensors})
    weight_map.update(names or {})
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_shards_inside_the_directory_load(tmp_path):
    d = tmp_path / "ckpt"
    write_sharded(d, {"pytorch_model-00001-of-00002.bin": {"a": torch.ones(2)},
                      "pytorch_model-00002-of-00002.bin": {"b": torch.zeros(3)}})  # fmt: skip
    state = load_sharded_state_dict(d)
    assert sorted(state) == ["a", "b"] and torch.equal(state["a"], torch.ones(2))
    # "./name" and "sub/name" stay inside: accepted
    assert shard_path(d, "./x.bin", d / "i.json") == d / "x.bin"
    assert shard_path(d, "sub/x.bin", d / "i.json") == d / "sub" / "x.bin"


@pytest.mark.parametrize("name", ["../outside_shard.bin", "sub/../../outside_shard.bin", "/etc/passwd",
                                  "..\\outside_shard.bin", "", 7])  # fmt: skip
def test_shard_names_that_leave_the_directory_are_refused(tmp_path, name):
    outside = tmp_path / "outside_shard.bin"
    torch.save({"b": torch.full((2,), 9.0)}, outside)  # a real file there: it must not be read
    d = tmp_path / "ckpt"
    write_sharded(d, {"pytorch_model-00001-of-00001.bin": {"a": torch.ones(2)}}, names={"b": name})
    with pytest.raises(FileFormatError) as err:
        load_sharded_state_dict(d)
    index = d / "pytorch_model.bin.index.json"
    if isinstance(name, str) and name:
        assert str(err.value) == (
            f"{index}: shard {name!r} lies outside {d}; an index may only name files inside its own directory "
            f"(the file may have been tampered with)"
        )
    else:
        assert str(err.value) == f"{index}: shard name {name!r} is not a file name"


def test_symlinked_shards_are_followed(tmp_path):
    """Hugging Face cache snapshots link every file into ../../blobs/: such links are loaded."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    torch.save({"a": torch.arange(3.0)}, blobs / "abc123")
    d = tmp_path / "snapshots" / "rev"
    d.mkdir(parents=True)
    (d / "pytorch_model-00001-of-00001.bin").symlink_to(Path("../../blobs/abc123"))
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00001.bin"}})
    )
    assert torch.equal(load_sharded_state_dict(d)["a"], torch.arange(3.0))


def test_broken_index_files_are_named(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(FileFormatError, match=r"model.safetensors.index.json: invalid JSON"):
        load_sharded_state_dict(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weights": {}}))
    with pytest.raises(FileFormatError, match=r"model.safetensors.index.json: no 'weight_map' object"):
        load_sharded_state_dict(d)
    with pytest.raises(MissingFileError, match="no weights in"):
        load_sharded_state_dict(tmp_path / "empty")


@pytest.mark.parametrize("keep", [0, 5, 100, -16])
def test_truncated_safetensors_name_the_file(tmp_path, keep):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(good))
    data = good.read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(FileFormatError) as err:
        load_state_dict_file(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: not a readable safetensors file (")
    assert message.endswith("); it may be truncated or corrupt: download or export it again")


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "x": Payload(marker)}, path)
    with pytest.raises(UnsafeFileError) as err:
        load_state_dict_file(path)
    assert str(err.value) == (
        f"{path}: refusing to load: its pickle names 'posix.system', and a weight file holds only tensors and "
        f"containers (nothing in it was run); use weights from a source you trust"
    )
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(FileFormatError, match=r"raw.bin: a weights-only load cannot read its pickle"):
        load_state_dict_file(raw)
    assert not marker.exists()


def test_weights_that_do_not_fit_list_the_tensors(tmp_path):
    module = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["0.weight"] = torch.zeros(5, 4)
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    with pytest.raises(FileFormatError) as err:
        load_checked_state_dict(module, state, "x.safetensors", hint="export it again")
    assert str(err.value) == (
        "x.safetensors does not fit the model: 1 tensor(s) of another shape (e.g. 0.weight: (5, 4) in the file, "
        "(3, 4) in the model), 1 missing (e.g. ['1.bias']), 1 unexpected (e.g. ['2.weight']); export it again"
    )
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # nothing was loaded
    # only the required tensors need to be there
    state = {"1.weight": torch.ones(2, 3)}
    load_checked_state_dict(module, state, "x", required=["1.weight"])
    assert torch.equal(module[1].weight, torch.ones(2, 3))
