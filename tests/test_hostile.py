"""Hostile input through `qclip.cli.main`: every bad flag, path, dataset or checkpoint ends in exit 2 with one
`qclip: error: ...` line naming the problem, before any work where it can be seen early, and leaves no partial output
or store line. Also: writes honour the umask, a full disk is one line and leaves nothing behind, a checkpoint beside
an `open_clip_config.json` is read alone."""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qclip.cli import main

REPO = Path(__file__).resolve().parents[1]
MICRO = "qclip-micro-vit"
PAYLOAD_MARK = "qclip-hostile-payload-ran"


# ------------------------------------------------------------------------------------------------ hostile files
def _png(width: int, height: int) -> bytes:
    """A 1-bit PNG whose header claims `width` x `height` (only its first row is stored: Pillow checks the size at
    open, before it reads pixels)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((width + 7) // 8)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b""))


def _small_png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _shard(members: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _dataset(root: Path, name: str, *, labels=(0, 1, 2), classnames="cat\ndog\nbird\n", nshards="1\n",
             images: dict[int, bytes] | None = None, shards: int = 1) -> None:
    """`root/wds_NAME` with a test split of `shards` shards of the given labels (raw `.cls` texts allowed)."""
    base = root / f"wds_{name}"
    (base / "test").mkdir(parents=True)
    (base / "classnames.txt").write_text(classnames)
    (base / "test" / "nshards.txt").write_text(nshards)
    members = []
    for i, label in enumerate(labels):
        image = (images or {}).get(i) or _small_png(i)
        members += [(f"s{i:09d}.png", image), (f"s{i:09d}.cls", str(label).encode())]
    for s in range(shards):
        (base / "test" / f"{s}.tar").write_bytes(_shard(members))


@pytest.fixture(scope="session")
def hostile_root(tmp_path_factory) -> Path:
    """A data root of broken datasets (each named for what is wrong with it)."""
    root = tmp_path_factory.mktemp("hostile-data")
    _dataset(root, "label_out_of_range", labels=(0, 1, 7))
    _dataset(root, "label_negative", labels=(0, -1, 2))
    _dataset(root, "label_not_int", labels=(0, "dog", 2))
    _dataset(root, "class_count", labels=(0, 1, 2, 3), classnames="cat\ndog\n")
    _dataset(root, "no_classes", classnames="\n  \n")
    _dataset(root, "zero_shards", nshards="0\n")
    _dataset(root, "negative_shards", nshards="-2\n")
    _dataset(root, "nan_shards", nshards="many\n")
    _dataset(root, "missing_shard", nshards="2\n")
    _dataset(root, "bomb", images={1: _png(20_000, 20_000)})  # 4e8 pixels: Pillow's DecompressionBombError
    _dataset(root, "bomb_warning", images={1: _png(10_000, 10_000)})  # 1e8 pixels: Pillow only warns
    _dataset(root, "not_an_image", images={0: b"GIF89a but not really"})
    return root


def _state_dict(micro_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(micro_dir / "open_clip_model.safetensors"))


class _Payload:
    """A pickle that would create a marker file if it were ever unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class Ctx:
    """What a case builds its argv from: a work folder (snapshotted for leftovers), the data roots, the micro model."""

    def __init__(self, work: Path, wds_root: Path, hostile_root: Path, micro_dir: Path):
        self.work, self.wds_root, self.hostile_root, self.micro_dir = work, wds_root, hostile_root, micro_dir
        self.marker = work.parent / PAYLOAD_MARK
        self._immutable: list[Path] = []

    @property
    def micro(self) -> str:
        return f"local-dir:{self.micro_dir}"

    def path(self, rel: str) -> str:
        return str(self.work / rel)

    def file(self, rel: str, data: bytes | str = b"x") -> str:
        """A file in the work folder (for paths that must not be files, or a parent that is one)."""
        p = self.work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(p)

    def folder(self, rel: str) -> str:
        p = self.work / rel
        p.mkdir(parents=True, exist_ok=True)
        return str(p)

    def readonly(self, rel: str = "ro") -> str:
        """A folder nobody can write in (mode 0555; for root, which ignores modes, also `chattr +i`)."""
        p = self.work / rel
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(0o555)
        if _writable(p):
            done = subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode == 0
            if done:
                self._immutable.append(p)
            if not done or _writable(p):
                pytest.skip("cannot make a read-only folder here (root without chattr)")
        return str(p)

    def eval_ckpt(self, name: str, sd: dict, *, safetensors: bool = False) -> str:
        path = self.work / "ckpt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if safetensors:
            from safetensors.torch import save_file

            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        return str(path)

    def eval(self, *extra: str, model: str | None = None, dataset: str = "wds/cifar10", root: str | None = None,
             out: str | None = None) -> list[str]:
        """`qclip eval` of the micro model on 16 images, no bootstrap, no workers; `extra` overrides."""
        return ["eval", "--model", model or self.micro, "--dataset", dataset, "--data-root",
                root or str(self.wds_root), "--out", out or self.path("out/x.json"), "--limit", "16", "--bootstrap",
                "0", "--workers", "0", "--no-progress", "--no-cache", "--batch-size", "8", *extra]

    def hostile(self, name: str, *extra: str) -> list[str]:
        return self.eval(*extra, dataset=f"wds/{name}", root=str(self.hostile_root))

    def grid(self, text: str | None = None) -> str:
        text = text if text is not None else (
            f"name: tiny\nmodels: [{{name: 'local-dir:{self.micro_dir}'}}]\nbits: [w8a8]\ndataset: wds/cifar10\n"
            f"limit: 16\nood_limit: 16\nbootstrap: 0\nbatch_size: 8\n")
        return self.file("grid.yaml", text)

    def ablate(self, *extra: str, config: str | None = None, out: str | None = None) -> list[str]:
        return ["ablate", "--config", config or self.grid(), "--out", out or self.path("ablate"), "--data-root",
                str(self.wds_root), "--workers", "0", "--no-progress", *extra]

    def spectrum(self, *extra: str, out: str | None = None) -> list[str]:
        return ["spectrum", "--model", self.micro, "--out", out or self.path("spectrum"), "--data-root",
                str(self.wds_root), "--no-progress", *extra]

    def fit(self, *extra: str) -> list[str]:
        return ["fit", "--config", str(REPO / "configs" / "qat_demo.yaml"), "--model.model", self.micro,
                "--data.train_limit", "32", "--data.batch_size", "16", "--data.val_limit", "16",
                "--data.calib_pairs", "16", "--data.num_workers", "0", "--trainer.default_root_dir",
                self.path("fit"), "--trainer.enable_progress_bar", "false", *extra]

    def snapshot(self) -> dict[str, bytes]:
        """Every file (and folder) under the work folder with its content."""
        out = {}
        for p in sorted(self.work.rglob("*")):
            rel = str(p.relative_to(self.work))
            out[rel] = p.read_bytes() if p.is_file() else b"<dir>"
        return out

    def close(self) -> None:
        for p in self._immutable:
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
        for p in self.work.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture()
