"""Build a registered dataset from its downloaded public source into the CLIP_benchmark wds layout.

Writes `<root>/wds_NAME/` (`<split>/nshards.txt`, `<split>/N.tar`, `classnames.txt`,
`zeroshot_classification_templates.txt`, `sources_<split>.tsv`, extra text files, `README.md`). The folder is built
in a temp folder `<root>/.wds_NAME.build-*` beside the target and renamed into place only when complete and
checked, so a failed or interrupted build never leaves a partial dataset. The recipe (image processing, sample
order, keys, tar and gzip settings) is data in the registry; this module only interprets it.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .integrity import SHARD_SIZE, check_shard_content, file_digest, sha256_bytes

__all__ = ["BuildResult", "read_tar_source", "read_gz_source", "source_filter", "plan_samples", "encode_image",
           "pack_shard", "text_files", "build_dataset"]

_KEY = "s{:09d}"


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: the dataset folder, per-split sample counts, and re-encoded shards whose bytes
    differ from the registry (their content was checked instead)."""

    path: Path
    samples: dict[str, int]
    reencoded: tuple[str, ...] = ()


def read_tar_source(path: str | os.PathLike, strip: int, want: Callable[[str], bool]) -> dict[str, bytes]:
    """Stream a (compressed) tar archive and return the regular files whose path, after dropping `strip`
    leading components, `want` accepts; errors name the archive."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                parts = member.name.split("/")
                if len(parts) <= strip:
                    continue
                rel = "/".join(parts[strip:])
                if want(rel):
                    out[rel] = tf.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"corrupt source archive {path}: {exc}") from None
    return out


def read_gz_source(path: str | os.PathLike) -> bytes:
    """Decompress a gzip source file; errors name it."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, zlib.error, OSError) as exc:
        raise DataError(f"corrupt source file {path}: {exc}") from None


# ------------------------------------------------------------------------------------------------ selection

def _class_folder_want(recipe: dict, classnames: list[str]) -> Callable[[str], bool]:
    dirs = recipe.get("class_dirs") or classnames
    keep = [dirs[i] for i in recipe.get("classes", range(len(dirs)))]
    prefixes = tuple(p.format(cls=c) for pats in recipe["splits"].values() for p in pats for c in keep)
    exts = tuple(recipe.get("extensions", (".jpg", ".jpeg", ".png")))

    def want(rel: str) -> bool:
        return rel.lower().endswith(exts) and any(rel.startswith(p) and "/" not in rel[len(p):] for p in prefixes)

    return want


_WNID_FILE = re.compile(r"^(n\d{8})_[^/]+\.JPEG$")


def source_filter(entry: dict, classnames: list[str]) -> Callable[[str], bool]:
    """The predicate choosing the archive members a dataset's recipe reads."""
    recipe = entry["recipe"]
    if recipe["kind"] == "class_folders":
        return _class_folder_want(recipe, classnames)
    if recipe["kind"] == "wnid_files":
        return lambda rel: bool(_WNID_FILE.match(rel))
    raise DataError(f"recipe kind {recipe['kind']!r} reads no archive")


def plan_samples(entry: dict, files: dict[str, bytes], classnames: list[str],
                 mapping: list[list[str]] | None = None) -> dict[str, list[tuple[str, int]]]:
    """Per split, the (source, label) list in sample order: the source-sorted list shuffled by `random.Random(seed)`."""
    recipe = entry["recipe"]
    seed = int(recipe.get("seed", 0))
    plan: dict[str, list[tuple[str, int]]] = {}
    if recipe["kind"] == "class_folders":
        dirs = recipe.get("class_dirs") or classnames
        for split, patterns in recipe["splits"].items():
            items = []
            for index in recipe.get("classes", range(len(dirs))):
                prefixes = [p.format(cls=dirs[index]) for p in patterns]
                items += [(rel, index) for rel in files
                          if any(rel.startswith(p) and "/" not in rel[len(p):] for p in prefixes)]
            plan[split] = items
    elif recipe["kind"] == "wnid_files":
        wnids = sorted({_WNID_FILE.match(rel).group(1) for rel in files})
        if len(wnids) != len(files) or len(wnids) != len(classnames if recipe["label"] == "wnid" else mapping or []):
            raise DataError(f"source has {len(files)} files for {len(wnids)} wnids; expected one per class")
        rows = {row[0]: row for row in (mapping or [])}
        items = []
        for rel in files:
            wnid = _WNID_FILE.match(rel).group(1)
            target = rows[wnid][2] if rows else "-"
            if recipe.get("select") == "mapped" and target == "-":
                continue
            if recipe.get("select") == "unmapped" and target != "-":
                continue
            label = wnids.index(wnid) if recipe["label"] == "wnid" else classnames.index(target)
            items.append((rel, label))
        plan[recipe.get("split", "test")] = items
    elif recipe["kind"] == "idx":
        labels = files["labels"]
        count = int.from_bytes(labels[4:8], "big")
        plan[recipe.get("split", "test")] = [(f"{recipe['prefix']}:{i:05d}", labels[8 + i]) for i in range(count)]
    else:
        raise DataError(f"unknown recipe kind {recipe['kind']!r}")
    for split, items in plan.items():
        items.sort(key=lambda item: item[0])
        random.Random(seed).shuffle(items)
    return plan


