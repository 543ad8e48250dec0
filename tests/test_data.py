"""wds and ImageFolder datasets against a tarfile + Pillow reference: layouts, workers, limits, errors, HTTP; the
synthetic test data root (tests/synthdata.py) and, where present, the real CIFAR-10 layout."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import PILToTensor

from qclip.io.data import (
    DEFAULT_TEMPLATES,
    WdsImageDataset,
    iter_wds_samples,
    make_dataset,
    make_loader,
    resolve_dataset,
)
from qclip.io.errors import DataError, one_line

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TEMPLATES = ("a photo of a {c}.", "itap of a {c}.")
N_CIFAR = 40

Sample = namedtuple("Sample", "key ext data label")


# ---------------------------------------------------------------------------------------------------- helpers

def _png(seed: int, size: tuple[int, int], mode: str = "RGB") -> bytes:
    """Encode random pixels of the given (width, height) and Pillow mode as PNG bytes."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def _with_pngs(jpegs: list[Sample], pngs: list[tuple[tuple[int, int], str]]) -> list[Sample]:
    """Insert random-pixel PNG samples (size, mode) into the JPEG ones, one after every 10 JPEG samples."""
    out, extra = [], iter(enumerate(pngs))
    for i, s in enumerate(jpegs):
        out.append(s)
        if i % 10 == 9 and (nxt := next(extra, None)) is not None:
            j, (size, mode) = nxt
            out.append(Sample(f"p{j:09d}", "png", _png(j, size, mode), (3 * j + 1) % 10))
    return out