def ctx(tmp_path, wds_root, hostile_root, micro_dir, monkeypatch):
    monkeypatch.setenv("QCLIP_DATA_ROOT", str(wds_root))
    monkeypatch.setenv("WANDB_MODE", "offline")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    c = Ctx(work, wds_root, hostile_root, micro_dir)
    yield c
    c.close()


def _sd_with(micro_dir: Path, key: str, value: float) -> dict[str, torch.Tensor]:
    sd = _state_dict(micro_dir)
    sd[key] = sd[key].clone()
    flat = sd[key].view(-1)
    flat[min(3, flat.numel() - 1)] = value
    return sd


def _payload(c: Ctx) -> str:
    path = c.work / "ckpt" / "payload.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"x": _Payload(c.marker)}}, path)
    return str(path)


def _truncated(c: Ctx) -> str:
    buf = io.BytesIO()
    torch.save(_state_dict(c.micro_dir), buf)
    return c.file("ckpt/truncated.pt", buf.getvalue()[:4096])


def _beside_config(c: Ctx, sd: dict) -> str:
    """A copy of the micro folder whose own weight file is garbage, with the checkpoint `x.pt` beside it."""
    folder = c.work / "beside"
    shutil.copytree(c.micro_dir, folder)
    (folder / "open_clip_model.safetensors").write_bytes(b"not safetensors at all")
    torch.save(sd, folder / "x.pt")
    return str(folder / "x.pt")


