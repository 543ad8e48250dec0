"""Safe reading and writing of open_clip weights: checkpoint files (safetensors, or `torch.load(weights_only=True)`),
state dicts fitted into a model, and open_clip folders (`local-dir:` / `hf-hub:`, and the folders qclip saves).
Anything unusable raises `ModelLoadError` with a one-line reason naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import open_clip
import torch
from torch import nn

from .demo import CONFIG_FILE, WEIGHTS_FILE
from .errors import ModelLoadError
from .paths import atomic_write_bytes, atomic_write_text

__all__ = ["CHECKPOINT_SUFFIXES", "LoadedModel", "load_error_reason", "check_finite", "check_file", "read_checkpoint",
           "read_state_dict", "load_state_dict_into", "create_open_clip", "load_open_clip_folder",
           "save_open_clip_dir"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_PREFIXES = ("", "module.", "model.", "model.module.", "_orig_mod.", "model._orig_mod.")


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


def read_checkpoint(path: Path) -> dict:
    """Read a checkpoint file safely into a dict (safetensors or weights-only pickle)."""
    check_file(path)
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


def check_file(path: Path) -> None:
    """Refuse a checkpoint path that is missing or a folder."""
    if path.is_dir():
        raise ModelLoadError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file not found: {path}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return the tensors of a checkpoint file (`.pt`/`.pth`/`.bin`/`.safetensors`, or a Lightning `.ckpt`)."""
    obj = read_checkpoint(Path(path))
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


def create_open_clip(name: str, pretrained: str | None, device, precision: str, **kw):
    """open_clip's model, eval transform and tokenizer of `name`; its failures are one-line `ModelLoadError`s."""
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


def load_open_clip_folder(name: str, device, precision: str) -> LoadedModel:
    """`local-dir:PATH` (an open_clip folder) or `hf-hub:ORG/NAME`, its weights checked finite."""
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / CONFIG_FILE).is_file():
            raise ModelLoadError(f"local-dir {folder} has no open_clip_config.json")
    model, preprocess, tokenizer = create_open_clip(name, None, device, precision, require_pretrained=True)
    check_finite(dict(model.named_parameters()), name)
    return LoadedModel(model.eval(), preprocess, tokenizer)


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
