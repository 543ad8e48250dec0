"""Export folders (`qclip export`, `qclip fit`'s `export/`): write them atomically, verify them, load them.

An export folder holds `float/` (a stock open_clip folder, fake quantizers folded into float weights),
`int.safetensors` (integer codes and grids of every quantized map) and `export.json`, the manifest: the spec, one
entry per quantized map, a summary, and the sha256 of every file it describes. Nothing in it is trusted as it is:
`verify_export_dir` checks the digests, that every in-scope map is listed once with its tensors, that scales are
finite and positive and codes lie in the range of their bit width, and names the file or map that fails.

A re-export is built in a sibling temp folder and swapped in (old folder renamed aside, new one renamed in, old one
removed), so a killed export leaves the old folder or the new one, never a mix; a temp folder a killed export left
behind is removed by the next export into the same place.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from .checkpoints import LoadedModel, load_error_reason, load_open_clip_folder, save_open_clip_dir
from .errors import ConfigError, ModelLoadError
from .integrity import file_digest
from .paths import atomic_write_bytes, atomic_write_text, output_errors

__all__ = ["EXPORT_MANIFEST", "INT_WEIGHTS_FILE", "FLOAT_DIR", "ExportManifest", "export_dir_of", "check_export_target",
           "save_export_dir", "read_export_manifest", "verify_export_dir", "load_export_dir"]

log = logging.getLogger(__name__)

EXPORT_MANIFEST = "export.json"
INT_WEIGHTS_FILE = "int.safetensors"
FLOAT_DIR = "float"
#: Name parts of the sibling folders an export builds in and moves the old folder to (`.NAME.qclip-tmp-XXXX`).
_TMP_TAG, _OLD_TAG = ".qclip-tmp-", ".qclip-old-"


class ExportManifest(TypedDict):
    """`export.json` (see docs/json-contract.md): what was exported, one entry per quantized map, and the sha256 of
    every file of the folder (paths relative to it, `/`-separated)."""

    format: str
    spec: str | None
    source: dict[str, Any]
    float: str
    int_weights: str | None
    summary: dict[str, Any]
    maps: list[dict[str, Any]]  # qclip.quant.export.MapEntry
    files: dict[str, str]
    exported_on: dict[str, Any]
    cpu_features: dict[str, Any]  # qclip.quant.kernels.int8_features(): flags, int8_path, cpu_capability
    notes: list[str]
    versions: dict[str, str]


def export_dir_of(name: str) -> Path | None:
    """The export folder a model name points at (a folder path or `local-dir:PATH` holding `export.json`), or None."""
    if not isinstance(name, str) or name == "demo" or name.startswith("hf-hub:"):
        return None
    folder = Path(name[len("local-dir:"):] if name.startswith("local-dir:") else name)
    return folder if (folder / EXPORT_MANIFEST).is_file() else None


def check_export_target(folder: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that holds files but is not an export folder (the export replaces
    the folder as a whole, so it would remove them)."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / EXPORT_MANIFEST).is_file():
        raise ConfigError(f"{flag} {folder} holds files but is not an export folder (no {EXPORT_MANIFEST}): an "
                          "export replaces the whole folder; choose a new or empty folder")


def _summary(entries: list[dict], all_maps) -> dict:
    """Counts of quantized and integer maps, in total, by tower and by op."""
    summary: dict = {"maps": len(entries), "integer_arithmetic": sum(e["integer_arithmetic"] for e in entries)}
    summary["dequantized"] = summary["maps"] - summary["integer_arithmetic"]
    summary["by_tower"] = {t: {"total_maps": sum(m.tower == t for m in all_maps),
                               "quantized": sum(e["tower"] == t for e in entries),
                               "integer_arithmetic": sum(e["tower"] == t and e["integer_arithmetic"] for e in entries)}
                           for t in ("vision", "text")}
    summary["by_op"] = {op: {"quantized": sum(e["op"] == op for e in entries),
                             "integer_arithmetic": sum(e["op"] == op and e["integer_arithmetic"] for e in entries)}
                        for op in ("linear", "conv2d")}
    return summary


def _int16_unsafe(entries: list[dict]) -> list[dict]:
    """The oneDNN maps whose u8 x s8 pair sums can saturate int16 on a CPU without VNNI (see `int16_safe`)."""
    return [e for e in entries if e["kernel"] == "onednn" and not e.get("int16_safe", e["w_bits"] <= 7)]


def _siblings(folder: Path, tag: str) -> list[Path]:
    return sorted(folder.parent.glob(f"{glob.escape('.' + folder.name + tag)}*"))


def _remove_stale(folder: Path) -> None:
    """Remove the temp and set-aside folders a killed export into `folder` left beside it."""
    for stale in [*_siblings(folder, _TMP_TAG), *_siblings(folder, _OLD_TAG)]:
        log.warning("removing %s, left behind by an interrupted export", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(new: Path, folder: Path) -> None:
    """Replace `folder` by the complete folder `new` (old renamed aside, new renamed in, old removed)."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_OLD_TAG}", dir=folder.parent))
        os.rename(folder, old / folder.name)
    os.rename(new, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_export_dir(model: nn.Module, spec, folder: str | os.PathLike, *, model_cfg: dict,
                    preprocess_cfg: dict | None = None, source: dict | None = None,
                    w_bits: dict[str, int] | None = None) -> ExportManifest:
    """Write an export folder from a fake-quant `model` (not changed) and its spec (None: float only); return the
    manifest. `float/` loads in stock open_clip, `int.safetensors` + `export.json` rebuild the integer model
    (`load_model(FOLDER)`); the manifest lists every quantized map, its kernel, why when it is not integer, and the
    sha256 of every file. The folder is built beside `folder` and swapped in whole."""
    from safetensors.torch import save

    from qclip.quant.export import EXPORT_FORMAT, integer_tensors
    from qclip.quant.kernels import cpu_int8_vnni, int8_advice, int8_features, onednn_int8_available
    from qclip.quant.qat import convert_qat_
    from qclip.quant.spec import parse_spec
    from qclip.quant.surgery import list_linear_maps

    from .results import versions

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    folder = Path(folder)
    work = copy.deepcopy(model).cpu().eval()
    tensors, entries = integer_tensors(work, spec, w_bits=w_bits)
    plain = convert_qat_(work)
    with output_errors(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_TMP_TAG}", dir=folder.parent))
    with output_errors(folder):
        try:
            save_open_clip_dir(plain, model_cfg, tmp / FLOAT_DIR, preprocess_cfg)
            if tensors:
                atomic_write_bytes(tmp / INT_WEIGHTS_FILE,
                                   save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
            files = {p.relative_to(tmp).as_posix(): file_digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            vnni = cpu_int8_vnni()
            cpu = int8_features()  # the CPU this export was checked on; the advice follows its int8 path
            advice = int8_advice(cpu["int8_path"], len(_int16_unsafe(entries)), getattr(spec, "a_bits", None))
            notes = [advice] if advice else []
            manifest = ExportManifest(
                format=EXPORT_FORMAT, spec=None if spec is None else str(spec), source=source or {}, float=FLOAT_DIR,
                int_weights=INT_WEIGHTS_FILE if tensors else None, summary=_summary(entries, list_linear_maps(plain)),
                maps=entries, files=files,
                exported_on={"cpu_capability": torch.backends.cpu.get_cpu_capability(), "vnni": vnni,
                             "onednn_int8": onednn_int8_available()},
                cpu_features=cpu, notes=notes, versions=versions())
            atomic_write_text(tmp / EXPORT_MANIFEST, json.dumps(manifest, indent=2, allow_nan=False) + "\n")
            _swap_in(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _bad(folder: Path, what: str) -> ModelLoadError:
    return ModelLoadError(f"export folder {folder}: {what}")


def read_export_manifest(folder: str | os.PathLike) -> ExportManifest:
    """The manifest of an export folder, its structure checked (`ModelLoadError` naming the file when it is missing,
    unreadable, of another format or malformed); the files it describes are not read (see `verify_export_dir`)."""
    from qclip.quant.export import EXPORT_FORMAT

    folder = Path(folder)
    path = folder / EXPORT_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read export manifest {path}: {load_error_reason(exc)}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelLoadError(f"{path} is not a {EXPORT_FORMAT} manifest (format {str(got)[:80]!r}; an older export: "
                             "export it again)")
    if not isinstance(manifest.get("maps"), list):
        raise ModelLoadError(f"{path}: 'maps' must be a list of map entries")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ModelLoadError(f"{path}: 'files' must map each file of the folder to its sha256")
    if not isinstance(manifest.get("spec"), (str, type(None))) or not isinstance(manifest.get("summary"), dict):
        raise ModelLoadError(f"{path}: 'spec' must be a spec string or null and 'summary' a mapping")
    return manifest  # type: ignore[return-value]


def _check_files(folder: Path, manifest: ExportManifest) -> None:
    """Every file the manifest needs is listed, present, and has the listed sha256; nothing is outside the folder."""
    files = manifest["files"]
    needed = [f"{FLOAT_DIR}/open_clip_config.json", f"{FLOAT_DIR}/open_clip_model.safetensors"]
    if manifest["maps"]:
        needed.append(INT_WEIGHTS_FILE)
    for rel in needed:
        if rel not in files:
            raise _bad(folder, f"{EXPORT_MANIFEST} lists no sha256 for {rel}")
    root = folder.resolve()
    for rel, digest in files.items():
        path = (folder / rel).resolve()
        if root not in path.parents:
            raise _bad(folder, f"{EXPORT_MANIFEST} names {rel!r}, outside the folder")
        if not path.is_file():
            raise _bad(folder, f"{rel} is missing")
        if file_digest(path) != digest:
            raise _bad(folder, f"{rel} does not match its sha256 in {EXPORT_MANIFEST} (changed or damaged: export "
                               "again)")


def _read_int_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / INT_WEIGHTS_FILE
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelLoadError(f"cannot read {path}: {load_error_reason(exc)}") from exc


def verify_export_dir(folder: str | os.PathLike) -> tuple[ExportManifest, dict[str, torch.Tensor]]:
    """Check an export folder before it is used: the manifest, every file's sha256, the map entries against the
    integer tensors (every map listed once with its codes, finite positive scales, codes in range), and the summary
    against the entries. Returns the manifest and the integer tensors; `ModelLoadError` naming the file or map."""
    from qclip.quant.export import check_integer_tensors

    folder = Path(folder)
    manifest = read_export_manifest(folder)
    _check_files(folder, manifest)
    tensors = _read_int_tensors(folder) if manifest["maps"] else {}
    try:
        check_integer_tensors(manifest["maps"], tensors)
    except ValueError as exc:
        raise _bad(folder, f"{INT_WEIGHTS_FILE} / {EXPORT_MANIFEST}: {exc}") from None
    summary = manifest["summary"]
    if summary.get("maps") != len(manifest["maps"]) or summary.get("integer_arithmetic") != sum(
            bool(e["integer_arithmetic"]) for e in manifest["maps"]):
        raise _bad(folder, f"{EXPORT_MANIFEST}: its summary counts {summary.get('maps')!r} maps, its entries "
                           f"{len(manifest['maps'])}")
    return manifest, tensors


def _check_scope(folder: Path, model: nn.Module, manifest: ExportManifest) -> None:
    """Every map of the float model in the spec's scope is an exported map (none was dropped from the manifest)."""
    from qclip.quant.api import towers_of
    from qclip.quant.spec import RankSpec, parse_spec
    from qclip.quant.surgery import list_linear_maps

    try:
        spec = None if manifest["spec"] is None else parse_spec(manifest["spec"])
    except ValueError as exc:
        raise _bad(folder, f"{EXPORT_MANIFEST}: bad spec {manifest['spec']!r}: {exc}") from None
    if spec is None or isinstance(spec, RankSpec):
        if manifest["maps"]:
            raise _bad(folder, f"{EXPORT_MANIFEST} lists quantized maps but no quantization spec")
        return
    listed = {e["name"] for e in manifest["maps"]}
    towers = towers_of(spec.scope)
    missing = [m.name for m in list_linear_maps(model) if m.tower in towers and m.name not in listed]
    if missing:
        raise _bad(folder, f"map {missing[0]} is in the scope of {spec} but {EXPORT_MANIFEST} does not list it "
                           f"({len(missing)} missing)")


_WARNED_VNNI = False


def load_export_dir(folder: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "fp32", *,
                    kernel: str | None = None) -> LoadedModel:
    """The integer model of a verified export folder (a `LoadedModel`): its float model with every exported map
    rebuilt from integer codes.

    `kernel="dequant"` rebuilds the fake-quant reference instead (same grids, float arithmetic). Maps planned for
    oneDNN run on the CPU only."""
    global _WARNED_VNNI
    from qclip.quant.export import build_integer_model_, map_kernel
    from qclip.quant.kernels import cpu_int8_vnni
    from qclip.quant.surgery import attention_surgery_


    folder = Path(folder)
    if precision.startswith("amp"):
        precision = "fp32"
    if precision != "fp32":
        raise ModelLoadError(f"export folder {folder}: runs in float32 around its integer maps, not {precision}")
    manifest, tensors = verify_export_dir(folder)
    entries = manifest["maps"]
    loaded = load_open_clip_folder(f"local-dir:{folder / FLOAT_DIR}", "cpu", "fp32")
    attention_surgery_(loaded.model)
    _check_scope(folder, loaded.model, manifest)
    if entries:
        try:
            build_integer_model_(loaded.model, entries, tensors, kernel=kernel)
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad(folder, f"does not fit its float model: {exc}") from exc
    onednn = [e for e in entries if (kernel or map_kernel(e)) == "onednn"]
    if onednn and torch.device(device).type != "cpu":
        raise ModelLoadError(f"export folder {folder} runs {len(onednn)} maps on oneDNN's CPU int8 kernels: use "
                             "--device cpu")
    unsafe = _int16_unsafe(onednn)
    if unsafe and cpu_int8_vnni() is False and not _WARNED_VNNI:
        _WARNED_VNNI = True
        log.warning(f"this CPU has no VNNI: oneDNN's int8 kernels saturate int16 partial sums of 8-bit weights x "
                    f"8-bit activations in {len(unsafe)} maps (about 1% relative error per map on random data); "
                    "export with 7-bit activations (e.g. w8a7) for exact integer sums here")
    return LoadedModel(loaded.model.to(device).eval(), loaded.preprocess, loaded.tokenizer)