def _nan_dir(c: Ctx) -> str:
    """A copy of the micro folder with a NaN in one weight of its safetensors."""
    from safetensors.torch import save_file

    folder = c.work / "nan-dir"
    shutil.copytree(c.micro_dir, folder)
    save_file(_sd_with(c.micro_dir, _TENSOR, float("nan")), str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


_TENSOR = "visual.transformer.resblocks.0.mlp.c_fc.weight"


CASES = [
    # ---- eval: flags
    pytest.param(lambda c: c.eval("--quant", "w9z"), "bad --quant 'w9z'", id="eval-bad-quant"),
    pytest.param(lambda c: c.eval("--limit", "0"), "argument --limit: must be a positive integer, got 0",
                 id="eval-limit-0"),
    pytest.param(lambda c: c.eval("--workers", "-1"), "argument --workers: must be an integer >= 0, got -1",
                 id="eval-workers-negative"),
    pytest.param(lambda c: c.eval("--workers", "two"), "argument --workers: expected an integer, got 'two'",
                 id="eval-workers-not-int"),
    pytest.param(lambda c: c.eval("--bootstrap", "-3"), "argument --bootstrap: must be an integer >= 0, got -3",
                 id="eval-bootstrap-negative"),
    pytest.param(lambda c: c.eval("--seed", "-1"), "argument --seed: must be an integer >= 0", id="eval-seed-negative"),
    pytest.param(lambda c: c.eval("--batch-size", "0"), "argument --batch-size: must be a positive integer",
                 id="eval-batch-size-0"),
    pytest.param(lambda c: c.eval("--corruptions", ","), "bad --corruptions ',': it names no corruption",
                 id="eval-corruptions-empty"),
    pytest.param(lambda c: c.eval("--corruptions", "fog_of_war:3"), "bad --corruptions", id="eval-corruption-unknown"),
    pytest.param(lambda c: c.eval("--corruptions", "gaussian_noise:9"), "bad --corruptions",
                 id="eval-corruption-severity"),
    pytest.param(lambda c: c.eval("--spurious", "wds/pacs_photo"), "--spurious needs two datasets",
                 id="eval-spurious-one"),
    pytest.param(lambda c: c.eval("--precision", "fp8"), "argument --precision: invalid choice: 'fp8'",
                 id="eval-precision"),
    pytest.param(lambda c: c.eval("--calib-batches", "-2"), "argument --calib-batches: must be a positive integer",
                 id="eval-calib-batches"),
    pytest.param(lambda c: ["eval", "--model", c.micro, "--dataset", "wds/cifar10"],
                 "the following arguments are required: --out", id="eval-missing-out"),
    # ---- eval: names
    pytest.param(lambda c: c.eval(dataset="cifar10"), "unknown dataset 'cifar10'", id="eval-unknown-dataset"),
    pytest.param(lambda c: c.eval(dataset="wds/no_such_set"), "dataset 'wds/no_such_set' not found",
                 id="eval-dataset-not-found"),
    pytest.param(lambda c: c.eval(model="ViT-Nope"), "unknown model 'ViT-Nope'", id="eval-unknown-model"),
    pytest.param(lambda c: c.eval(model=f"local-dir:{c.folder('empty')}"), "has no open_clip_config.json",
                 id="eval-local-dir-without-config"),
    # ---- eval: output paths, refused before the model or data is read (the model does not even exist)
    pytest.param(lambda c: c.eval(model="ViT-Nope", out=c.readonly() + "/x.json"), "cannot write in ",
                 id="eval-out-readonly"),
    pytest.param(lambda c: c.eval(model="ViT-Nope", out=c.folder("out-dir")), "is a folder, expected a file",
                 id="eval-out-is-dir"),
    pytest.param(lambda c: c.eval(model="ViT-Nope", out=c.file("parent") + "/x.json"), "is a file, not a folder",
                 id="eval-out-parent-is-file"),
    pytest.param(lambda c: c.eval("--store", c.folder("store-dir"), model="ViT-Nope"),
                 "store-dir is a folder, expected a file", id="eval-store-is-dir"),
    pytest.param(lambda c: c.eval("--store", c.file("sparent") + "/s.jsonl", model="ViT-Nope"),
                 "is a file, not a folder", id="eval-store-parent-is-file"),
    pytest.param(lambda c: c.eval("--store", c.path("out/x.json")), "are the same file", id="eval-store-is-out"),
    # ---- eval: broken data, named by file and member
    pytest.param(lambda c: c.hostile("label_out_of_range"),
                 "label 7 of member s000000002.cls in ", id="data-label-out-of-range"),
    pytest.param(lambda c: c.hostile("label_negative"), "bad label in member s000000001.cls of ",
                 id="data-label-negative"),
    pytest.param(lambda c: c.hostile("label_not_int"), "bad label in member s000000001.cls of ",
                 id="data-label-not-int"),
    pytest.param(lambda c: c.hostile("class_count"), "is outside the 2 classes", id="data-class-count-mismatch"),
    pytest.param(lambda c: c.hostile("no_classes"), "classnames.txt: it lists no class names",
                 id="data-empty-classnames"),
    pytest.param(lambda c: c.hostile("zero_shards"), "nshards.txt: the shard count must be >= 1, got 0",
                 id="data-nshards-0"),
    pytest.param(lambda c: c.hostile("negative_shards"), "the shard count must be >= 1, got -2",
                 id="data-nshards-negative"),
    pytest.param(lambda c: c.hostile("nan_shards"), "nshards.txt: 'many\\n' is not a shard count",
                 id="data-nshards-not-int"),
    pytest.param(lambda c: c.hostile("missing_shard"), "missing shard", id="data-missing-shard"),
    pytest.param(lambda c: c.hostile("bomb"), "image member s000000001.png in ", id="data-decompression-bomb"),
    pytest.param(lambda c: c.hostile("bomb_warning"), "is a decompression bomb", id="data-decompression-bomb-warning"),
    pytest.param(lambda c: c.hostile("not_an_image"), "cannot decode image member s000000000.png in ",
                 id="data-not-an-image"),
    # ---- eval: broken checkpoints
    pytest.param(lambda c: c.eval(model=MICRO, out=None) + ["--pretrained", c.eval_ckpt(
        "nan.pt", _sd_with(c.micro_dir, _TENSOR, float("nan")))], f"tensor {_TENSOR} holds 1 non-finite",
        id="ckpt-nan"),
    pytest.param(lambda c: c.eval(model=c.eval_ckpt("inf.safetensors", _sd_with(c.micro_dir, "logit_scale",
                                                                                  float("inf")), safetensors=True)),
                 "cannot tell the architecture", id="ckpt-without-architecture"),
    pytest.param(lambda c: c.eval(model=MICRO) + ["--pretrained", c.eval_ckpt(
        "inf.safetensors", _sd_with(c.micro_dir, _TENSOR, float("-inf")), safetensors=True)],
        f"tensor {_TENSOR} holds 1 non-finite", id="ckpt-inf-safetensors"),
    pytest.param(lambda c: c.eval(model=_beside_config(c, _sd_with(c.micro_dir, _TENSOR, float("nan")))),
                 f"x.pt: tensor {_TENSOR}", id="ckpt-beside-config-own-error"),
    pytest.param(lambda c: c.eval(model=_nan_dir(c)), f"tensor {_TENSOR} holds 1 non-finite", id="ckpt-nan-local-dir"),
    pytest.param(lambda c: c.eval(model=MICRO) + ["--pretrained", _payload(c)], "Weights only load failed",
                 id="ckpt-pickle-payload"),
    pytest.param(lambda c: c.eval(model=MICRO) + ["--pretrained", _truncated(c)], "cannot read checkpoint",
                 id="ckpt-truncated"),
    pytest.param(lambda c: c.eval(model=MICRO) + ["--pretrained", c.folder("ckpt-dir.pt")],
                 "ckpt-dir.pt is a folder, not a checkpoint file", id="ckpt-is-dir"),
    # ---- ablate
    pytest.param(lambda c: c.ablate("--shard", "3/2"), "bad --shard '3/2'", id="ablate-shard-out-of-range"),
    pytest.param(lambda c: c.ablate("--shard", "one"), "bad --shard 'one'", id="ablate-shard-not-int"),
    pytest.param(lambda c: c.ablate(config=c.path("missing.yaml")), "does not exist", id="ablate-missing-config"),
    pytest.param(lambda c: c.ablate(config=c.file("evil.yaml", "name: !!python/object/apply:os.system ['true']\n")),
                 "is not valid YAML", id="ablate-yaml-python-tag"),
    pytest.param(lambda c: c.ablate(config=c.file("bad-ds.yaml", f"models: [{{name: 'local-dir:{c.micro_dir}'}}]\n"
                                                  "bits: [w8a8]\ndataset: wds/no_such_set\nlimit: 16\n")),
                 "dataset 'wds/no_such_set' not found", id="ablate-unknown-dataset"),
    pytest.param(lambda c: c.ablate("--limit", "0"), "argument --limit: must be a positive integer",
                 id="ablate-limit-0"),
    pytest.param(lambda c: c.ablate("--workers", "-1"), "argument --workers: must be an integer >= 0",
                 id="ablate-workers-negative"),
    pytest.param(lambda c: c.ablate("--image-cache-mb", "-5"), "argument --image-cache-mb: must be a finite number",
                 id="ablate-image-cache-negative"),
    pytest.param(lambda c: c.ablate(out=c.readonly() + "/run"), "cannot write in ", id="ablate-out-readonly"),
    pytest.param(lambda c: c.ablate(out=c.file("ablate-file")), "is a file, expected a folder", id="ablate-out-is-file"),
    pytest.param(lambda c: c.ablate("--merge", out=str(Path(c.file("merged/results.jsonl", "keep\n")).parent)),
                 "nothing to merge", id="ablate-merge-nothing-stored"),  # and results.jsonl is left as it was
    # ---- spectrum
    pytest.param(lambda c: c.spectrum("--quant", "w9z"), "bad --quant 'w9z'", id="spectrum-bad-quant"),
    pytest.param(lambda c: c.spectrum("--truncate", "w4a8"), "truncate must be a rank-truncation spec",
                 id="spectrum-truncate-not-rank"),
    pytest.param(lambda c: c.spectrum("--frequency-images", "-5"),
                 "argument --frequency-images: must be an integer >= 0, got -5", id="spectrum-frequency-negative"),
    pytest.param(lambda c: c.spectrum("--limit", "0"), "argument --limit: must be a positive integer",
                 id="spectrum-limit-0"),
    pytest.param(lambda c: c.spectrum("--bands", "8-0"), "band", id="spectrum-bad-bands"),
    pytest.param(lambda c: c.spectrum("--svd", "qr"), "argument --svd: invalid choice: 'qr'", id="spectrum-bad-svd"),
    pytest.param(lambda c: c.spectrum("--workers", "-1"), "argument --workers", id="spectrum-workers-negative"),
    pytest.param(lambda c: c.spectrum(out=c.readonly() + "/spec"), "cannot write in ", id="spectrum-out-readonly"),
    pytest.param(lambda c: c.spectrum(out=c.file("spec-file")), "is a file, expected a folder",
                 id="spectrum-out-is-file"),
    pytest.param(lambda c: c.spectrum(out=c.file("spec-parent") + "/spec"), "is a file, not a folder",
                 id="spectrum-out-parent-is-file"),
    pytest.param(lambda c: c.spectrum("--features", "wds/no_such_set"), "dataset 'wds/no_such_set' not found",
                 id="spectrum-unknown-dataset"),
    # ---- data
    pytest.param(lambda c: ["data", "fetch", "nosuchset"], "unknown dataset 'nosuchset'", id="data-fetch-unknown"),
    pytest.param(lambda c: ["data", "verify", "--data-root", "/nonexistent/qclip"], "--data-root /nonexistent/qclip "
                 "is not a folder", id="data-verify-no-root"),
    pytest.param(lambda c: ["data", "verify", "nosuchset", "--data-root", str(c.wds_root)],
                 "unknown dataset 'nosuchset'", id="data-verify-unknown"),
    pytest.param(lambda c: ["data", "fetch", "cifar10", "--no-progress", "--data-root", c.readonly()],
                 "cannot write in ", id="data-fetch-root-readonly"),
    pytest.param(lambda c: ["data", "fetch", "cifar10", "--no-progress", "--data-root", c.file("root-file")],
                 "is a file, expected a folder", id="data-fetch-root-is-file"),
    pytest.param(lambda c: ["data", "build"], "argument ACTION: invalid choice: 'build'", id="data-bad-action"),
    # ---- fit (only cases that fail before training starts)
    pytest.param(lambda c: c.fit("--model.quant", "w9z"), "bad model.quant 'w9z'", id="fit-bad-quant"),
    pytest.param(lambda c: c.fit("--data.batch_size", "0"), "batch_size must be >= 1", id="fit-batch-size-0"),
    pytest.param(lambda c: ["fit", "--config", c.path("missing.yaml")], "missing.yaml", id="fit-missing-config"),
    pytest.param(lambda c: ["fit", "--config", c.file("evil.yaml", "model:\n  model: !!python/object/apply:os.system "
                                                   "['true']\n")], "python/object", id="fit-yaml-python-tag"),
    pytest.param(lambda c: c.fit("--ckpt_path", c.path("no-such.ckpt")), "no-such.ckpt", id="fit-ckpt-missing"),
    pytest.param(lambda c: c.fit("--ckpt_path", c.folder("ckpt-dir")), "ckpt-dir", id="fit-ckpt-is-dir"),
    pytest.param(lambda c: c.fit("--ckpt_path", _payload(c)), "payload.pt", id="fit-ckpt-pickle-payload"),
    pytest.param(lambda c: c.fit("--data.dataset", "wds/no_such_set"), "dataset 'wds/no_such_set' not found",
                 id="fit-unknown-dataset"),
    pytest.param(lambda c: c.fit("--trainer.accelerator", "gpu"), "gpu", id="fit-accelerator-gpu-on-cpu",
                 marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")]),
]


# ------------------------------------------------------------------------------------ hostile classes (by cause)
_EXPORTS: dict[str, Path] = {}


def _export(c: Ctx, quant: str = "w8a8") -> Path:
    """A copy (in the work folder) of a w8a8 export of the micro model, built once per session."""
    import tempfile

    if quant not in _EXPORTS:
        src = Path(tempfile.mkdtemp(prefix="qclip-hostile-export-")) / quant
        assert main(["export", "--model", c.micro, "--quant", quant, "--dataset", "wds/cifar10", "--calib-batches",
                     "1", "--data-root", str(c.wds_root), "--no-progress", "--out", str(src)]) == 0
        _EXPORTS[quant] = src
    dst = c.work / "export"
    shutil.copytree(_EXPORTS[quant], dst)
    return dst


def _manifest(folder: Path) -> dict:
    import json

    return json.loads((folder / "export.json").read_text())


def _write_manifest(folder: Path, manifest: dict, *, redigest: bool = True) -> None:
    """Write `manifest`; with `redigest`, its file digests are recomputed (a tamperer who also fixed the digests)."""
    import hashlib
    import json

    if redigest:
        manifest["files"] = {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest() for rel in manifest["files"]
                             if (folder / rel).is_file()}
    (folder / "export.json").write_text(json.dumps(manifest))


def _tamper(edit_tensors=None, edit_manifest=None, *, redigest: bool = True):
    """A case builder: a w8a8 export whose int.safetensors / export.json were edited, evaluated with `qclip eval`."""
    from safetensors.torch import load_file, save_file

    def build(c: Ctx) -> list[str]:
        folder = _export(c)
        manifest = _manifest(folder)
        if edit_tensors is not None:
            tensors = load_file(str(folder / "int.safetensors"))
            edit_tensors(tensors, manifest)
            save_file(tensors, str(folder / "int.safetensors"))
        if edit_manifest is not None:
            edit_manifest(manifest)
        _write_manifest(folder, manifest, redigest=redigest)
        return c.eval(model=str(folder))

    return build


def _first_map(manifest: dict) -> str:
    return manifest["maps"][0]["name"]


def _set_scale(value: float):
    def edit(tensors, manifest):
        key = f"{_first_map(manifest)}.weight_scale"
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
    return edit


def _drop_map_tensors(tensors, manifest):
    name = manifest["maps"].pop(0)["name"]
    for key in [k for k in tensors if k.startswith(name + ".")]:
        del tensors[key]
    manifest["summary"]["maps"] -= 1
    manifest["summary"]["integer_arithmetic"] -= 1


def _change_float_weights(c: Ctx) -> list[str]:
    folder = _export(c)
    weights = folder / "float" / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    return c.eval(model=str(folder))


def _bench(folder: str) -> list[str]:
    return ["bench", "--model", folder, "--batch", "1", "--repeats", "1", "--warmup", "0", "--min-time", "0",
            "--no-progress"]


EXPORT_CASES = [
    pytest.param(_tamper(edit_manifest=lambda m: m["maps"].pop(0), redigest=False),
                 "which the manifest does not list", id="export-entry-removed"),
    pytest.param(_tamper(_drop_map_tensors), "does not list it", id="export-entry-and-tensors-removed"),
    pytest.param(_tamper(_set_scale(0.0)), "weight scale is not a finite positive number", id="export-scale-zero"),
    pytest.param(_tamper(_set_scale(float("nan"))), "weight scale is not a finite positive number",
                 id="export-scale-nan"),
    pytest.param(_tamper(_set_scale(float("nan")), redigest=False), "int.safetensors does not match its sha256",
                 id="export-scale-nan-digest"),
    pytest.param(_tamper(edit_manifest=lambda m: m["maps"][0].update(w_bits=4)), "weight codes outside [-8, 7]",
                 id="export-codes-out-of-range"),
    pytest.param(_tamper(edit_manifest=lambda m: m["maps"][0].update(w_bits="8")), "w_bits is '8', expected int",
                 id="export-entry-wrong-type"),
    pytest.param(_tamper(edit_manifest=lambda m: m["maps"].append(dict(m["maps"][0]))), "listed twice",
                 id="export-entry-duplicated"),
    pytest.param(_tamper(edit_manifest=lambda m: m.pop("files"), redigest=False), "'files' must map each file",
                 id="export-no-digests"),
    pytest.param(_tamper(edit_manifest=lambda m: m["files"].pop("int.safetensors"), redigest=False),
                 "lists no sha256 for int.safetensors", id="export-digest-missing"),
    pytest.param(_tamper(edit_manifest=lambda m: m.update(format="qclip-export/1"), redigest=False),
                 "is not a qclip-export/2 manifest", id="export-old-format"),
    pytest.param(_tamper(edit_manifest=lambda m: m["files"].update({"../../x": "0" * 64}), redigest=False),
                 "outside the folder", id="export-digest-path-escapes"),
    pytest.param(_tamper(edit_manifest=lambda m: m["maps"][0].update(integer_arithmetic=False)),
                 "contradicts kernel 'onednn'", id="export-entry-contradicts-itself"),
    pytest.param(_change_float_weights, "float/open_clip_model.safetensors does not match its sha256",
                 id="export-float-weights-changed"),
    pytest.param(lambda c: _bench(str(_tamper(_set_scale(0.0))(c)[2])), "weight scale is not a finite positive",
                 id="bench-export-scale-zero"),
    pytest.param(lambda c: _bench(str(_tamper(edit_manifest=lambda m: m["maps"].pop(0), redigest=False)(c)[2])),
                 "which the manifest does not list", id="bench-export-entry-removed"),
    pytest.param(lambda c: ["export", "--model", c.micro, "--out", str(Path(c.file("mine/notes.txt")).parent)],
                 "holds files but is not an export folder", id="export-out-not-an-export-folder"),
]


def _image_folder(c: Ctx, hazard: str) -> str:
    """An ImageFolder tree of two classes with one hazard in class `b`."""
    root = c.work / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / "0.png").write_bytes(_small_png(0))
    bad = root / "b"
    if hazard == "dangling":
        (bad / "gone.png").symlink_to(root / "no-such.png")
    elif hazard == "undecodable":
        (bad / "1.png").write_bytes(b"\x89PNG but not really")
    elif hazard == "bomb":
        (bad / "1.png").write_bytes(_png(20_000, 20_000))
    elif hazard == "loop":
        (bad / "again").symlink_to(root)
    elif hazard == "fifo":
        os.mkfifo(bad / "1.png")
    return f"imagefolder:{root}"


_IMAGE_HAZARDS = {"dangling": "is a dangling link", "undecodable": "cannot decode image file ",
                  "bomb": "is a decompression bomb", "loop": "(a directory loop)", "fifo": "is not a regular file"}


def _image_commands():
    for hazard, message in _IMAGE_HAZARDS.items():
        yield pytest.param(lambda c, h=hazard: c.eval(dataset=_image_folder(c, h)), message, id=f"imagefolder-eval-{hazard}")
        yield pytest.param(lambda c, h=hazard: c.spectrum("--features", _image_folder(c, h), "--limit", "4",
                                                          "--frequency-images", "0"),
                           message, id=f"imagefolder-spectrum-{hazard}")
        yield pytest.param(lambda c, h=hazard: ["export", "--model", c.micro, "--quant", "w8a8", "--calib-batches", "1",
                                                "--dataset", _image_folder(c, h), "--no-progress", "--out",
                                                c.path("exp")], message, id=f"imagefolder-export-{hazard}")
    for hazard in ("loop", "dangling"):
        yield pytest.param(lambda c, h=hazard: c.ablate("--dry-run", config=c.grid(
            f"models: [{{name: '{c.micro}'}}]\nbits: [w8a8]\ndataset: '{_image_folder(c, h)}'\nlimit: 16\n")),
            _IMAGE_HAZARDS[hazard], id=f"imagefolder-dry-run-{hazard}")


_BIG = str(2**32)


def _grid_text(c: Ctx, **keys: str) -> str:
    """A valid tiny grid with some keys replaced by raw YAML text."""
    base = {"name": "tiny", "models": f"[{{name: '{c.micro}'}}]", "bits": "[w8a8]", "dataset": "wds/cifar10",
            "limit": "16"}
    base.update(keys)
    return "".join(f"{k}: {v}\n" for k, v in base.items())


def _alias_bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, "
                     f"*{prev}]")
    return "\n".join(lines) + "\nmethods: *i\n"


