"""Dataset registry, `qclip data list | fetch | verify` and first-use builds, all offline: a loopback HTTP server
(started here, on 127.0.0.1) serves source archives made in the real source layouts (GitHub archive tarballs with a
`REPO-COMMIT/` top folder, raw IDX .gz files), and `QCLIP_DATA_BASE_URL` points the registry at it.
"""

from __future__ import annotations

import copy
import email.utils
import gzip
import hashlib
import http.server
import io
import json
import logging
import random
import re
import tarfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from qclip.cli import main
from qclip.io import download, registry
from qclip.io.build import pack_shard, source_filter
from qclip.io.data import WdsImageDataset, iter_wds_samples, resolve_dataset
from qclip.io.errors import DataError, QclipInputError
from qclip.io.integrity import tree_digest

REAL_REGISTRY = json.loads((registry.REGISTRY_DIR / "datasets.json").read_text())
REAL_TEXT = json.loads((registry.REGISTRY_DIR / "text.json").read_text())


# ---------------------------------------------------------------------------------------------------- server

class _Handler(http.server.BaseHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support and fault injection: the first `drops` responses (all when -1)
    send half their body and close the connection; `script` answers the first requests of a path (in order) with an
    HTTP status (and optional `Retry-After` value) or with other bytes than the served file's (`bytes` entries)."""

    root: Path
    drops = 0
    requests: list = []
    script: dict = {}

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        """No access log."""

    def do_GET(self):
        """Serve a file (or a range of it), maybe cut short."""
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        steps = type(self).script.get(self.path.lstrip("/"), [])
        step = steps.pop(0) if steps else None
        if isinstance(step, tuple):  # (status, Retry-After or None)
            self.send_response(step[0])
            if step[1] is not None:
                self.send_header("Retry-After", step[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = step if isinstance(step, bytes) else path.read_bytes()
        start = int(rng[len("bytes="):].rstrip("-")) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).drops:
            type(self).drops -= 1 if type(self).drops > 0 else 0
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """A loopback server over `tmp_path/srv`, set as `QCLIP_DATA_BASE_URL`; yields (folder, handler class)."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"root": root, "drops": 0, "requests": [], "script": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QCLIP_DATA_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/")
    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("qclip.io.download._sleep", lambda s: None)
    monkeypatch.delenv("QCLIP_FETCH_RETRY_BUDGET_S", raising=False)
    try:
        yield root, handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _test_registry(tmp_path, monkeypatch, edit=None) -> dict:
    """Install a copy of the real registry without expected hashes (synthetic sources), after `edit(reg)`."""
    reg = copy.deepcopy(REAL_REGISTRY)
    for entry in reg["datasets"].values():
        entry["files"] = {}
        entry.pop("source_tree_sha256", None)
    for source in reg["sources"].values():
        for key in ("sha256", "md5", "content_sha256"):
            source[key] = None
    if edit:
        edit(reg)
    folder = tmp_path / f"registry-{len(list(tmp_path.glob('registry-*')))}"  # a new folder: loads are cached
    folder.mkdir()
    (folder / "datasets.json").write_text(json.dumps(reg))
    (folder / "text.json").write_text(json.dumps(REAL_TEXT))
    monkeypatch.setattr(registry, "REGISTRY_DIR", folder)
    return reg


# ---------------------------------------------------------------------------------------------------- sources

def _github_tarball(dest: Path, source: dict, files: dict[str, bytes]) -> None:
    """Write `files` as GitHub serves a commit: gzip tar, pax global header with the commit, `REPO-COMMIT/` prefix."""
    top = f"{source['repo'].split('/')[1]}-{source['commit']}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": source["commit"]},
                      compresslevel=1) as tf:
        names = sorted(files)
        dirs = sorted({"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)})
        for d in ["", *dirs]:
            info = tarfile.TarInfo(f"{top}/{d}".rstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o775
            tf.addfile(info)
        for name in names:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode = len(files[name]), 0o664
            tf.addfile(info, io.BytesIO(files[name]))


def _image(seed: int, size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    rnd = random.Random(seed)
    im = Image.new(mode, size)
    im.putdata([tuple(rnd.randrange(256) for _ in mode) if len(mode) > 1 else rnd.randrange(256)
                for _ in range(size[0] * size[1])])
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _serve_pacs(srv: Path) -> dict[str, bytes]:
    """A small PACS tree (`PACS/<domain>/<class>/...`, JPEG photos, PNG sketches, non-square sizes) + README."""
    files = {"README.md": b"# Homework3-PACS\n", "gradient_reversal_example.py": b"print()\n"}
    for d, domain in enumerate(["photo", "art_painting", "cartoon", "sketch"]):
        for c, cls in enumerate(["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]):
            for k in range(2):
                ext, fmt = ("png", "PNG") if domain == "sketch" else ("jpg", "JPEG")
                files[f"PACS/{domain}/{cls}/pic_{k:03d}.{ext}"] = _image(100 * d + 10 * c + k, (40 + k * 9, 31), fmt)
    _github_tarball(srv / REAL_REGISTRY["sources"]["pacs"]["path"], REAL_REGISTRY["sources"]["pacs"], files)
    return files


def _in_file(row: list[str]) -> str:
    """The source's file name of an ImageNet class: `<wnid>_<name>.JPEG`."""
    return f"{row[0]}_{re.sub('[^A-Za-z0-9]+', '_', row[1])}.JPEG"


def _idx(images: list[bytes], labels: list[int]) -> tuple[bytes, bytes]:
    head = (2051).to_bytes(4, "big") + len(images).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    return head + b"".join(images), (2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + bytes(labels)


def _serve_fashion(srv: Path, n: int = 30) -> tuple[list[bytes], list[int]]:
    """Fashion-MNIST-style IDX .gz files at their raw GitHub paths; returns the pixel rows and labels."""
    rnd = random.Random(7)
    images = [bytes(rnd.randrange(256) for _ in range(28 * 28)) for _ in range(n)]
    labels = [i % 10 for i in range(n)]
    img_idx, lab_idx = _idx(images, labels)
    for sid, data in (("fashion-mnist-t10k-images", img_idx), ("fashion-mnist-t10k-labels", lab_idx)):
        path = srv / REAL_REGISTRY["sources"][sid]["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data, mtime=0))
    return images, labels


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_partial(root: Path, name: str) -> None:
    assert not (root / f"wds_{name}").exists()
    assert not root.exists() or not list(root.glob(f".wds_{name}*"))


def _one_error_line(capsys) -> str:
    """The error line on stderr; retry and set-aside warnings (`qclip: WARNING: ...`) may come before it."""
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("qclip: WARNING: ")]
    assert len(err) == 1 and err[0].startswith("qclip: error: "), err
    return err[0]


# ---------------------------------------------------------------------------------------------------- registry

def test_registry_lists_every_demo_dataset_with_pinned_sources():
    names = registry.dataset_names()
    assert names == sorted(["cifar10", "fashion_mnist", "pacs_photo", "pacs_art_painting", "pacs_cartoon",
                            "pacs_sketch", "pacs_ood_for_cifar10", "imagenet_samples", "imagenet_cifar10_shift",
                            "imagenet_cifar10_ood"])
    reg = registry.load_registry()
    for name in names:
        entry = registry.get_entry(f"wds/{name}")
        assert entry["files"]["test/0.tar"] and len(entry["files"]["test/0.tar"]) == 64
        assert {"test/nshards.txt", "classnames.txt", "zeroshot_classification_templates.txt",
                "sources_test.tsv", "README.md"} <= set(entry["files"])
        for sid in entry["sources"].values():
            source = reg["sources"][sid]
            assert len(source["commit"]) == 40 and source["commit"] in source["path"]
    assert registry.source_url(reg["sources"]["cifar10-images"]).startswith("https://")
    assert registry.canonical_name("wds_pacs_sketch") == "pacs_sketch" and registry.canonical_name("x") is None
    assert len(REAL_TEXT["classnames"]["imagenet1k"]) == 1000 and len(REAL_TEXT["cifar10_mapping"]) == 1000


def test_verify_reference_data_root_real_data(data_root, capsys):
    assert main(["data", "verify", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].endswith("10 ok, 0 re-encoded, 0 absent, 0 FAILED")


@pytest.mark.slow
def test_fetch_cifar10_byte_identical_real_data(data_root, server, tmp_path, capsys):
    """Rebuild the CIFAR-10 source tree from the reference shards (the JPEG bytes are the source's own) and check
    that `qclip data fetch cifar10` reproduces the reference wds_cifar10 byte for byte."""
    srv, _ = server
    reference = data_root / "wds_cifar10"
    files = {"README.md": b"# CIFAR-10-images\n"}
    for split, shards in (("train", 5), ("test", 1)):
        rows = (reference / f"sources_{split}.tsv").read_text().splitlines()
        sources = dict(row.split("\t")[0::2] for row in rows)
        for i in range(shards):
            for sample in iter_wds_samples(str(reference / split / f"{i}.tar")):
                files[sources[sample.key]] = sample.image
    assert len(files) == 60001
    source = REAL_REGISTRY["sources"]["cifar10-images"]
    _github_tarball(srv / source["path"], source, files)
    out_root = tmp_path / "data"
    assert main(["data", "fetch", "cifar10", "--data-root", str(out_root), "--no-progress"]) == 0
    assert "every file matches the registry" in capsys.readouterr().out
    built = _tree(out_root / "wds_cifar10")
    assert built.keys() == _tree(reference).keys()
    for rel, data in built.items():
        assert data == (reference / rel).read_bytes(), rel
    # a corrupted shard of a byte-exact dataset fails verify
    shard = out_root / "wds_cifar10" / "train" / "3.tar"
    shard.chmod(0o644)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert main(["data", "verify", "--data-root", str(out_root), "cifar10"]) == 2
    assert "wds_cifar10/train/3.tar differs" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------- recipes

def test_pacs_build_is_deterministic_and_readable(server, tmp_path, monkeypatch, capsys):
    srv, handler = server
    _test_registry(tmp_path, monkeypatch)
    files = _serve_pacs(srv)
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        assert main(["data", "fetch", "pacs_sketch", "pacs_ood_for_cifar10", "--data-root", str(root),
                     "--no-progress"]) == 0
    assert f"built {roots[1] / 'wds_pacs_sketch'}" in capsys.readouterr().out
    assert len([r for r in handler.requests if "Homework3-PACS" in r[0]]) == 1  # the source is cached
    for name in ("pacs_sketch", "pacs_ood_for_cifar10"):
        a, b = _tree(roots[0] / f"wds_{name}"), _tree(roots[1] / f"wds_{name}")
        assert a == b and set(a) == {"test/0.tar", "test/nshards.txt", "classnames.txt", "sources_test.tsv",
                                     "zeroshot_classification_templates.txt", "README.md"}
    spec = resolve_dataset("wds/pacs_sketch", data_root=roots[0])
    assert spec.classnames == ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
    rows = [r.split("\t") for r in (roots[0] / "wds_pacs_sketch" / "sources_test.tsv").read_text().splitlines()]
    expected = sorted((f, c) for c, cls in enumerate(spec.classnames) for f in files if f"sketch/{cls}/" in f)
    shuffled = list(expected)
    random.Random(0).shuffle(shuffled)
    assert [(r[2], int(r[1])) for r in rows] == shuffled
    assert [r[0] for r in rows] == [f"s{i:09d}" for i in range(14)]
    samples = list(WdsImageDataset(spec.shards))
    assert [lab for _, lab in samples] == [int(r[1]) for r in rows]
    # 40x31 / 49x31 sources: shorter side 96, longer side int(96 * w / h)
    assert [im.size for im, _ in samples] == [(int(96 * (40 + 9 * int(r[2][-5])) / 31), 96) for r in rows]
    ood = [r.split("\t") for r in (roots[0] / "wds_pacs_ood_for_cifar10" / "sources_test.tsv").read_text().splitlines()]
    assert len(ood) == 4 * 5 * 2 and {int(r[1]) for r in ood} == {1, 2, 3, 5, 6}


def test_imagenet_and_fashion_builds_are_deterministic(server, tmp_path, monkeypatch):
    srv, _ = server
    _test_registry(tmp_path, monkeypatch)
    mapping = REAL_TEXT["cifar10_mapping"]
    files = {"README.md": b"x\n", "gallery.md": b"y\n"}
    for i, row in enumerate(mapping):
        files[_in_file(row)] = _image(i, (9 + i % 5, 7), "JPEG")
    source = REAL_REGISTRY["sources"]["imagenet-sample-images"]
    _github_tarball(srv / source["path"], source, files)
    images, labels = _serve_fashion(srv)
    builds = []
    for root in (tmp_path / "a", tmp_path / "b"):
        assert main(["data", "fetch", "imagenet_cifar10_shift", "fashion_mnist", "--data-root", str(root),
                     "--no-progress"]) == 0
        builds.append({n: _tree(root / f"wds_{n}") for n in ("imagenet_cifar10_shift", "fashion_mnist")})
    assert builds[0] == builds[1]
    root = tmp_path / "a"
    rows = [r.split("\t") for r in (root / "wds_imagenet_cifar10_shift/sources_test.tsv").read_text().splitlines()]
    cifar = REAL_TEXT["classnames"]["cifar10"]
    want = {_in_file(row): cifar.index(row[2]) for row in mapping if row[2] != "-"}
    assert len(rows) == 220 and {r[2]: int(r[1]) for r in rows} == want
    spec = resolve_dataset("wds/imagenet_cifar10_shift", data_root=root)
    assert {im.size for im, _ in WdsImageDataset(spec.shards)} == {(128, 128)}
    spec = resolve_dataset("wds/fashion_mnist", data_root=root)
    order = [int(r.split("\t")[2].split(":")[1])
             for r in (root / "wds_fashion_mnist/sources_test.tsv").read_text().splitlines()]
    got = list(iter_wds_samples(spec.shards[0]))
    assert [s.label for s in got] == [labels[i] for i in order]
    assert [Image.open(io.BytesIO(s.image)).tobytes() for s in got] == [images[i] for i in order]
    assert all(s.image_ext == "png" and Image.open(io.BytesIO(s.image)).mode == "L" for s in got)


def test_verify_reencoded_corrupted_and_strict(server, tmp_path, monkeypatch, capsys):
    srv, _ = server
    _serve_fashion(srv)
    _test_registry(tmp_path, monkeypatch)
    root = tmp_path / "data"
    assert main(["data", "fetch", "fashion_mnist", "--data-root", str(root), "--no-progress"]) == 0
    folder = root / "wds_fashion_mnist"
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in _tree(folder).items()}
    _test_registry(tmp_path, monkeypatch, lambda reg: reg["datasets"]["fashion_mnist"].update(files=hashes))
    capsys.readouterr()
    assert main(["data", "verify", "--data-root", str(root)]) == 0
    assert "fashion_mnist                ok" in capsys.readouterr().out
    shard = folder / "test" / "0.tar"
    samples = [(s.key, s.image_ext, s.image, s.label) for s in iter_wds_samples(str(shard))]
    shard.write_bytes(pack_shard(samples, {**REAL_REGISTRY["datasets"]["fashion_mnist"]["tar"], "gzip_level": 1}))
    assert main(["data", "verify", "--data-root", str(root), "fashion_mnist"]) == 0  # same content, other bytes
    line = capsys.readouterr().out.splitlines()[0].split()
    assert line[:4] == ["fashion_mnist", "re-encoded", "content", "checked"]
    assert main(["data", "verify", "--data-root", str(root), "--strict", "fashion_mnist"]) == 2
    assert "test/0.tar differs from the registry" in _one_error_line(capsys)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    shard.write_bytes(bytes(raw))
    assert main(["data", "verify", "--data-root", str(root), "fashion_mnist"]) == 2
    assert "fashion_mnist" in _one_error_line(capsys)
    samples[3] = (samples[3][0], "png", samples[3][2], (samples[3][3] + 1) % 10)  # a wrong label
    shard.write_bytes(pack_shard(samples, REAL_REGISTRY["datasets"]["fashion_mnist"]["tar"]))
    assert main(["data", "verify", "--data-root", str(root), "fashion_mnist"]) == 2
    assert f"{samples[3][0]}.cls" in _one_error_line(capsys)
    (folder / "classnames.txt").write_text("a\n")
    assert main(["data", "verify", "--data-root", str(root), "fashion_mnist"]) == 2
    assert "classnames.txt differs" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------- faults

def test_dropped_connection_resumes_with_range(server, tmp_path, monkeypatch, capsys):
    srv, handler = server
    images, _ = _serve_fashion(srv, n=400)
    _test_registry(tmp_path, monkeypatch)
    handler.drops = 1
    root = tmp_path / "data"
    assert main(["data", "fetch", "fashion_mnist", "--data-root", str(root), "--no-progress"]) == 0
    first = [r for r in handler.requests if "t10k-images" in r[0]]
    size = (srv / REAL_REGISTRY["sources"]["fashion-mnist-t10k-images"]["path"]).stat().st_size
    assert first == [(first[0][0], None), (first[0][0], f"bytes={size // 2}-")]
    assert len(list(iter_wds_samples(str(root / "wds_fashion_mnist/test/0.tar")))) == 400


@pytest.mark.parametrize("fault", ["persistent-drop", "checksum", "404", "tree"])
def test_fetch_faults_are_one_line_exit_2_without_partial_data(server, tmp_path, monkeypatch, capsys, fault):
    srv, handler = server
    _serve_fashion(srv)
    name = "fashion_mnist"
    if fault == "persistent-drop":
        handler.drops = -1
        _test_registry(tmp_path, monkeypatch)
    elif fault == "checksum":
        _test_registry(tmp_path, monkeypatch,
                       lambda reg: reg["sources"]["fashion-mnist-t10k-images"].update(sha256="0" * 64))
    elif fault == "404":
        _test_registry(tmp_path, monkeypatch)
        (srv / REAL_REGISTRY["sources"]["fashion-mnist-t10k-labels"]["path"]).unlink()
    else:
        name = "pacs_photo"
        _serve_pacs(srv)
        _test_registry(tmp_path, monkeypatch,
                       lambda reg: reg["datasets"][name].update(source_tree_sha256="1" * 64))
    root = tmp_path / "data"
    capsys.readouterr()
    assert main(["data", "fetch", name, "--data-root", str(root), "--no-progress"]) == 2
    line = _one_error_line(capsys)
    needle = {"persistent-drop": "the connection dropped after", "checksum": "checksum mismatch for http://127.0.0.1",
              "404": "HTTP 404", "tree": "differ from the registry (source tree sha256"}[fault]
    assert needle in line
    _no_partial(root, name)
    if fault == "checksum":
        left = [p.name for p in (tmp_path / "cache" / "sources").iterdir() if p.name.startswith("fashion-mnist-t10k-i")]
        # the bad download was set aside, twice (one fresh try after the first mismatch); nothing is trusted
        assert sorted(left) == ["fashion-mnist-t10k-images-idx3-ubyte.gz.bad",
                                "fashion-mnist-t10k-images-idx3-ubyte.gz.lock"]


def test_build_failure_leaves_no_partial_dataset(server, tmp_path, monkeypatch, capsys):
    srv, _ = server
    _serve_fashion(srv)
    _test_registry(tmp_path, monkeypatch, lambda reg: reg["datasets"]["fashion_mnist"].update(
        files={"test/0.tar": "2" * 64}, reencoded=False))
    root = tmp_path / "data"
    assert main(["data", "fetch", "fashion_mnist", "--data-root", str(root), "--no-progress"]) == 2
    assert "built fashion_mnist/test/0.tar differs from the registry" in _one_error_line(capsys)
    _no_partial(root, "fashion_mnist")
    assert sorted(p.name for p in root.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- healing

def _pacs_sources(srv: Path, tmp_path, monkeypatch) -> tuple[dict, Path, bytes, bytes]:
    """Serve a small PACS archive and pin pacs_photo's source tree to it; return the source record, the cache path
    of the archive, the good archive bytes and a tampered copy (one byte of one photo flipped)."""
    files = _serve_pacs(srv)
    source = REAL_REGISTRY["sources"]["pacs"]
    entry = {"name": "pacs_photo", **REAL_REGISTRY["datasets"]["pacs_photo"]}
    want = source_filter(entry, REAL_TEXT["classnames"][entry["classnames"]])
    good_tree = tree_digest({rel: data for rel, data in files.items() if want(rel)})
    _test_registry(tmp_path, monkeypatch, lambda reg: reg["datasets"]["pacs_photo"].update(
        source_tree_sha256=good_tree))
    good = (srv / source["path"]).read_bytes()
    photo = next(rel for rel in sorted(files) if rel.startswith("PACS/photo/"))
    raw = bytearray(files[photo])
    raw[len(raw) // 2] ^= 0x01
    _github_tarball(tmp_path / "tampered.tar.gz", source, {**files, photo: bytes(raw)})
    return source, tmp_path / "cache" / "sources" / source["file"], good, (tmp_path / "tampered.tar.gz").read_bytes()


@pytest.mark.parametrize("where", ["served-first", "left-in-cache"])
def test_tampered_source_is_set_aside_and_fetched_again(server, tmp_path, monkeypatch, capsys, where):
    """A source archive whose files fail the registry's tree check is moved to `*.bad` and downloaded once more:
    whether the server sent bad bytes first and good ones next, or an earlier run left bad bytes in the cache."""
    srv, handler = server
    source, cached, good, tampered = _pacs_sources(srv, tmp_path, monkeypatch)
    if where == "served-first":
        handler.script[source["path"]] = [tampered]
    else:
        cached.parent.mkdir(parents=True)
        cached.write_bytes(tampered)
    root = tmp_path / "data"
    assert main(["data", "fetch", "pacs_photo", "--data-root", str(root), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"qclip: WARNING: {cached} (from http://127.0.0.1:" in err and "source tree sha256" in err
    assert cached.read_bytes() == good
    assert cached.with_name(cached.name + ".bad").read_bytes() == tampered
    fetched = [r for r in handler.requests if r[0].lstrip("/") == source["path"]]
    assert len(fetched) == (2 if where == "served-first" else 1)
    assert len((root / "wds_pacs_photo" / "sources_test.tsv").read_text().splitlines()) == 14  # 7 classes x 2


def test_always_tampered_source_names_file_and_url_then_heals(server, tmp_path, monkeypatch, capsys):
    srv, handler = server
    source, cached, good, tampered = _pacs_sources(srv, tmp_path, monkeypatch)
    (srv / source["path"]).write_bytes(tampered)
    root = tmp_path / "data"
    assert main(["data", "fetch", "pacs_photo", "--data-root", str(root), "--no-progress"]) == 2
    line = _one_error_line(capsys)
    url = registry.source_url(source)
    assert f"{cached} (from {url}) failed its check again after a fresh download" in line
    assert "source tree sha256" in line and line.endswith(f"the bad copy is kept as {cached}.bad")
    assert len([r for r in handler.requests if r[0].lstrip("/") == source["path"]]) == 2
    assert not cached.exists()  # nothing bad is left where the next run would trust it
    _no_partial(root, "pacs_photo")
    (srv / source["path"]).write_bytes(good)  # the server is fixed: the next run heals without any cleanup
    assert main(["data", "fetch", "pacs_photo", "--data-root", str(root), "--no-progress"]) == 0
    assert cached.read_bytes() == good and (root / "wds_pacs_photo").is_dir()


def test_failed_build_refetches_sources_without_a_digest(server, tmp_path, monkeypatch, capsys):
    """Without a registry digest a bad source shows only when the build fails: its sources are set aside, fetched
    once more and the build retried."""
    srv, handler = server
    _serve_fashion(srv)
    _test_registry(tmp_path, monkeypatch)
    images = REAL_REGISTRY["sources"]["fashion-mnist-t10k-images"]
    truncated = gzip.decompress((srv / images["path"]).read_bytes())[:-5]  # valid gzip, short IDX body
    handler.script[images["path"]] = [gzip.compress(truncated, mtime=0)]
    root = tmp_path / "data"
    assert main(["data", "fetch", "fashion_mnist", "--data-root", str(root), "--no-progress"]) == 0
    assert "is not an IDX image file" in capsys.readouterr().err
    assert len([r for r in handler.requests if "t10k-images" in r[0]]) == 2
    assert len([r for r in handler.requests if "t10k-labels" in r[0]]) == 2  # no digest either: fetched again too
    assert len(list(iter_wds_samples(str(root / "wds_fashion_mnist/test/0.tar")))) == 30


# ---------------------------------------------------------------------------------------------------- back-off

class _Waits(list):
    """The back-off waits asked for, in seconds; `then[i]` is called at the i-th wait (0-based)."""

    def __init__(self):
        super().__init__()
        self.then: dict = {}

    def __call__(self, seconds: float) -> None:
        if len(self) in self.then:
            self.then[len(self)]()
        self.append(seconds)


@pytest.fixture()
def waits(monkeypatch):
    """Record the back-off waits instead of sleeping (the tests take no wall time)."""
    recorded = _Waits()
    monkeypatch.setattr(download, "_sleep", recorded)
    monkeypatch.delenv("QCLIP_FETCH_RETRY_BUDGET_S", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return recorded


def test_backoff_rides_out_a_refusing_then_busy_server(tmp_path, monkeypatch, waits, caplog):
    """Connections are refused until the third wait, then the server answers 503, 503 with an HTTP-date Retry-After
    25 s ahead, 429 with Retry-After 20, and finally the file: every wait is recorded, none slept."""
    body = bytes(range(256)) * 40
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(body)
    now = 1_700_000_000.0
    monkeypatch.setattr(download, "_clock", lambda: now)
    handler = type("Handler", (_Handler,), {"root": tmp_path / "srv", "drops": 0, "requests": [], "script": {
        "f.bin": [(503, None), (503, email.utils.formatdate(now + 25, usegmt=True)), (429, "20")]}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    httpd.server_bind()  # bound but not listening: a connection is refused
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start() -> None:
        httpd.server_activate()
        thread.start()

    waits.then[2] = start
    url = f"http://127.0.0.1:{httpd.server_address[1]}/f.bin"
    try:
        with caplog.at_level(logging.WARNING, logger="qclip.io.download"):
            path = download.fetch(url, tmp_path / "cache" / "f.bin", progress=False)
    finally:
        if thread.is_alive():
            httpd.shutdown()
        httpd.server_close()
    assert path.read_bytes() == body
    # 0.5 s doubling for the refusals and the first 503; Retry-After wins over the computed 8 s and 15 s waits
    assert waits == [0.5, 1.0, 2.0, 4.0, 25.0, 20.0]
    assert sum(waits) >= 10
    assert len(handler.requests) == 4  # 503, 503, 429, 200: the refused attempts never reached the handler
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6 and all("retrying in" in ln for ln in lines)
    assert "HTTP 429" in lines[-1] and "retrying in 20.0 s" in lines[-1]


def test_backoff_gives_up_at_the_budget_and_keeps_the_part_file(server, tmp_path, monkeypatch, waits):
    srv, handler = server
    body = bytes(range(256)) * 64
    (srv / "big.bin").write_bytes(body)
    monkeypatch.setenv("QCLIP_FETCH_RETRY_BUDGET_S", "10")
    handler.script["big.bin"] = [(503, None)] * 50
    dest = tmp_path / "cache" / "big.bin"
    url = registry.source_url({"host": "x", "path": "big.bin"})
    with pytest.raises(DataError) as ei:
        download.fetch(url, dest, progress=False)
    assert waits == [0.5, 1.0, 2.0, 4.0]  # the next wait (8 s) would pass the 10 s budget
    assert "HTTP 503" in str(ei.value) and "gave up after 5 attempts" in str(ei.value)
    assert "nothing downloaded yet" in str(ei.value)
    # a server that keeps dropping the connection mid-body: the bytes so far stay in the .part file
    handler.script.clear()
    handler.drops = -1
    waits.clear()
    with pytest.raises(DataError) as ei:
        download.fetch(url, dest, progress=False)
    part = dest.with_name("big.bin.part")
    size = part.stat().st_size
    assert 0 < size < len(body) and f"{size} bytes kept in {part}; the next call resumes it" in str(ei.value)
    assert sum(waits) <= 10 and "\n" not in str(ei.value)
    handler.drops = 0
    handler.requests.clear()
    assert download.fetch(url, dest, progress=False).read_bytes() == body
    assert handler.requests == [("/big.bin", f"bytes={size}-")]  # resumed, not restarted


@pytest.mark.parametrize("status", [403, 404])
def test_client_errors_are_not_retried(server, tmp_path, waits, status):
    srv, handler = server
    handler.script["gone.bin"] = [(status, None)]
    with pytest.raises(DataError) as ei:
        download.fetch(registry.source_url({"host": "x", "path": "gone.bin"}), tmp_path / "gone.bin", progress=False)
    assert f"HTTP {status}" in str(ei.value) and waits == [] and len(handler.requests) == 1


def test_retry_after_forms_and_budget_variable(monkeypatch):
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert download.retry_after_seconds("120", now) == 120.0
    assert download.retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now) == 30.0
    assert download.retry_after_seconds("Wed, 21 Oct 2015 07:00:00 GMT", now) == 0.0  # in the past: no wait
    assert download.retry_after_seconds("soon", now) is None and download.retry_after_seconds(None, now) is None
    monkeypatch.delenv("QCLIP_FETCH_RETRY_BUDGET_S", raising=False)
    assert download.retry_budget() == download.RETRY_BUDGET_S == 60.0
    monkeypatch.setenv("QCLIP_FETCH_RETRY_BUDGET_S", "2.5")
    assert download.retry_budget() == 2.5
    monkeypatch.setenv("QCLIP_FETCH_RETRY_BUDGET_S", "-1")
    with pytest.raises(QclipInputError, match="QCLIP_FETCH_RETRY_BUDGET_S"):
        download.retry_budget()


# ---------------------------------------------------------------------------------------------------- first use

def test_first_use_builds_into_cache_once(server, tmp_path, monkeypatch, capsys):
    srv, handler = server
    images, labels = _serve_fashion(srv)
    _test_registry(tmp_path, monkeypatch)
    for var in ("QCLIP_DATA_ROOT", "QCLIP_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    spec = resolve_dataset("wds/fashion_mnist")
    cache = tmp_path / "cache" / "data" / "wds_fashion_mnist"
    assert spec.shards == (str(cache / "test" / "0.tar"),)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wds/fashion_mnist is not in" in err[0] and "building it there" in err[0]
    assert sorted(s.label for s in iter_wds_samples(spec.shards[0])) == sorted(labels)
    count = len(handler.requests)
    assert resolve_dataset("wds/fashion_mnist").shards == spec.shards
    assert len(handler.requests) == count and capsys.readouterr().err == ""


@pytest.mark.parametrize("var", ["QCLIP_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_first_use_names_the_fetch_command(tmp_path, monkeypatch, capsys, var):
    for v in ("QCLIP_DATA_ROOT", "QCLIP_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, "1")
    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(QclipInputError) as ei:
        resolve_dataset("wds/pacs_sketch")
    assert str(ei.value).endswith("run: qclip data fetch pacs_sketch") and "\n" not in str(ei.value)
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "qclip-micro-vit", "--dataset", "wds/cifar10", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 2
    assert _one_error_line(capsys).endswith("offline mode is on (QCLIP_OFFLINE / HF_HUB_OFFLINE); run: "
                                            "qclip data fetch cifar10")
    assert not out.exists() and not (tmp_path / "cache" / "data" / "wds_cifar10").exists()


def test_explicit_data_root_without_dataset_names_fetch_command(tmp_path):
    with pytest.raises(QclipInputError) as ei:
        resolve_dataset("wds/pacs_photo", data_root=tmp_path)
    assert f"build it with: qclip data fetch pacs_photo --data-root {tmp_path}" in str(ei.value)


def test_data_list_and_unknown_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "root" / "wds_pacs_photo").mkdir(parents=True)
    assert main(["data", "list", "--data-root", str(tmp_path / "root")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11
    assert lines[1].split()[:2] == ["cifar10", "50000+10000"] and lines[1].split()[-1] == "-"
    assert next(ln for ln in lines if ln.startswith("pacs_photo ")).split()[-1] == "yes"
    assert main(["data", "fetch", "no_such_set", "--data-root", str(tmp_path)]) == 2
    assert "unknown dataset 'no_such_set' (registered: cifar10," in _one_error_line(capsys)
