"""Load open_clip models from every source a user has: name + tag, checkpoint files, `local-dir:`, `hf-hub:`, demo.

Only safe formats are read: safetensors, or `torch.load(weights_only=True)`. Anything unusable raises
`ModelLoadError` with a one-line reason (the CLI turns it into exit status 2).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import open_clip
import torch
from torch import nn

from .demo import (
    CONFIG_FILE,
    DEMO_MODEL_NAME,
    WEIGHTS_FILE,
    demo_dir,
    is_trained,
    register_model_configs,
)
from .errors import ModelLoadError
from .paths import atomic_write_bytes, atomic_write_text

__all__ = ["LoadedModel", "load_model", "read_state_dict", "load_state_dict_into", "save_open_clip_dir", "model_config",
           "check_finite", "load_error_reason", "CHECKPOINT_SUFFIXES", "EXPORT_MANIFEST", "INT_WEIGHTS_FILE",
           "export_dir_of", "save_export_dir", "load_export_dir", "read_export_manifest"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_PREFIXES = ("", "module.", "model.", "model.module.", "_orig_mod.", "model._orig_mod.")
log = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    """What `load_model` returns: the model (eval mode), its eval transform and its tokenizer."""

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable


#: Sentences of torch's (and open_clip's) load errors that advise an unsafe load: qclip never loads unsafely.
_UNSAFE_ADVICE = ("weights_only", "trusted source", "if you trust", "safe_globals", "documentation of torch.load",
                  "file an issue", "In PyTorch 2.6")


def load_error_reason(exc: BaseException) -> str:
    """The reason of a load error in one line, without torch's advice to retry with `weights_only=False`."""
    sentences = []
    for line in str(exc).splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+", line.strip()):
            if sentence and not any(a in sentence for a in _UNSAFE_ADVICE):
                sentences.append(sentence)
    return " ".join(sentences[:3]) if sentences else type(exc).__name__


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or inf: `ModelLoadError` naming the first such tensor of `source` (pass parameters
    only: buffers such as attention masks or observer ranges may hold inf on purpose)."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            bad = int((~torch.isfinite(value.detach())).sum())
            if bad:
                raise ModelLoadError(f"checkpoint {source}: tensor {key} holds {bad} non-finite value(s) (NaN or inf) "
                                     f"of {value.numel()}")


def _read_checkpoint(path: Path) -> dict:
    """Read a checkpoint file safely into a dict (safetensors or weights-only pickle)."""
    _check_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read checkpoint {path} (corrupt, or not a weights-only file): "
                             f"{load_error_reason(exc)}") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelLoadError(f"cannot read checkpoint {path}: {load_error_reason(exc)}") from exc
    if not isinstance(obj, dict):
        raise ModelLoadError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _check_file(path: Path) -> None:
    """Refuse a checkpoint path that is missing or a folder."""
    if path.is_dir():
        raise ModelLoadError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file not found: {path}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return the tensors of a checkpoint file (`.pt`/`.pth`/`.bin`/`.safetensors`, or a Lightning `.ckpt`)."""
    obj = _read_checkpoint(Path(path))
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict):
        raise ModelLoadError(f"checkpoint {path}: its state_dict is a {type(sd).__name__}, not a dict")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"checkpoint {path} holds no tensors")
    return tensors


def _match_prefix(sd: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strip the wrapper prefix (`module.`, Lightning's `model.` ...) that makes most keys match the model."""
    best, best_hits = sd, -1
    for prefix in _PREFIXES:
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        hits = len(expected & sub.keys())
        if hits > best_hits:
            best, best_hits = sub, hits
    return best


