"""Results store: append-only JSONL, skip-done, torn lines from a crash, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp

from qclip.io.store import ResultsStore, config_hash


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 16


def test_append_skips_done_hashes(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl")
    assert store.append({"hash": "h1", "acc": 0.5})
    assert not store.append({"hash": "h1", "acc": 0.9})
    assert store.append({"hash": "h2", "acc": 0.7})
    assert [r["acc"] for r in store.records()] == [0.5, 0.7]
    assert store.done() == {"h1", "h2"}
    assert store.get("h1")["acc"] == 0.5


def test_torn_last_line_is_ignored_and_mended(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultsStore(path)
    store.append({"hash": "h1", "acc": 0.5})
    with open(path, "a") as f:  # a crash in the middle of a write
        f.write('{"hash": "h2", "acc": 0.')
    assert store.done() == {"h1"}
    assert store.append({"hash": "h2", "acc": 0.7})
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["acc"] == 0.7 and len(store.records()) == 2


def _writer(path: str, start: int) -> None:
    store = ResultsStore(path)
    for i in range(start, start + 20):
        store.append({"hash": f"h{i % 30}", "i": i})


def test_concurrent_writers_never_duplicate(tmp_path):
    path = str(tmp_path / "r.jsonl")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s)) for s in (0, 10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # a hang guard only: the count below waits for both writers to have exited
        assert p.exitcode == 0, f"writer {p.name} exit code {p.exitcode} (None: still running after 600 s)"
    records = ResultsStore(path).records()
    hashes = [r["hash"] for r in records]
    assert len(hashes) == len(set(hashes)) == 30