GRID_AND_NUMBER_CASES = [
    # ---- seeds beyond what every seed path accepts (2**32 - 1: Lightning/numpy)
    pytest.param(lambda c: c.eval("--seed", _BIG), "argument --seed: must be <= 4294967295", id="seed-eval-flag"),
    pytest.param(lambda c: ["pretrain-demo", "--seed", _BIG, "--out", c.path("demo")],
                 "argument --seed: must be <= 4294967295", id="seed-pretrain-flag"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, seeds=f"[0, {_BIG}]"))),
                 "an entry of seeds must be <= 4294967295", id="seed-grid"),
    pytest.param(lambda c: c.eval("--quant", f"mp4a8-rand{_BIG}"), "seed must be an integer in 0..4294967295",
                 id="seed-rand-spec"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, extra_specs=f"[mp4a8-rand{_BIG}]"))),
                 "seed must be an integer in 0..4294967295", id="seed-rand-spec-grid"),
    # ---- counts past torch's C int arguments (2**31 - 1)
    pytest.param(lambda c: ["bench", "--model", c.micro, "--threads", str(2**31)],
                 "argument --threads: must be <= 2147483647", id="int-bench-threads"),
    pytest.param(lambda c: c.eval("--limit", str(10**20)), "argument --limit: must be <= 2147483647", id="int-eval-limit"),
    pytest.param(lambda c: c.spectrum("--frequency-images", str(2**40)), "argument --frequency-images: must be <=",
                 id="int-spectrum-frequency-images"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, bootstrap=str(10**20)))),
                 "bootstrap must be <= 2147483647", id="int-grid-bootstrap"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, batch_size=str(2**31)))),
                 "batch_size must be <= 2147483647", id="int-grid-batch-size"),
    # ---- grid files
    pytest.param(lambda c: c.ablate(config=c.file("latin1.yaml", _grid_text(c, name="caf\xe9").encode("latin-1"))),
                 "is not UTF-8 text", id="grid-not-utf8"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, models="[{name: 5}]"))),
                 "a model's name must be a non-empty string, got 5", id="grid-model-name-not-str"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, models=f"[{{name: '{c.micro}', pretrained: [1]}}]"))),
                 "must be a non-empty string or null, got [1]", id="grid-model-pretrained-list"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, models="[[demo]]"))), "each model is {name:",
                 id="grid-model-not-mapping"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, qat="[{name: [1], spec: w4a8-lsq, checkpoint: x}]"))),
                 "the name of a qat entry must be a non-empty string", id="grid-qat-name-list"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c) + "limit: 32\n")), "duplicate key 'limit'",
                 id="grid-duplicate-key"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c) + _alias_bomb())), "aliases", id="grid-alias-bomb"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, seeds="[" + ", ".join(map(str, range(1001))) + "]"))),
                 "seeds has 1001 entries: a grid list holds at most 1000", id="grid-long-list"),
    pytest.param(lambda c: c.ablate(config=c.file("big.yaml", _grid_text(c) + "#" * 2**20)),
                 "a grid is at most 1048576 bytes", id="grid-file-too-big"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, bits="[" + "w9z" * 5000 + "]"))), "grid:",
                 id="grid-huge-value-echo"),
    # ---- spec constraints known once the model is loaded, refused before any work
    pytest.param(lambda c: c.eval("--quant", "w4-g5"), "does not divide the fan-in", id="spec-group-eval"),
    pytest.param(lambda c: c.spectrum("--quant", "w4-g5", "--frequency-images", "0"), "does not divide the fan-in",
                 id="spec-group-spectrum"),
    pytest.param(lambda c: ["export", "--model", c.micro, "--quant", "w4-g5", "--no-progress", "--out", c.path("e")],
                 "does not divide the fan-in", id="spec-group-export"),
    pytest.param(lambda c: c.ablate(config=c.grid(_grid_text(c, extra_specs="[w4-g5]"))), "does not divide the fan-in",
                 id="spec-group-grid"),
]

