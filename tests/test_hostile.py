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