def load_state_dict_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load `sd` strictly into `model`, fixing wrapper prefixes and scalar-vs-1d logit scales."""
    expected = model.state_dict()
    sd = _match_prefix(sd, set(expected))
    sd = {k: v for k, v in sd.items() if k in expected}
    for key in ("logit_scale", "logit_bias"):
        if key in sd and key in expected and sd[key].shape != expected[key].shape:
            sd[key] = sd[key].reshape(expected[key].shape)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ModelLoadError(f"checkpoint {source} does not fit the model: {len(missing)} missing keys "
                             f"(e.g. {missing[0]})")
    bad = [k for k, v in sd.items() if v.shape != expected[k].shape]
    if bad:
        raise ModelLoadError(f"checkpoint {source} does not fit the model: {bad[0]} has shape "
                             f"{tuple(sd[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}")
    params = dict(model.named_parameters())
    check_finite({k: v for k, v in sd.items() if k in params}, source)  # buffers may hold -inf masks or observers
    model.load_state_dict(sd, strict=True)


def _is_path_like(value: str) -> bool:
    return value.endswith(CHECKPOINT_SUFFIXES) or os.sep in value or os.path.exists(value)


def _create(name: str, pretrained: str | None, device, precision: str, **kw):
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision, **kw)
        tokenizer = open_clip.get_tokenizer(name)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/HF errors
        where = f"{name}" + (f" (pretrained={pretrained})" if pretrained else "")
        raise ModelLoadError(f"cannot load model {where}: {load_error_reason(exc)}") from exc
    return model, preprocess, tokenizer


def _checkpoint_arch(path: Path) -> str:
    """Architecture name of a self-describing checkpoint: a sibling config, or a Lightning ckpt's hparams."""
    if (path.parent / "open_clip_config.json").is_file():
        return f"local-dir:{path.parent}"
    if path.suffix == ".ckpt":
        hp = _read_checkpoint(path).get("hyper_parameters") or {}
        arch = hp.get("model_name") or hp.get("model")
        if isinstance(arch, str) and arch:
            return DEMO_MODEL_NAME if arch == "demo" else arch
    raise ModelLoadError(f"cannot tell the architecture of {path}: pass --model ARCH --pretrained {path}")