CASES += [*EXPORT_CASES, *_image_commands(), *GRID_AND_NUMBER_CASES]

@pytest.mark.parametrize("build, message", CASES)
def test_hostile_input_is_one_line_exit_2_and_leaves_nothing(build, message, ctx, capsys):
    argv = build(ctx)
    capsys.readouterr()
    before = ctx.snapshot()
    rc = main(argv)
    err = capsys.readouterr().err
    assert not ctx.marker.exists(), "a pickle payload was executed"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("qclip: error: "), err
    assert sum(ln.startswith("qclip: error:") for ln in lines) == 1, err
    assert message in lines[-1], err
    assert len(lines[-1]) <= 1100, f"an error line of {len(lines[-1])} characters"  # echoed values are capped
    assert "weights_only" not in err  # no advice to load unsafely
    assert ctx.snapshot() == before  # no partial output, store line or stray folder


# ------------------------------------------------------------------------------------------------ positive checks
def test_fit_never_unpickles_a_hostile_checkpoint(ctx, capsys):
    rc = main(ctx.fit("--ckpt_path", _payload(ctx)))
    assert not ctx.marker.exists()
    assert rc != 0
    capsys.readouterr()


def test_checkpoint_beside_config_is_read_alone(ctx):
    from qclip.io.models import load_model

    sd = _state_dict(ctx.micro_dir)
    sd[_TENSOR] = sd[_TENSOR] * 2
    path = _beside_config(ctx, sd)  # the folder's own open_clip_model.safetensors is garbage
    loaded = load_model(path).model.state_dict()
    assert torch.equal(loaded[_TENSOR], sd[_TENSOR])