def _tar_bytes(samples: list[Sample]) -> bytes:
    """Pack samples as adjacent `<key>.<ext>` / `<key>.cls` members of an uncompressed ustar archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            for name, data in ((f"{s.key}.{s.ext}", s.data), (f"{s.key}.cls", str(s.label).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _build_wds(root: Path, name: str, samples: list[Sample], *, nshards: int, gz: bool,
               split: str = "test", templates: tuple[str, ...] | None = TEMPLATES) -> Path:
    """Write `root/wds_NAME` in CLIP_benchmark layout (shards `N.tar`, gzip inside when `gz`); return its folder."""
    base = root / f"wds_{name}"
    (base / split).mkdir(parents=True)
    (base / split / "nshards.txt").write_text(f"{nshards}\n")
    for i, idx in enumerate(np.array_split(np.arange(len(samples)), nshards)):
        data = _tar_bytes([samples[j] for j in idx])
        (base / split / f"{i}.tar").write_bytes(gzip.compress(data, mtime=0) if gz else data)
    (base / "classnames.txt").write_text("\n".join(CIFAR10) + "\n\n")
    if templates is not None:
        (base / "zeroshot_classification_templates.txt").write_text("\n".join(f"  {t}" for t in templates) + "\n")
    return base


def _shards(base: Path, split: str = "test") -> list[str]:
    """The shard paths of a split, from its nshards.txt."""
    n = int((base / split / "nshards.txt").read_text())
    return [str(base / split / f"{i}.tar") for i in range(n)]


def _reference(shards: list[str]) -> list[tuple[torch.Tensor, int]]:
    """Read shards with tarfile + Pillow only (the data README's reader): (uint8 CHW tensor, label) in order."""
    out = []
    for shard in shards:
        with tarfile.open(shard, mode="r|*") as tf:
            img = None
            for m in tf:
                data = tf.extractfile(m).read()
                if m.name.endswith(".cls"):
                    out.append((img, int(data)))
                else:
                    img = PILToTensor()(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


def _fingerprint(image: torch.Tensor, label) -> tuple[int, tuple[int, ...], str]:
    """Hashable identity of one sample: label, shape and a hash of the pixels."""
    return int(label), tuple(image.shape), hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


def _loader_fingerprints(loader) -> list[tuple[int, tuple[int, ...], str]]:
    """Unbatch a DataLoader of (images, labels) into sample fingerprints, in arrival order."""
    it = iter(loader)
    try:
        return [_fingerprint(img, lab) for images, labels in it for img, lab in zip(images, labels)]
    except Exception as exc:
        # The traceback's frames hold the iterator; left to the cycle collector, its worker shutdown stalls 10 s.
        exc.__traceback__ = None
        del it
        raise


# ---------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def cifar_samples(wds_root) -> list[Sample]:
    """The first N_CIFAR samples of the (synthetic) CIFAR-10 test shard, JPEG bytes unchanged."""
    out, image = [], None
    with tarfile.open(wds_root / "wds_cifar10" / "test" / "0.tar", mode="r|*") as tf:
        for m in tf:
            data = tf.extractfile(m).read()
            key, _, ext = m.name.partition(".")
            if ext == "cls":
                out.append(Sample(key, image[0], image[1], int(data)))
                if len(out) == N_CIFAR:
                    return out
            else:
                image = (ext, data)
    raise AssertionError("CIFAR-10 test shard too short")


@pytest.fixture(scope="session")
def samples(cifar_samples) -> list[Sample]:
    """CIFAR-10 JPEG samples plus 3 synthetic 32x32 PNGs (all one size, so default collate works)."""
    return _with_pngs(cifar_samples, [((32, 32), "RGB"), ((32, 32), "L"), ((32, 32), "RGBA")])


@pytest.fixture(scope="session")
def mixed_samples(cifar_samples) -> list[Sample]:
    """CIFAR-10 JPEG samples plus synthetic PNGs of other sizes and modes."""
    return _with_pngs(cifar_samples, [((48, 20), "RGB"), ((7, 33), "L"), ((64, 64), "RGBA")])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that logs nothing but remembers the paths it was asked for."""

    requests: list[str] = []

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        """Drop the access log."""

    def do_GET(self):
        """Record the path, then serve it."""
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture()
def http_root(tmp_path, samples, monkeypatch):
    """A 3-shard gzip dataset `wds_tiny` served over HTTP on 127.0.0.1; yields (served folder, base URL)."""
    served = tmp_path / "served"
    _build_wds(served, "tiny", samples, nshards=3, gz=True)
    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    handler = type("Handler", (_QuietHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------------------------------- reading

@pytest.mark.parametrize("nshards", [1, 3])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_wds_dataset_equals_reference_reader(tmp_path, mixed_samples, gz, nshards):
    base = _build_wds(tmp_path, "mix", mixed_samples, nshards=nshards, gz=gz)
    shards = _shards(base)
    with open(shards[0], "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == gz
    ref = _reference(shards)
    assert [lab for _, lab in ref] == [s.label for s in mixed_samples]
    ours = list(WdsImageDataset(shards, PILToTensor()))
    assert len(ours) == len(ref) == N_CIFAR + 3
    for (img, lab), (ref_img, ref_lab) in zip(ours, ref):
        assert lab == ref_lab and isinstance(lab, int)
        assert img.dtype == torch.uint8 and torch.equal(img, ref_img)
    assert {tuple(img.shape) for img, _ in ours} == {(3, 32, 32), (3, 20, 48), (3, 33, 7), (3, 64, 64)}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_iter_wds_samples_keys_bytes_and_labels(tmp_path, mixed_samples, gz):
    base = _build_wds(tmp_path, "mix", mixed_samples, nshards=3, gz=gz)
    got = [s for shard in _shards(base) for s in iter_wds_samples(shard)]
    assert [(s.key, s.image_ext, s.image, s.label, s.text) for s in got] == \
        [(s.key, s.ext, s.data, s.label, None) for s in mixed_samples]


def test_wds_dataset_without_transform_yields_rgb_pil(tmp_path, mixed_samples):
    base = _build_wds(tmp_path, "mix", mixed_samples, nshards=1, gz=True)
    images = [img for img, _ in WdsImageDataset(_shards(base))]
    assert all(isinstance(img, Image.Image) and img.mode == "RGB" for img in images)
    assert images[10].size == (48, 20)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
@pytest.mark.parametrize("nshards,workers", [(1, 2), (3, 2), (3, 4)])
def test_loader_with_workers_yields_every_sample_once(tmp_path, samples, nshards, workers):
    base = _build_wds(tmp_path, "tiny", samples, nshards=nshards, gz=True)
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)
    ref = sorted(_fingerprint(img, lab) for img, lab in _reference(_shards(base)))
    loader = make_loader(spec, PILToTensor(), batch_size=4, num_workers=workers)
    got = _loader_fingerprints(loader)
    assert len(got) == len(samples)
    assert sorted(got) == ref


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
@pytest.mark.parametrize("nshards,workers,limit", [(1, 2, None), (3, 2, None), (3, 4, 17), (3, 3, None)])
def test_loader_batches_do_not_depend_on_workers(tmp_path, samples, nshards, workers, limit):
    _build_wds(tmp_path, "tiny", samples, nshards=nshards, gz=True)
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)

    def batches(n):
        return [[_fingerprint(i, lab) for i, lab in zip(imgs, labs)]
                for imgs, labs in make_loader(spec, PILToTensor(), batch_size=4, num_workers=n, limit=limit)]

    assert batches(workers) == batches(0)


def test_loader_order_is_deterministic(tmp_path, samples):
    _build_wds(tmp_path, "tiny", samples, nshards=3, gz=False)
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)
    runs = [_loader_fingerprints(make_loader(spec, PILToTensor(), batch_size=5, num_workers=2)) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("limit", [1, 17, 500])
def test_limit_keeps_first_samples_of_stream(tmp_path, samples, workers, limit):
    base = _build_wds(tmp_path, "tiny", samples, nshards=3, gz=True)  # 15 + 14 + 14 samples: 17 crosses a shard
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)
    ref = [_fingerprint(img, lab) for img, lab in _reference(_shards(base))][:limit]
    got = _loader_fingerprints(make_loader(spec, PILToTensor(), batch_size=3, num_workers=workers, limit=limit))
    assert len(got) == len(ref) == min(limit, len(samples))
    assert sorted(got) == sorted(ref)
    if workers == 0:
        assert got == ref


@pytest.mark.parametrize("limit", [0, -3])
def test_nonpositive_limit_is_rejected(tmp_path, samples, limit):
    _build_wds(tmp_path, "tiny", samples, nshards=1, gz=True)
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)
    with pytest.raises(DataError, match=str(limit)):
        make_dataset(spec, PILToTensor(), limit=limit)


# ---------------------------------------------------------------------------------------------------- resolving

def test_resolve_wds_local(tmp_path, samples):
    base = _build_wds(tmp_path, "tiny", samples, nshards=3, gz=True)
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)
    assert (spec.name, spec.kind, spec.split) == ("wds/tiny", "wds", "test")
    assert spec.classnames == CIFAR10 and spec.num_classes == 10
    assert spec.templates == TEMPLATES
    assert spec.shards == tuple(str(base / "test" / f"{i}.tar") for i in range(3))


def test_resolve_wds_without_templates_uses_defaults(tmp_path, samples):
    _build_wds(tmp_path, "tiny", samples, nshards=1, gz=False, templates=None)
    assert resolve_dataset("wds/tiny", data_root=tmp_path).templates == DEFAULT_TEMPLATES


def test_resolve_wds_data_root_from_env_and_name_pattern(tmp_path, samples, monkeypatch):
    base = _build_wds(tmp_path, "tiny", samples, nshards=2, gz=True, split="train")
    monkeypatch.setenv("QCLIP_DATA_ROOT", str(tmp_path))
    assert resolve_dataset("wds/tiny", split="train").shards == tuple(_shards(base, "train"))
    monkeypatch.delenv("QCLIP_DATA_ROOT")
    spec = resolve_dataset("wds/tiny", data_root=f"{tmp_path}/wds_{{name}}", split="train")
    assert spec.shards == tuple(_shards(base, "train"))


def test_resolve_cifar10_layout(wds_root):
    test = resolve_dataset("wds/cifar10", data_root=wds_root)
    assert test.classnames == CIFAR10
    templates = (wds_root / "wds_cifar10" / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert test.templates == tuple(templates) and len(templates) == 18 and all("{c}" in t for t in templates)
    assert test.shards == (str(wds_root / "wds_cifar10" / "test" / "0.tar"),)
    train = resolve_dataset("wds/cifar10", data_root=str(wds_root), split="train")
    assert train.shards == tuple(str(wds_root / "wds_cifar10" / "train" / f"{i}.tar") for i in range(2))
    assert train.classnames == CIFAR10 and train.templates == test.templates


@pytest.mark.real_data
def test_resolve_cifar10_real_data(data_root):
    """The real set's own figures: 18 templates, one test shard and five train shards."""
    test = resolve_dataset("wds/cifar10", data_root=data_root)
    assert test.classnames == CIFAR10
    assert len(test.templates) == 18 and all("{c}" in t for t in test.templates)
    assert test.shards == (str(data_root / "wds_cifar10" / "test" / "0.tar"),)
    train = resolve_dataset("wds/cifar10", data_root=str(data_root), split="train")
    assert train.shards == tuple(str(data_root / "wds_cifar10" / "train" / f"{i}.tar") for i in range(5))
    assert train.classnames == CIFAR10 and train.templates == test.templates


def test_cifar10_first_samples_match_reference(wds_root):
    spec = resolve_dataset("wds/cifar10", data_root=wds_root)
    ours = list(make_dataset(spec, PILToTensor(), limit=25))
    ref = []
    with tarfile.open(spec.shards[0], mode="r|*") as tf:  # only read the first members
        img = None
        for m in tf:
            data = tf.extractfile(m).read()
            if m.name.endswith(".cls"):
                ref.append((img, int(data)))
                if len(ref) == 25:
                    break
            else:
                img = PILToTensor()(Image.open(io.BytesIO(data)).convert("RGB"))
    assert len(ours) == len(ref) == 25
    assert [lab for _, lab in ours] == [lab for _, lab in ref]
    assert all(torch.equal(a, b) and a.shape == (3, 32, 32) for (a, _), (b, _) in zip(ours, ref))


# ---------------------------------------------------------------------------------------------------- errors

def test_missing_shard_is_named_at_resolve(tmp_path, samples):
    base = _build_wds(tmp_path, "tiny", samples, nshards=3, gz=True)
    (base / "test" / "1.tar").unlink()
    with pytest.raises(DataError) as ei:
        resolve_dataset("wds/tiny", data_root=tmp_path)
    assert str(base / "test" / "1.tar") in str(ei.value)


@pytest.mark.parametrize("name,needle", [("wds/absent", "wds_absent"), ("not-a-dataset", "not-a-dataset"),
                                         ("imagefolder:/no/such/folder", "/no/such/folder"),
                                         ("wds/", "wds/"), ("wds/a/b", "wds/a/b")])
def test_unknown_dataset_is_named(tmp_path, samples, name, needle):
    _build_wds(tmp_path, "tiny", samples, nshards=1, gz=True)
    with pytest.raises(DataError, match="unknown dataset|not found|bad dataset name") as ei:
        resolve_dataset(name, data_root=tmp_path)
    assert needle in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_missing_data_root_is_named(tmp_path):
    missing = tmp_path / "no-such-root"
    with pytest.raises(DataError) as ei:
        resolve_dataset("wds/cifar10", data_root=missing)
    assert str(missing) in str(ei.value)


@pytest.mark.parametrize("broken", ["nshards", "classnames"])
def test_bad_metadata_is_named(tmp_path, samples, broken):
    base = _build_wds(tmp_path, "tiny", samples, nshards=1, gz=True)
    if broken == "nshards":
        (base / "test" / "nshards.txt").write_text("three\n")
        path = base / "test" / "nshards.txt"
    else:
        path = base / "classnames.txt"
        path.unlink()
    with pytest.raises(DataError) as ei:
        resolve_dataset("wds/tiny", data_root=tmp_path)
    assert str(path) in str(ei.value)


def _corrupt(kind: str, samples: list[Sample]) -> bytes:
    """Bytes of a broken shard built from `samples`."""
    plain = _tar_bytes(samples)
    if kind == "gzip-truncated":
        good = gzip.compress(plain, mtime=0)
        return good[: len(good) // 2]
    if kind == "plain-truncated":
        return plain[: len(plain) // 2]
    if kind == "garbage":
        return b"junk" + np.random.default_rng(0).bytes(6000)
    if kind == "gzip-of-garbage":
        return gzip.compress(b"junk" + np.random.default_rng(1).bytes(6000), mtime=0)
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        middle = tf.getmembers()[2 * (len(samples) // 2)].offset  # header of the image of the middle sample
    if kind == "plain-bad-header":  # bit rot in one header: checksum fails, end-of-archive blocks intact
        return plain[:middle] + b"\xff" * 100 + plain[middle + 100:]
    if kind == "gzip-tar-cut-at-member":  # complete gzip stream of a tar cut at a member boundary
        return gzip.compress(plain[:middle], mtime=0)
    raise ValueError(kind)


CORRUPT_KINDS = ["gzip-truncated", "plain-truncated", "garbage", "gzip-of-garbage", "plain-bad-header",
                 "gzip-tar-cut-at-member"]


@pytest.mark.parametrize("kind", CORRUPT_KINDS)
def test_corrupt_shard_raises_while_iterating(tmp_path, samples, kind):
    base = _build_wds(tmp_path, "tiny", samples, nshards=1, gz=True)
    shard = _shards(base)[0]
    ref = [_fingerprint(img, lab) for img, lab in _reference(_shards(base))]
    Path(shard).write_bytes(_corrupt(kind, samples))
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)  # resolving does not read shards
    got = []
    with pytest.raises(DataError) as ei:
        for img, lab in make_dataset(spec, PILToTensor()):
            got.append(_fingerprint(img, lab))
    assert shard in str(ei.value) and "\n" not in str(ei.value)
    assert got == ref[: len(got)] and len(got) < len(ref)


@pytest.mark.parametrize("kind", ["gzip-truncated", "garbage"])
@pytest.mark.parametrize("nshards", [1, 3])
def test_corrupt_shard_raises_through_worker_processes(tmp_path, samples, kind, nshards):
    base = _build_wds(tmp_path, "tiny", samples, nshards=nshards, gz=True)
    shard = _shards(base)[nshards // 2]
    Path(shard).write_bytes(_corrupt(kind, samples[:10]))
    spec = resolve_dataset("wds/tiny", data_root=tmp_path)
    with pytest.raises(DataError) as ei:
        _loader_fingerprints(make_loader(spec, PILToTensor(), batch_size=4, num_workers=2))
    reason = one_line(ei.value)
    assert "\n" not in reason and shard in reason and "Traceback" not in reason
    assert "worker" in str(ei.value)  # really re-raised from a worker process


@pytest.mark.parametrize("defect", ["bad-image", "no-cls", "no-image"])
def test_bad_sample_is_named(tmp_path, samples, defect):
    bad = Sample("zbad000001", "png", b"not a png at all", 4)
    base = _build_wds(tmp_path, "tiny", samples[:5] + [bad] + samples[5:8], nshards=1, gz=False)
    shard = _shards(base)[0]
    if defect != "bad-image":  # rewrite the shard with one member of the bad sample left out
        buf = io.BytesIO()
        with tarfile.open(shard) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
            for m in src.getmembers():
                drop = ".cls" if defect == "no-cls" else ".png"
                if m.name != f"{bad.key}{drop}":
                    dst.addfile(m, src.extractfile(m))
        Path(shard).write_bytes(buf.getvalue())
    got = []
    with pytest.raises(DataError) as ei:
        for item in WdsImageDataset([shard], PILToTensor()):
            got.append(item)
    assert bad.key in str(ei.value) and shard in str(ei.value)
    assert len(got) == 5


# ---------------------------------------------------------------------------------------------------- HTTP

def test_http_root_fetches_into_cache_and_matches_local(http_root, tmp_path):
    served, url, handler = http_root
    spec = resolve_dataset("wds/tiny", data_root=url)
    assert spec.classnames == CIFAR10 and spec.templates == TEMPLATES
    assert len(spec.shards) == 3
    for i, shard in enumerate(spec.shards):
        assert Path(shard).is_relative_to(tmp_path / "cache")
        assert Path(shard).read_bytes() == (served / "wds_tiny" / "test" / f"{i}.tar").read_bytes()
    assert sorted(p for p in handler.requests if p.endswith(".tar")) == [f"/wds_tiny/test/{i}.tar" for i in range(3)]
    local = resolve_dataset("wds/tiny", data_root=served)
    ours = list(make_dataset(spec, PILToTensor()))
    ref = _reference(list(local.shards))
    assert len(ours) == len(ref) and all(a[1] == b[1] and torch.equal(a[0], b[0]) for a, b in zip(ours, ref))
    handler.requests.clear()
    assert resolve_dataset("wds/tiny", data_root=url).shards == spec.shards
    assert not [p for p in handler.requests if p.endswith(".tar")]  # second resolve reads the cache


def test_http_missing_dataset_names_url(http_root):
    _, url, _ = http_root
    with pytest.raises(DataError) as ei:
        resolve_dataset("wds/absent", data_root=url)
    assert f"{url}/wds_absent/test/nshards.txt" in str(ei.value)


def test_http_missing_shard_names_url(http_root):
    served, url, _ = http_root
    (served / "wds_tiny" / "test" / "2.tar").unlink()
    with pytest.raises(DataError) as ei:
        resolve_dataset("wds/tiny", data_root=url)
    assert f"{url}/wds_tiny/test/2.tar" in str(ei.value)


def test_http_without_templates_uses_defaults(http_root):
    served, url, _ = http_root
    (served / "wds_tiny" / "zeroshot_classification_templates.txt").unlink()
    assert resolve_dataset("wds/tiny", data_root=url).templates == DEFAULT_TEMPLATES


# ---------------------------------------------------------------------------------------------------- ImageFolder

def _image_folder(root: Path) -> Path:
    """Write `root/{cat,dog_house}/k.png` (3 + 2 random 32x32 PNGs); return root."""
    for c, (cls, n) in enumerate((("cat", 3), ("dog_house", 2))):
        (root / cls).mkdir(parents=True)
        for k in range(n):
            (root / cls / f"{k}.png").write_bytes(_png(10 * c + k, (32, 32)))
    return root


@pytest.mark.parametrize("prefix", ["imagefolder:", ""])
def test_imagefolder_resolve_and_read(tmp_path, prefix):
    folder = _image_folder(tmp_path / "folder")
    spec = resolve_dataset(prefix + str(folder))
    assert (spec.kind, spec.shards) == ("imagefolder", (str(folder),))
    assert spec.classnames == ("cat", "dog house") and spec.templates == DEFAULT_TEMPLATES
    full = make_dataset(spec, PILToTensor())
    assert len(full) == 5
    files = sorted(folder.glob("*/*.png"))
    for i, path in enumerate(files):
        img, lab = full[i]
        assert lab == (0 if path.parent.name == "cat" else 1)
        assert torch.equal(img, PILToTensor()(Image.open(path).convert("RGB")))
    limited = make_dataset(spec, PILToTensor(), limit=3)
    assert len(limited) == 3 and [limited[i][1] for i in range(3)] == [0, 0, 0]
    assert len(make_dataset(spec, PILToTensor(), limit=50)) == 5


def test_imagefolder_split_subfolder_and_names_file(tmp_path):
    _image_folder(tmp_path / "folder" / "test")
    (tmp_path / "folder" / "classnames.txt").write_text("kitty\nbig dog\n")
    (tmp_path / "folder" / "zeroshot_classification_templates.txt").write_text("{c}!\n")
    spec = resolve_dataset(f"imagefolder:{tmp_path / 'folder'}")
    assert spec.shards == (str(tmp_path / "folder" / "test"),)
    assert spec.classnames == ("kitty", "big dog") and spec.templates == ("{c}!",)
    (tmp_path / "folder" / "classnames.txt").write_text("just one\n")
    with pytest.raises(DataError, match="classnames.txt"):
        resolve_dataset(f"imagefolder:{tmp_path / 'folder'}")


def test_empty_imagefolder_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "stray.png").write_bytes(_png(0, (8, 8)))
    with pytest.raises(DataError) as ei:
        resolve_dataset(f"imagefolder:{empty}")
    assert str(empty) in str(ei.value)


def test_imagefolder_without_images_is_data_error(tmp_path):
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    (folder / "dog").mkdir()
    (folder / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as ei:  # refused when the name is resolved, before any model is loaded
        resolve_dataset(f"imagefolder:{folder}")
    assert str(folder) in str(ei.value) and "no image files" in str(ei.value)


def test_shard_members_are_copied_unchanged(cifar_samples, wds_root):
    """Guard on the helper itself: the copied bytes are the CIFAR-10 test shard's first members."""
    with tarfile.open(wds_root / "wds_cifar10" / "test" / "0.tar", mode="r|*") as tf:
        first = next(iter(tf))
        assert first.name == f"{cifar_samples[0].key}.{cifar_samples[0].ext}"
        assert tf.extractfile(first).read() == cifar_samples[0].data
    assert len({s.key for s in cifar_samples}) == N_CIFAR and all(0 <= s.label < 10 for s in cifar_samples)


# ---------------------------------------------------------------------------------------------------- test data root

def test_synthetic_root_holds_what_it_promises(wds_root):
    """The synthetic root (tests/synthdata.py) in the real layout: counts per split and shard, labels, keys, formats,
    gzip shards with fixed tar metadata, the registry's class names and templates."""
    from synthdata import SYNTHETIC

    from qclip.io.registry import get_entry, load_registry

    text = load_registry()["text"]
    for name, ds in SYNTHETIC.items():
        base = wds_root / f"wds_{name}"
        entry = get_entry(name)
        assert (base / "classnames.txt").read_text().splitlines() == text["classnames"][entry["classnames"]]
        keys = []
        for split, sizes in ds.splits.items():
            assert (base / split / "nshards.txt").read_text() == f"{len(sizes)}\n"
            for shard, n in zip(_shards(base, split), sizes):
                with open(shard, "rb") as f:
                    assert f.read(2) == b"\x1f\x8b", shard
                with tarfile.open(shard, mode="r|*") as tf:
                    members = list(tf)
                assert len(members) == 2 * n, shard
                assert all((m.mtime, m.uid, m.gid, m.mode) == (0, 0, 0, 0o644) for m in members)
                assert [m.name.rpartition(".")[2] for m in members] == [ds.fmt, "cls"] * n
                keys += [m.name.partition(".")[0] for m in members[::2]]
            samples = _reference(_shards(base, split))
            labels = [lab for _, lab in samples]
            assert len(samples) == ds.counts()[split]
            assert set(labels) == set(ds.labels or range(len(text["classnames"][entry["classnames"]])))
            assert {tuple(img.shape) for img, _ in samples} == {(3, ds.size, ds.size)}
        assert keys == [f"s{i:09d}" for i in range(len(keys))]  # increasing, test after train
    # Fashion-MNIST-like: grayscale PNG; the shift set has no deer; every shard mixes classes
    with tarfile.open(wds_root / "wds_fashion_mnist" / "test" / "0.tar", mode="r|*") as tf:
        first = next(iter(tf))
        assert Image.open(io.BytesIO(tf.extractfile(first).read())).mode == "L"
    assert 4 not in {lab for _, lab in _reference(_shards(wds_root / "wds_imagenet_cifar10_shift"))}
    first_labels = [lab for _, lab in _reference(_shards(wds_root / "wds_cifar10", "train"))[:20]]
    assert len(set(first_labels)) >= 5


def test_synthetic_root_rebuilds_byte_identically(wds_root, tmp_path):
    from synthdata import build_synthetic_root

    again = build_synthetic_root(tmp_path, ["cifar10", "fashion_mnist"])
    for name in ("cifar10", "fashion_mnist"):
        files = sorted(p.relative_to(wds_root) for p in (wds_root / f"wds_{name}").rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(again) for p in (again / f"wds_{name}").rglob("*") if p.is_file())
        for rel in files:
            assert (again / rel).read_bytes() == (wds_root / rel).read_bytes(), rel


def test_synthetic_images_carry_their_class(wds_root):
    """A nearest-class-mean classifier on mean colour, fitted on the train split, is far above chance on the test
    split: there is a class signal to learn."""
    def colour(split):
        pairs = _reference(_shards(wds_root / "wds_cifar10", split))
        return torch.stack([img.float().mean((1, 2)) for img, _ in pairs]), torch.tensor([lab for _, lab in pairs])

    x, y = colour("train")
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    xt, yt = colour("test")
    accuracy = float((torch.cdist(xt, means).argmin(1) == yt).float().mean())
    assert accuracy > 0.5