def load_model(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
               precision: str = "fp32") -> LoadedModel:
    """Load an open_clip model with its eval transform and tokenizer from any supported source.

    `name` is one of: an open_clip architecture (`ViT-B-32`, with `pretrained` a tag such as `openai` or a
    checkpoint path), `demo`, `local-dir:PATH`, `hf-hub:ORG/NAME` (honours `HF_HUB_OFFLINE`), or a checkpoint
    file that names its architecture (a sibling `open_clip_config.json`, or a Lightning `.ckpt` whose
    hyper-parameters hold `model_name`).
    """
    register_model_configs()
    if precision.startswith("amp"):
        precision = "fp32"  # autocast precisions keep float32 weights (see evals.zeroshot.extract_image_features)
    export = export_dir_of(name)
    if export is not None:
        if pretrained:
            raise ModelLoadError(f"--pretrained cannot be combined with the export folder {export} (it holds the "
                                 "weights)")
        return load_export_dir(export, device, precision)
    file_weights: Path | None = None
    if name == "demo":
        folder = demo_dir()
        if not is_trained(folder):
            raise ModelLoadError(f"the demo model is not trained yet (looked in {folder}): run `qclip pretrain-demo`"
                                 " or train.demo.ensure_demo_model()")
        name = f"local-dir:{folder}"
    if name.startswith(("local-dir:", "hf-hub:")):
        if pretrained:
            raise ModelLoadError(f"--pretrained cannot be combined with {name.split(':')[0]}: (the folder or repo "
                                 "holds the weights)")
        if name.startswith("local-dir:"):
            folder = Path(name[len("local-dir:"):])
            if not (folder / "open_clip_config.json").is_file():
                raise ModelLoadError(f"local-dir {folder} has no open_clip_config.json")
        model, preprocess, tokenizer = _create(name, None, device, precision, require_pretrained=True)
        check_finite(dict(model.named_parameters()), name)
        return LoadedModel(model.eval(), preprocess, tokenizer)
    if name.endswith(CHECKPOINT_SUFFIXES) and pretrained is None:
        file_weights = Path(name)
        _check_file(file_weights)
        name = _checkpoint_arch(file_weights)
        if name.startswith("local-dir:"):  # the sibling config only: other weight files there are not read
            model, preprocess, tokenizer = _create(name, None, device, precision, load_weights=False)
            load_state_dict_into(model, read_state_dict(file_weights), str(file_weights))
            return LoadedModel(model.eval(), preprocess, tokenizer)
    arch = name.replace("/", "-")
    if arch not in open_clip.list_models():
        raise ModelLoadError(f"unknown model '{name}': use an open_clip architecture (e.g. ViT-B-32), demo, "
                             "local-dir:PATH, hf-hub:ORG/NAME or a checkpoint file")
    if pretrained and file_weights is None:
        if pretrained in open_clip.list_pretrained_tags_by_model(arch):
            model, preprocess, tokenizer = _create(arch, pretrained, device, precision, require_pretrained=True)
            check_finite(dict(model.named_parameters()), f"{arch} (pretrained={pretrained})")
            return LoadedModel(model.eval(), preprocess, tokenizer)
        if not _is_path_like(pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise ModelLoadError(f"unknown pretrained tag '{pretrained}' for {arch} (known tags: {tags})")
        file_weights = Path(pretrained)
        _check_file(file_weights)
    model, preprocess, tokenizer = _create(arch, None, device, precision)
    if file_weights is not None:
        load_state_dict_into(model, read_state_dict(file_weights), str(file_weights))
    else:
        log.warning("model %s has no pretrained weights: it is randomly initialised", arch)
    return LoadedModel(model.eval(), preprocess, tokenizer)


def model_config(name: str) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of any `load_model` name, for saving a folder stock open_clip loads."""
    register_model_configs()
    if name == "demo":
        name = f"local-dir:{demo_dir()}"
    export = export_dir_of(name)
    if export is not None:
        name = f"local-dir:{export / FLOAT_DIR}"
    if name.startswith("local-dir:"):
        cfg = json.loads((Path(name[len("local-dir:"):]) / CONFIG_FILE).read_text())
        return cfg.get("model_cfg", cfg), cfg.get("preprocess_cfg", {})
    if name.endswith(CHECKPOINT_SUFFIXES):
        return model_config(_checkpoint_arch(Path(name)))
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelLoadError(f"unknown model '{name}'")
    return cfg, {}


def save_open_clip_dir(model: nn.Module, model_cfg: dict, folder: str | os.PathLike,
                       preprocess_cfg: dict | None = None) -> Path:
    """Save `model` as a folder stock open_clip loads (`local-dir:` / hf-hub layout): weights first, then config."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(sd))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2))
    return folder


# ----------------------------------------------------------------------------------------------- export folders
#: An export folder (`qclip export`, `qclip fit`'s `export/`): `float/` (a stock open_clip folder, fake quantizers
#: folded into float weights), `int.safetensors` (integer codes and grids) and this manifest, written last.
EXPORT_MANIFEST = "export.json"
INT_WEIGHTS_FILE = "int.safetensors"
FLOAT_DIR = "float"


def export_dir_of(name: str) -> Path | None:
    """The export folder a model name points at (a folder path or `local-dir:PATH` holding `export.json`), or None."""
    if not isinstance(name, str) or name == "demo" or name.startswith("hf-hub:"):
        return None
    folder = Path(name[len("local-dir:"):] if name.startswith("local-dir:") else name)
    return folder if (folder / EXPORT_MANIFEST).is_file() else None


def save_export_dir(model: nn.Module, spec, folder: str | os.PathLike, *, model_cfg: dict,
                    preprocess_cfg: dict | None = None, source: dict | None = None,
                    w_bits: dict[str, int] | None = None) -> dict:
    """Write an export folder from a fake-quant `model` (not changed) and its spec (None: float only); return the
    manifest. `float/` loads in stock open_clip, `int.safetensors` + `export.json` rebuild the integer model
    (`load_model(FOLDER)`); the manifest lists every quantized map, its kernel, and why when it is not integer."""
    import copy

    from safetensors.torch import save

    from qclip.quant.export import EXPORT_FORMAT, integer_tensors
    from qclip.quant.kernels import cpu_int8_vnni, onednn_int8_available
    from qclip.quant.qat import convert_qat_
    from qclip.quant.spec import parse_spec
    from qclip.quant.surgery import list_linear_maps

    from .results import versions

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    folder = Path(folder)
    work = copy.deepcopy(model).cpu().eval()
    tensors, entries = integer_tensors(work, spec, w_bits=w_bits)
    plain = convert_qat_(work)
    save_open_clip_dir(plain, model_cfg, folder / FLOAT_DIR, preprocess_cfg)
    int_file = folder / INT_WEIGHTS_FILE
    if tensors:
        atomic_write_bytes(int_file, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
    elif int_file.exists():
        int_file.unlink()  # a stale one from an earlier export into this folder
    all_maps = list_linear_maps(plain)
    summary: dict = {"maps": len(entries), "integer_arithmetic": sum(e["integer_arithmetic"] for e in entries)}
    summary["dequantized"] = summary["maps"] - summary["integer_arithmetic"]
    summary["by_tower"] = {t: {"total_maps": sum(m.tower == t for m in all_maps),
                               "quantized": sum(e["tower"] == t for e in entries),
                               "integer_arithmetic": sum(e["tower"] == t and e["integer_arithmetic"] for e in entries)}
                           for t in ("vision", "text")}
    summary["by_op"] = {op: {"quantized": sum(e["op"] == op for e in entries),
                             "integer_arithmetic": sum(e["op"] == op and e["integer_arithmetic"] for e in entries)}
                        for op in ("linear", "conv2d")}
    vnni = cpu_int8_vnni()
    notes = []
    unsafe = _int16_unsafe(entries)
    if vnni is False and unsafe:
        notes.append(f"this CPU has no VNNI: oneDNN's int8 kernels sum u8 x s8 pairs in saturating int16, so "
                     f"{len(unsafe)} maps with 8-bit weights and full-range 8-bit activations lose precision here; "
                     "7-bit activations (e.g. --quant w8a7) or weights never saturate")
    manifest = {"format": EXPORT_FORMAT, "spec": None if spec is None else str(spec), "source": source or {},
                "float": FLOAT_DIR, "int_weights": INT_WEIGHTS_FILE if tensors else None, "summary": summary,
                "maps": entries,
                "exported_on": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "vnni": vnni,
                                "onednn_int8": onednn_int8_available()},
                "notes": notes, "versions": versions()}
    atomic_write_text(folder / EXPORT_MANIFEST, json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return manifest


def read_export_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an export folder (`ModelLoadError` when it is missing, unreadable or of another format)."""
    from qclip.quant.export import EXPORT_FORMAT

    path = Path(folder) / EXPORT_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read export manifest {path}: {load_error_reason(exc)}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelLoadError(f"{path} is not a {EXPORT_FORMAT} manifest (format {got!r})")
    if not isinstance(manifest.get("maps"), list) or not all(isinstance(e, dict) for e in manifest["maps"]):
        raise ModelLoadError(f"{path}: 'maps' must be a list of map entries")
    return manifest


_WARNED_VNNI = False


def _int16_unsafe(entries: list[dict]) -> list[dict]:
    """The oneDNN maps whose u8 x s8 pair sums can saturate int16 on a CPU without VNNI (see `int16_safe`); an
    older manifest without the field counts maps with 8-bit weights."""
    return [e for e in entries if e["kernel"] == "onednn" and not e.get("int16_safe", e["w_bits"] <= 7)]


def load_export_dir(folder: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "fp32", *,
                    kernel: str | None = None) -> LoadedModel:
    """The integer model of an export folder: its float model with every exported map rebuilt from integer codes.

    `kernel="dequant"` rebuilds the fake-quant reference instead (same grids, float arithmetic). Maps planned for
    oneDNN run on the CPU only."""
    global _WARNED_VNNI
    from qclip.quant.export import build_integer_model_, map_kernel
    from qclip.quant.kernels import cpu_int8_vnni

    folder = Path(folder)
    manifest = read_export_manifest(folder)
    if precision.startswith("amp"):
        precision = "fp32"
    if precision != "fp32":
        raise ModelLoadError(f"export folder {folder}: runs in float32 around its integer maps, not {precision}")
    entries = manifest["maps"]
    loaded = load_model(f"local-dir:{folder / FLOAT_DIR}")
    if entries:
        from safetensors.torch import load_file

        path = folder / INT_WEIGHTS_FILE
        _check_file(path)
        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise ModelLoadError(f"cannot read {path}: {load_error_reason(exc)}") from exc
        try:
            build_integer_model_(loaded.model, entries, tensors, kernel=kernel)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"export folder {folder} does not fit its float model: {exc}") from exc
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