def test_load_error_strips_the_advice_to_load_unsafely(ctx):
    from qclip.io.errors import ModelLoadError
    from qclip.io.models import read_state_dict

    with pytest.raises(ModelLoadError) as info:
        read_state_dict(_payload(ctx))
    assert "weights_only" not in str(info.value) and "trusted source" not in str(info.value)
    assert "unsupported GLOBAL" in str(info.value) or "Unsupported global" in str(info.value)
    assert not ctx.marker.exists()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    from qclip.quant.export import save_int

    from qclip.io.paths import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_int(torch.nn.Linear(2, 2), tmp_path / "int.pt")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == mode
    assert _mode(tmp_path / "int.pt") == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "int.pt"]  # no temp file left


def test_spectrum_outputs_are_atomic_and_honour_the_umask(ctx, capsys):
    old = os.umask(0o027)
    try:
        rc = main(ctx.spectrum("--frequency-images", "0"))
    finally:
        os.umask(old)
    assert rc == 0, capsys.readouterr().err
    out = ctx.work / "spectrum"
    names = sorted(p.name for p in out.iterdir())
    assert "summary.json" in names and "weights_layers.csv" in names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    assert {_mode(p) for p in out.iterdir() if p.is_file()} == {0o640}


def _fail_fsync_under(monkeypatch, folder: Path) -> None:
    """Make fsync of any file under `folder` fail as on a full disk (ENOSPC)."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_while_writing_out_is_one_line_and_leaves_nothing(ctx, monkeypatch, capsys):
    out = ctx.work / "out"
    out.mkdir()
    _fail_fsync_under(monkeypatch, out)
    assert main(ctx.eval()) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"qclip: error: cannot write {out / 'x.json'}: disk full", lines
    assert list(out.iterdir()) == []


def test_full_disk_while_appending_to_the_store_leaves_no_partial_line(tmp_path, monkeypatch):
    from qclip.io.errors import QclipInputError
    from qclip.io.store import ResultsStore

    store = ResultsStore(tmp_path / "s" / "results.jsonl")
    store.append({"hash": "a", "x": 1})
    before = store.path.read_bytes()
    _fail_fsync_under(monkeypatch, tmp_path / "s")
    with pytest.raises(QclipInputError, match="disk full"):
        store.append({"hash": "b", "x": 2})
    assert store.path.read_bytes() == before
    fresh = ResultsStore(tmp_path / "t" / "results.jsonl")
    _fail_fsync_under(monkeypatch, tmp_path / "t")
    with pytest.raises(QclipInputError, match="disk full"):
        fresh.append({"hash": "a"})
    assert not fresh.path.exists()


def test_too_little_free_space_is_refused_before_work(ctx, monkeypatch, capsys):
    import qclip.io.paths as paths

    monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    assert main(ctx.eval(model="ViT-Nope")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("qclip: error: --out ") and "MB free" in line, line


# ------------------------------------------------------------------------------- export folders: atomic re-export
def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def micro_fp(micro_dir):
    from qclip.io.models import load_model, model_config

    name = f"local-dir:{micro_dir}"
    return load_model(name).model, model_config(name)


@pytest.mark.parametrize("writer", ["atomic_write_text", "atomic_write_bytes"])
def test_a_failed_re_export_leaves_the_old_folder_intact_and_no_temp(writer, micro_fp, tmp_path, monkeypatch):
    import qclip.io.checkpoints as checkpoints
    import qclip.io.export_dir as export_dir

    model, (cfg, pre) = micro_fp
    out = tmp_path / "exp"
    export_dir.save_export_dir(model, None, out, model_cfg=cfg, preprocess_cfg=pre)
    old = _tree(out)
    with torch.no_grad():  # the re-export writes other weights
        model.logit_scale.add_(1.0)

    def fail(*args, **kwargs):
        raise RuntimeError("killed mid-export")

    # the manifest (written last) or the float weights (written first) fail: either way nothing of the new export lands
    monkeypatch.setattr(export_dir if writer == "atomic_write_text" else checkpoints, writer, fail)
    with pytest.raises(RuntimeError, match="killed mid-export"):
        export_dir.save_export_dir(model, None, out, model_cfg=cfg, preprocess_cfg=pre)
    assert _tree(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp folder beside it


def test_a_re_export_replaces_the_folder_and_removes_stale_temps(micro_fp, tmp_path):
    from qclip.io.export_dir import load_export_dir, save_export_dir, verify_export_dir

    model, (cfg, pre) = micro_fp
    out = tmp_path / "exp"
    save_export_dir(model, None, out, model_cfg=cfg, preprocess_cfg=pre)
    (out / "float" / "stray.txt").write_text("from an older export")
    stale = tmp_path / ".exp.qclip-tmp-killed"  # what a killed export leaves behind
    (stale / "float").mkdir(parents=True)
    with torch.no_grad():
        model.logit_scale.add_(1.0)
    save_export_dir(model, None, out, model_cfg=cfg, preprocess_cfg=pre)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    assert not (out / "float" / "stray.txt").exists()  # the folder is the new export, whole
    manifest, _ = verify_export_dir(out)
    assert set(manifest["files"]) == {"float/open_clip_config.json", "float/open_clip_model.safetensors"}
    loaded = load_export_dir(out).model
    assert torch.equal(loaded.logit_scale, model.logit_scale)


# ------------------------------------------------------------------------------------------ the results store
def test_an_undecodable_store_line_is_skipped_with_a_warning(tmp_path, caplog):
    from qclip.io.store import ResultsStore

    store = ResultsStore(tmp_path / "results.jsonl")
    store.append({"hash": "a", "x": 1})
    with open(store.path, "ab") as f:
        f.write(b"\xff\xfe not utf-8\n[1, 2]\n")
    assert store.append({"hash": "b", "x": 2})  # a later run still appends
    with caplog.at_level("WARNING"):
        assert [r["hash"] for r in store.records()] == ["a", "b"]
    assert "skipped 2 unreadable line(s) (first: line 2)" in caplog.text


@pytest.mark.parametrize("metrics", ["oops", {"acc1": "high"}, {"acc1": 0.5, "ood": {"x": 3}}, None])
def test_merge_sets_aside_a_malformed_record_before_writing(metrics, ctx, capsys):
    import json

    from qclip.experiments.ablate import cell_hash
    from qclip.experiments.grid import expand_cells, load_grid

    cfg = load_grid(ctx.grid())
    cell = expand_cells(cfg)[0]
    out = Path(ctx.folder("ablate"))
    (out / "store").mkdir()
    record = {"hash": cell_hash(cfg, cell), "cell": cell.as_dict(), "metrics": metrics}
    (out / "store" / "shard.jsonl").write_text(json.dumps(record) + "\n")
    (out / "results.jsonl").write_text("keep\n")
    assert main(ctx.ablate("--merge", out=str(out))) == 2
    assert "nothing to merge" in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == "keep\n"


# ----------------------------------------------------------------------------- caches are checked for fit too
def _wrong_shapes(feats: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    return [{"features": feats[:-1], "labels": labels[:-1] * 0 + 99},  # labels outside the classes
            {"features": feats[:, :-1], "labels": labels},  # wrong dim
            {"features": feats[:-2], "labels": labels},  # n rows != n labels
            {"features": feats.double(), "labels": labels},  # wrong dtype
            {"features": torch.cat([feats, feats]), "labels": torch.cat([labels, labels])}]  # more rows than the limit


def test_a_feature_cache_entry_that_does_not_fit_is_recomputed(micro_dir, wds_root, tmp_path, monkeypatch):
    from qclip.evals.features import dataset_features
    from qclip.evals.zeroshot import model_fingerprint

    from qclip.io.data import resolve_dataset
    from qclip.io.models import load_model

    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path / "cache"))
    fp = load_model(f"local-dir:{micro_dir}")
    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    kw = dict(model_key=model_fingerprint(fp.model), limit=16, batch_size=8, num_workers=0, progress=False)
    feats, labels = dataset_features(fp.model, fp.preprocess, spec, **kw)
    (entry,) = (tmp_path / "cache" / "features").glob("*.pt")
    for blob in _wrong_shapes(feats, labels):
        torch.save(blob, entry)
        again, again_labels = dataset_features(fp.model, fp.preprocess, spec, **kw)
        assert torch.equal(again, feats) and torch.equal(again_labels, labels)  # recomputed: same path, same bits
        assert torch.equal(torch.load(entry, weights_only=True)["features"], feats)  # and the entry rewritten


def test_a_classifier_cache_entry_of_the_wrong_shape_is_rebuilt(micro_dir, tmp_path, monkeypatch):
    from qclip.evals.zeroshot import zero_shot_classifier

    from qclip.io.models import load_model

    monkeypatch.setenv("QCLIP_CACHE_DIR", str(tmp_path / "cache"))
    fp = load_model(f"local-dir:{micro_dir}")
    args = (fp.model, fp.tokenizer, ["cat", "dog", "bird"], ["a photo of a {c}."])
    weights = zero_shot_classifier(*args)
    (entry,) = (tmp_path / "cache" / "classifiers").glob("*.pt")
    for wrong in (weights[:, :2], weights[:-1], weights.double(), weights * float("nan")):
        torch.save(wrong.contiguous(), entry)
        assert torch.equal(zero_shot_classifier(*args), weights)


# --------------------------------------------------------------------------- no partial output before an error
def test_spectrum_writes_nothing_when_a_later_stage_refuses(ctx, monkeypatch, capsys):
    import qclip.experiments.spectrum as spectrum
    from qclip.io.errors import DataError

    def refuse(*args, **kwargs):
        raise DataError("a later stage refused its input")

    monkeypatch.setattr(spectrum, "_feature_analysis", refuse)  # runs after the weight CSVs are written
    before = ctx.snapshot()
    assert main(ctx.spectrum("--features", "wds/cifar10", "--limit", "8", "--frequency-images", "0")) == 2
    assert "a later stage refused its input" in capsys.readouterr().err
    assert ctx.snapshot() == before  # neither --out nor a staging folder


def test_seeds_up_to_the_bound_are_accepted():
    from qclip.quant.spec import parse_spec

    from qclip.io.errors import ConfigError
    from qclip.io.validate import MAX_SEED, check_seed

    assert MAX_SEED == 2**32 - 1
    assert check_seed("seed", MAX_SEED) == MAX_SEED
    torch.Generator().manual_seed(MAX_SEED + 1)  # torch alone would take more: the bound is Lightning/numpy's
    np.random.default_rng(MAX_SEED)
    with pytest.raises(ConfigError, match="<= 4294967295"):
        check_seed("seed", MAX_SEED + 1)
    assert parse_spec(f"mp4a8-rand{MAX_SEED}").seed == MAX_SEED