# ------------------------------------------------------------------------------------------------ encoding

def _resized(im: Image.Image, short: int) -> Image.Image:
    w, h = im.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return im.resize(size, Image.LANCZOS)


def encode_image(op: dict, raw: bytes, source: str) -> bytes:
    """Apply a recipe's image op to one source image: `copy` (bytes unchanged) or `jpeg` (resize the shorter side
    with LANCZOS, optional centre crop, RGB, JPEG at the given quality); errors name the source file."""
    if op["op"] == "copy":
        return raw
    if op["op"] != "jpeg":
        raise DataError(f"unknown image op {op['op']!r}")
    try:
        im = Image.open(io.BytesIO(raw))
        im.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode source image {source}: {exc}") from None
    short = int(op["short_side"])
    if op.get("rgb") == "before_resize":
        im = _resized(im.convert("RGB"), short)
    else:
        im = _resized(im, short).convert("RGB")
    if op.get("center_crop"):
        w, h = im.size
        top, left = int(round((h - short) / 2.0)), int(round((w - short) / 2.0))
        im = im.crop((left, top, left + short, top + short))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(op["quality"]))
    return buf.getvalue()


def _idx_images(data: bytes, source: str) -> tuple[int, int, int]:
    magic, count, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or len(data) != 16 + count * rows * cols:
        raise DataError(f"{source} is not an IDX image file (magic {magic}, {len(data)} bytes)")
    return count, rows, cols


def _png_gray(data: bytes, index: int, rows: int, cols: int) -> bytes:
    start = 16 + index * rows * cols
    buf = io.BytesIO()
    Image.frombytes("L", (cols, rows), data[start:start + rows * cols]).save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ packing

