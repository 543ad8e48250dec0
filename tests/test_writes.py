"""The shared write helpers: atomic writes fsync the file and its folder, figures go through them, CSVs have one
writer, and the content-hash tensor cache serves, recomputes and refuses what it should."""

from __future__ import annotations

import csv
import os
import stat

import pytest
import torch

from qclip.io import paths
from qclip.io.results import write_csv
from qclip.io.tensor_cache import cache_key, cached_tensors


def test_atomic_write_fsyncs_the_file_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "sub" / "a.bin"
    paths.atomic_write_bytes(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert synced == [("file", target.stat().st_ino), ("dir", target.parent.stat().st_ino)]
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]  # no temp file left


def test_save_figure_writes_atomically_with_the_umask_mode(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from qclip.experiments.plots import save_figure

    written = []
    real = paths.atomic_write_bytes
    monkeypatch.setattr("qclip.experiments.plots.atomic_write_bytes",
                        lambda p, data: (written.append(p), real(p, data))[1])
    fig = Figure(figsize=(2, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "plots" / "f.png")
    assert written == [out]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(out.stat().st_mode) == paths.file_mode()
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]


def test_write_csv_round_trips_rows_with_given_or_first_seen_columns(tmp_path):
    rows = [{"a": 1, "b": "x,y"}, {"b": "z", "c": 2.5}]
    write_csv(tmp_path / "t.csv", rows)
    text = (tmp_path / "t.csv").read_text()
    assert "\r" not in text
    assert list(csv.DictReader(text.splitlines())) == [{"a": "1", "b": "x,y", "c": ""}, {"a": "", "b": "z", "c": "2.5"}]
    write_csv(tmp_path / "u.csv", [], ["c", "a"])
    assert (tmp_path / "u.csv").read_text() == "c,a\n"


def test_tensor_cache_serves_a_stored_entry_and_recomputes_a_damaged_one(tmp_path, monkeypatch):
    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.arange(6.0).reshape(2, 3), "labels": torch.tensor([1, 0])}

    desc = {"model": "m", "limit": 2}
    first = cached_tensors("features", desc, compute)
    assert len(calls) == 1
    served = cached_tensors("features", desc, compute)
    assert len(calls) == 1 and torch.equal(served["features"], first["features"])
    cached_tensors("features", {**desc, "limit": 3}, compute)  # another description: another entry
    assert len(calls) == 2
    entry = tmp_path / "features" / f"{cache_key(desc)}.pt"
    entry.write_bytes(b"not a torch file")
    cached_tensors("features", desc, compute)
    assert len(calls) == 3 and torch.load(entry, weights_only=True)["labels"].tolist() == [1, 0]
    cached_tensors("features", desc, compute, use_cache=False)
    assert len(calls) == 4


def test_tensor_cache_key_matches_the_documented_hash():
    import hashlib
    import json

    desc = {"model": "abc", "classnames": ["cat"], "templates": ["a {c}"]}
    assert cache_key(desc) == hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:32]


@pytest.mark.parametrize("text, ok", [("w4a8", True), ("rank-e0.9", True), ("w9z", False), ("", False)])
def test_check_spec_is_the_one_parse_to_user_error(text, ok):
    from qclip.io.errors import ConfigError
    from qclip.io.validate import check_spec

    if ok:
        assert str(check_spec("--quant", text)) == text
    else:
        with pytest.raises(ConfigError, match=f"^bad --quant {text!r}: "):
            check_spec("--quant", text)

