"""Load open_clip models from every source a user has: name + tag, checkpoint files, `local-dir:`, `hf-hub:`, demo,
export folders (read by `qclip.io.export_dir`), one resolver per source kind.

Only safe formats are read: safetensors, or `torch.load(weights_only=True)`. Anything unusable raises
`ModelLoadError` with a one-line reason (the CLI turns it into exit status 2).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import open_clip
import torch

from .checkpoints import (
    CHECKPOINT_SUFFIXES,
    LoadedModel,
    check_file,
    check_finite,
    create_open_clip,
    load_error_reason,
    load_open_clip_folder,
    load_state_dict_into,
    read_checkpoint,
    read_state_dict,
    save_open_clip_dir,
)
from .demo import (
    CONFIG_FILE,
    DEMO_MODEL_NAME,
    demo_dir,
    is_trained,
    register_model_configs,
)
from .errors import ModelLoadError
from .export_dir import FLOAT_DIR, export_dir_of, load_export_dir

__all__ = ["LoadedModel", "load_model", "source_kind", "read_state_dict", "load_state_dict_into", "save_open_clip_dir",
           "model_config", "check_finite", "load_error_reason", "CHECKPOINT_SUFFIXES"]

log = logging.getLogger(__name__)


def _is_path_like(value: str) -> bool:
    return value.endswith(CHECKPOINT_SUFFIXES) or os.sep in value or os.path.exists(value)


def _checkpoint_arch(path: Path) -> str:
    """Architecture name of a self-describing checkpoint: a sibling config, or a Lightning ckpt's hparams."""
    if (path.parent / "open_clip_config.json").is_file():
        return f"local-dir:{path.parent}"
    if path.suffix == ".ckpt":
        hp = read_checkpoint(path).get("hyper_parameters")
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
    return load_open_clip_folder(name, device, precision)


def _load_checkpoint(name: str, pretrained: str | None, device, precision: str) -> LoadedModel:
    """A self-describing checkpoint file: a sibling `open_clip_config.json` (only that config is read beside it), or
    a Lightning `.ckpt` whose hyper-parameters name the architecture."""
    path = Path(name)
    check_file(path)
    arch = _checkpoint_arch(path)
    if not arch.startswith("local-dir:"):
        return _load_open_clip(arch, None, device, precision, weights=path)
    model, preprocess, tokenizer = create_open_clip(arch, None, device, precision, load_weights=False)
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
            model, preprocess, tokenizer = create_open_clip(arch, pretrained, device, precision, require_pretrained=True)
            check_finite(dict(model.named_parameters()), f"{arch} (pretrained={pretrained})")
            return LoadedModel(model.eval(), preprocess, tokenizer)
        if not _is_path_like(pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise ModelLoadError(f"unknown pretrained tag '{pretrained}' for {arch} (known tags: {tags})")
        weights = Path(pretrained)
        check_file(weights)
    model, preprocess, tokenizer = create_open_clip(arch, None, device, precision)
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