def pack_shard(samples: list[tuple[str, str, bytes, int]], tar_spec: dict) -> bytes:
    """One shard: a ustar tar of `<key>.<ext>` then `<key>.cls` members with fixed metadata, gzip-compressed
    (no file name, fixed mtime, the given level) when `tar_spec["gzip_level"]` is set."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, ext, image, label in samples:
            for name, data in ((f"{key}.{ext}", image), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(tar_spec.get("mtime", 0)), int(tar_spec["mode"], 8)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tf.addfile(info, io.BytesIO(data))
    if tar_spec.get("gzip_level") is None:
        return raw.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=int(tar_spec["gzip_level"]),
                       mtime=int(tar_spec.get("gzip_mtime", 0))) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def text_files(entry: dict, text: dict) -> dict[str, bytes]:
    """The dataset's small text files (class names, templates, extras, README) from the registry's text data."""
    out = {
        "classnames.txt": "".join(f"{c}\n" for c in text["classnames"][entry["classnames"]]),
        "zeroshot_classification_templates.txt": "".join(f"{t}\n" for t in text["templates"][entry["templates"]]),
    }
    for rel, ref in entry.get("extra_files", {}).items():
        if ref == "wnids":
            out[rel] = "".join(f"{row[0]}\n" for row in text["cifar10_mapping"])
        elif ref == "cifar10_mapping":
            out[rel] = "".join("\t".join(row) + "\n" for row in text["cifar10_mapping"])
        else:
            raise DataError(f"unknown extra file reference {ref!r}")
    if entry.get("readme") in text.get("readmes", {}):
        out["README.md"] = text["readmes"][entry["readme"]]
    return {rel: body.encode("utf-8") for rel, body in out.items()}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _check_content(shard: bytes, samples: list[tuple[str, str, bytes, int]], where: str) -> None:
    """Re-read a packed shard and check it holds exactly the samples (names, labels, decodable images)."""
    check_shard_content(io.BytesIO(shard), [(k, e, lab) for k, e, _, lab in samples], where)


def build_dataset(entry: dict, text: dict, sources: dict[str, dict[str, bytes] | bytes], root: str | os.PathLike,
                  *, progress: Callable[[str], None] | None = None) -> BuildResult:
    """Build dataset `entry` from its read sources into `<root>/wds_NAME` atomically; return what was built.

    `sources` maps the recipe's source roles to data: `archive` -> {relative path: bytes} for tar sources,
    `images` / `labels` -> decompressed bytes for IDX sources. Text files must match the registry's sha256 exactly;
    shards of a byte-exact recipe too; re-encoded shards that differ are content-checked and reported.
    """
    name, recipe, expected = entry["name"], entry["recipe"], entry.get("files", {})
    classnames = text["classnames"][entry["classnames"]]
    mapping = text.get("cifar10_mapping") if recipe.get("label") == "cifar10" or recipe.get("select") else None
    if recipe["kind"] == "idx":
        images, labels = sources["images"], sources["labels"]
        count, rows, cols = _idx_images(images, "IDX images")
        if int.from_bytes(labels[:4], "big") != 2049 or int.from_bytes(labels[4:8], "big") != count:
            raise DataError(f"IDX labels do not match the {count} IDX images")
        files = {"labels": labels}
    else:
        files = sources["archive"]
    plan = plan_samples(entry, files, classnames, mapping)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"wds_{name}"
    tmp = Path(tempfile.mkdtemp(prefix=f".wds_{name}.build-", dir=root))
    reencoded: list[str] = []
    try:
        counter = 0
        for split in ("train", "test"):
            if split not in plan:
                continue
            items = plan[split]
            rows_tsv = []
            nshards = max(1, -(-len(items) // SHARD_SIZE))
            for shard_index in range(nshards):
                chunk = []
                for source, label in items[shard_index * SHARD_SIZE:(shard_index + 1) * SHARD_SIZE]:
                    key = _KEY.format(counter)
                    counter += 1
                    if recipe["kind"] == "idx":
                        image, ext = _png_gray(images, int(source.split(":")[1]), rows, cols), "png"
                    else:
                        image, ext = encode_image(recipe["image"], files[source], source), recipe["image"]["ext"]
                    chunk.append((key, ext, image, label))
                    rows_tsv.append(f"{key}\t{label}\t{source}\n")
                rel = f"{split}/{shard_index}.tar"
                if progress:
                    progress(f"packing {name} {rel} ({len(chunk)} samples)")
                data = pack_shard(chunk, entry["tar"])
                if expected.get(rel) and sha256_bytes(data) != expected[rel]:
                    if not entry.get("reencoded"):
                        raise DataError(f"built {name}/{rel} differs from the registry (sha256 "
                                        f"{sha256_bytes(data)[:12]}..., expected {expected[rel][:12]}...)")
                    _check_content(data, chunk, f"{name}/{rel}")
                    reencoded.append(rel)
                _write(tmp / rel, data)
            _write(tmp / split / "nshards.txt", f"{nshards}\n".encode())
            _write(tmp / f"sources_{split}.tsv", "".join(rows_tsv).encode("utf-8"))
        for rel, data in text_files(entry, text).items():
            _write(tmp / rel, data)
        for rel, digest in expected.items():
            if rel.endswith(".tar"):
                continue
            path = tmp / rel
            if not path.is_file():
                raise DataError(f"build of {name} did not produce {rel}")
            if file_digest(path) != digest:
                raise DataError(f"built {name}/{rel} differs from the registry (recipe or source mismatch)")
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp made the folder 0700: give the usual modes
            path.chmod(0o644 if path.is_file() else 0o755)
        if final.exists():
            raise DataError(f"{final} appeared during the build; remove it or use it")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(final, {s: len(v) for s, v in plan.items()}, tuple(reencoded))
