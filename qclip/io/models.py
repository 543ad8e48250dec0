"""Load open_clip models from every source a user has: name + tag, checkpoint files, `local-dir:`, `hf-hub:`, demo,
export folders (read by `qclip.io.export_dir`), one resolver per source kind.

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
from .export_dir import FLOAT_DIR, export_dir_of, load_export_dir
from .paths import atomic_write_bytes, atomic_write_text

__all__ = ["LoadedModel", "load_model", "source_kind", "read_state_dict", "load_state_dict_into", "save_open_clip_dir",
           "model_config", "check_finite", "load_error_reason", "CHECKPOINT_SUFFIXES"]

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
        hp = _read_checkpoint(path).get("hyper_parameters")
        hp = hp if isinstance(hp, dict) else {}
        arch = hp.get("model_name") or hp.get("model")
        if isinstance(arch, str) and arch:
            return DEMO_MODEL_NAME if arch == "demo" else arch
    raise ModelLoadError(f"cannot tell the architecture of {path}: pass --model ARCH --pretrained {path}")


def _load_export(name: str, pretrained: str | None, device, precision: str) -> LoadedModel:
    """An export folder (`export.json` + `float/` + `int.safetensors`), verified, as its integer model."""
    folder = export_dir_of(name)
    if pretrained:
        raise ModelLoadError(f"--pretrained cannot be combined with the export folder {folder} (it holds the "
                             "weights)")
    return load_export_dir(folder, device, precision)


def _load_demo(name: str, pretrained: str | None, device, precision: str) -> LoadedModel:
    """The demo model from the user cache (trained by `qclip pretrain-demo`)."""
    folder = demo_dir()
    if not is_trained(folder):
        raise ModelLoadError(f"the demo model is not trained yet (looked in {folder}): run `qclip pretrain-demo`"
                             " or train.demo.ensure_demo_model()")
    return _load_folder(f"local-dir:{folder}", pretrained, device, precision)


def _load_folder(name: str, pretrained: str | None, device, precision: str) -> LoadedModel:
    """`local-dir:PATH` (an open_clip folder) or `hf-hub:ORG/NAME`: the folder or repo holds config and weights."""
    if pretrained:
        raise ModelLoadError(f"--pretrained cannot be combined with {name.split(':')[0]}: (the folder or repo "
                             "holds the weights)")
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / CONFIG_FILE).is_file():
            raise ModelLoadError(f"local-dir {folder} has no open_clip_config.json")
    model, preprocess, tokenizer = _create(name, None, device, precision, require_pretrained=True)
    check_finite(dict(model.named_parameters()), name)
    return LoadedModel(model.eval(), preprocess, tokenizer)


def _load_checkpoint(name: str, pretrained: str | None, device, precision: str) -> LoadedModel:
    """A self-describing checkpoint file: a sibling `open_clip_config.json` (only that config is read beside it), or
    a Lightning `.ckpt` whose hyper-parameters name the architecture."""
    path = Path(name)
    _check_file(path)
    arch = _checkpoint_arch(path)
    if not arch.startswith("local-dir:"):
        return _load_open_clip(arch, None, device, precision, weights=path)
    model, preprocess, tokenizer = _create(arch, None, device, precision, load_weights=False)
    load_state_dict_into(model, read_state_dict(path), str(path))
    return LoadedModel(model.eval(), preprocess, tokenizer)


def _load_open_clip(name: str, pretrained: str | None, device, precision: str, *,
                    weights: Path | None = None) -> LoadedModel:
    """An open_clip architecture: with a pretrained tag, a checkpoint file (`pretrained` or `weights`), or neither
    (random initialisation, with a warning)."""
    arch = name.replace("/", "-")
    if arch not in open_clip.list_models():
        raise ModelLoadError(f"unknown model '{name}': use an open_clip architecture (e.g. ViT-B-32), demo, "
                             "local-dir:PATH, hf-hub:ORG/NAME or a checkpoint file")
    if pretrained and weights is None:
        if pretrained in open_clip.list_pretrained_tags_by_model(arch):
            model, preprocess, tokenizer = _create(arch, pretrained, device, precision, require_pretrained=True)
            check_finite(dict(model.named_parameters()), f"{arch} (pretrained={pretrained})")
            return LoadedModel(model.eval(), preprocess, tokenizer)
        if not _is_path_like(pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise ModelLoadError(f"unknown pretrained tag '{pretrained}' for {arch} (known tags: {tags})")
        weights = Path(pretrained)
        _check_file(weights)
    model, preprocess, tokenizer = _create(arch, None, device, precision)
    if weights is not None:
        load_state_dict_into(model, read_state_dict(weights), str(weights))
    else:
        log.warning("model %s has no pretrained weights: it is randomly initialised", arch)
    return LoadedModel(model.eval(), preprocess, tokenizer)


#: One resolver per source kind (`source_kind`), as open_clip's factory dispatches on `hf-hub:` / `local-dir:`.
_RESOLVERS: dict[str, Callable[..., LoadedModel]] = {
    "export": _load_export, "demo": _load_demo, "local-dir": _load_folder, "hf-hub": _load_folder,
    "checkpoint": _load_checkpoint, "open_clip": _load_open_clip}


def source_kind(name: str, pretrained: str | None = None) -> str:
    """Which source a model name is: export, demo, local-dir, hf-hub, checkpoint (a file naming its architecture) or
    open_clip (an architecture, with a tag, a checkpoint path or nothing as `pretrained`)."""
    if export_dir_of(name) is not None:
        return "export"
    if name == "demo":
        return "demo"
    if name.startswith(("local-dir:", "hf-hub:")):
        return name.split(":", 1)[0]
    if name.endswith(CHECKPOINT_SUFFIXES) and pretrained is None:
        return "checkpoint"
    return "open_clip"


def load_model(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
               precision: str = "fp32") -> LoadedModel:
    """Load an open_clip model with its eval transform and tokenizer from any supported source.

    `name` is one of: an open_clip architecture (`ViT-B-32`, with `pretrained` a tag such as `openai` or a
    checkpoint path), `demo`, `local-dir:PATH`, `hf-hub:ORG/NAME` (honours `HF_HUB_OFFLINE`), a checkpoint
    file that names its architecture (a sibling `open_clip_config.json`, or a Lightning `.ckpt` whose
    hyper-parameters hold `model_name`), or an export folder (`qclip export`). Each kind has its own resolver.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    register_model_configs()
    if precision.startswith("amp"):
        precision = "fp32"  # autocast precisions keep float32 weights (see evals.zeroshot.extract_image_features)
    return _RESOLVERS[source_kind(name, pretrained)](name, pretrained, device, precision)


def model_config(name: str) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of any `load_model` name, for saving a folder stock open_clip loads."""
    register_model_configs()
    if name == "demo":
        name = f"local-dir:{demo_dir()}"
    export = export_dir_of(name)
    if export is not None:
        name = f"local-dir:{export / FLOAT_DIR}"
    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:"):]) / CONFIG_FILE
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read model config {path}: {load_error_reason(exc)}") from exc
        if not isinstance(cfg, dict):
            raise ModelLoadError(f"model config {path} holds a {type(cfg).__name__}, not a mapping")
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
