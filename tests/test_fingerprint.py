"""Content fingerprints of weights and data (read/fingerprint.py): what they cover, that the digest cache is reused
while a file is unchanged and not after a rewrite, and both checkpoint layouts."""

from __future__ import annotations

import hashlib
import json

import read.fingerprint as fingerprint_module
from read.fingerprint import (
    DigestCache,
    describe_change,
    file_sha256,
    files_fingerprint,
    model_files,
    weights_fingerprint,
)
from released_fixtures import Sizes, write_clip_tower, write_released_checkpoint


def test_file_sha256_is_the_content_digest(tmp_path):
    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 70_000  # larger than one read chunk
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_digest_cache_is_reused_until_the_file_is_rewritten(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"first weights")
    calls: list[str] = []
    real = fingerprint_module.file_sha256
    monkeypatch.setattr(fingerprint_module, "file_sha256", lambda p, bar=None: calls.append(str(p)) or real(p, bar))
    cache_file = tmp_path / "out" / "file_digests.json"
    cache = DigestCache(cache_file)
    first = cache.digests([path])[str(path)]
    cache.save()
    assert first == hashlib.sha256(b"first weights").hexdigest() and len(calls) == 1
    # a new process with the cache file: nothing is hashed again
    assert DigestCache(cache_file).digests([path])[str(path)] == first and len(calls) == 1
    # the same size, rewritten in place (what an export into the same directory does): hashed again
    path.write_bytes(b"other weights")
    second = DigestCache(cache_file).digests([path])[str(path)]
    assert second == hashlib.sha256(b"other weights").hexdigest() != first and len(calls) == 2
    # a broken cache file is ignored
    cache_file.write_text("{not json")
    assert DigestCache(cache_file).digests([path])[str(path)] == second


def test_model_files_of_both_layouts(tmp_path):
    released, tower = tmp_path / "READ-tiny", tmp_path / "clip"
    write_released_checkpoint(released, "read", Sizes())
    write_clip_tower(tower, Sizes())
    (released / "README.md").write_text("notes")
    (released / "results.json").write_text("{}")  # written by an evaluation that used the model dir as output
    (released / ".gitattributes").write_text("*.bin lfs")
    names = [p.name for p in model_files(released)]
    assert names == sorted(names)
    assert "pytorch_model-00001-of-00002.bin" in names and "pytorch_model-00002-of-00002.bin" in names
    assert "pytorch_model.bin.index.json" in names and "config.json" in names and "tokenizer.model" in names
    assert not {"README.md", "results.json", ".gitattributes"} & set(names)
    cache = DigestCache()
    fp = weights_fingerprint({"model": released, "vision_tower": tower, "none": None}, cache)
    assert set(fp) == {f"model/{n}" for n in names} | {f"vision_tower/{p.name}" for p in model_files(tower)}
    shard = released / "pytorch_model-00002-of-00002.bin"
    assert fp["model/pytorch_model-00002-of-00002.bin"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    # another checkpoint written into the same directory: the changed shards are named
    write_released_checkpoint(released, "read", Sizes(), seed=1)
    change = describe_change(
        {"weights": fp}, {"weights": weights_fingerprint({"model": released, "vision_tower": tower}, cache)}
    )
    assert change == "weights changed (model/pytorch_model-00001-of-00002.bin, model/pytorch_model-00002-of-00002.bin)"


def test_files_fingerprint_depends_on_content_and_relative_names(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "x.json").write_text(json.dumps({"text": ["the dog"]}))
        (tmp_path / root / "x.jpg").write_bytes(b"\xff\xd8 pixels \xff\xd9")
    cache = DigestCache()
    a = files_fingerprint([tmp_path / "a/x.json", tmp_path / "a/x.jpg"], tmp_path / "a", cache)
    b = files_fingerprint([tmp_path / "b/x.jpg", tmp_path / "b/x.json"], tmp_path / "b", cache)
    assert a == b  # a copy elsewhere, listed in another order
    (tmp_path / "b/x.json").write_text(json.dumps({"text": ["the cat"]}))
    assert files_fingerprint([tmp_path / "b/x.json", tmp_path / "b/x.jpg"], tmp_path / "b", cache) != a


def test_describe_change_is_one_short_line():
    assert describe_change({"mode": "teacher"}, {"mode": "teacher"}) is None
    assert describe_change({"mode": "teacher", "data": "1"}, {"mode": "generate", "data": "2"}) == (
        "data changed, mode: 'teacher' -> 'generate'"
    )
    many = {f"model/shard{i}": str(i) for i in range(5)}
    assert describe_change({"weights": many}, {"weights": {k: "x" for k in many}}) == (
        "weights changed (model/shard0, model/shard1, model/shard2 and 2 more)"
    )
    assert describe_change({}, {"prompts": "x" * 100}).startswith("prompts: None -> 'xxxx")
    assert len(describe_change({}, {"prompts": "x" * 100})) < 80
