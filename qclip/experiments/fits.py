"""Fit cells of an ablation grid: QAT variants trained inside `qclip ablate` from the cell's FP model with the
spectral-filtering regularizer at one strength λ, cached, and measured on the penalty's own target.

Training reuses `qclip fit`'s `QATCLIPModule` and `PairDataModule` under a small in-process Lightning Trainer
(no logger, checkpoints or validation): `steps` optimizer steps of `batch_size` pairs from the ID dataset's train
split, the quantizers initialised on `calib_batches` x 64 training images (the count a PTQ cell calibrates on),
seeded by the cell's seed (the global RNG states are restored afterwards). The trained model is cached under the
user cache (`fits/<key>.ckpt`, written atomically) by a key of the FP model's content hash, every training setting,
λ, the seed and the dataset, so a rerun, a resumed grid or another shard reuses it instead of training again.

`fit_summary` is the record's `fit` field: the settings, the penalty's target on the ID eval features (energy share
beyond rank k of the centred features, with a bootstrap interval over images), the penalised weights' tail energy
(with `spectral_on` weights/both; an interval over layers), and, for λ > 0, both paired against the λ = 0 fit of
the same seed, with its paired differences on every set (`compare_fit_to_base`).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qclip.io.models import LoadedModel, load_state_dict_into, read_state_dict
from qclip.io.paths import atomic_write_bytes, cache_dir
from qclip.io.store import config_hash

from .grid import Cell, FitEntry, GridConfig, fit_of

if TYPE_CHECKING:
    from qclip.evals.suite import ReliabilitySuite

__all__ = ["FIT_SCHEMA", "fit_key", "fit_path", "calib_pairs", "train_fit", "ensure_fit", "trained_model",
           "compare_fit_to_base", "feature_target", "weight_target", "fit_summary"]

FIT_SCHEMA = 1  # bump when training changes what a cached fit holds
_CALIB_BATCH = 64  # calibration batch size of a PTQ cell (`make_calibrator`)


def calib_pairs(cfg: GridConfig, entry: FitEntry) -> int:
    """Training images that initialise a fit's quantizers: as many as a PTQ cell of its spec calibrates on."""
    from qclip.quant.spec import parse_spec

    return (cfg.calib_batches or parse_spec(entry.spec).calib_batches) * _CALIB_BATCH


def fit_key(fp_key: str, cfg: GridConfig, entry: FitEntry, lam: float, seed: int) -> str:
    """Cache key of a trained fit: FP model content hash + training settings + λ + seed + training data."""
    return config_hash({"fp": fp_key, "fit": entry.settings(lam), "seed": seed, "dataset": cfg.dataset,
                        "split": "train", "calib_pairs": calib_pairs(cfg, entry), "schema": FIT_SCHEMA})


def fit_path(key: str) -> Path:
    """Where the trained fit of `key` is cached (`<user cache>/fits/<key>.ckpt`)."""
    return cache_dir("fits") / f"{key}.ckpt"


@contextmanager
def _quiet_lightning():
    """Silence Lightning's start-up banners and its warnings about this deliberate set-up (no validation, eval-mode
    teacher, few workers) for the duration of a fit."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for text in (r"Found \d+ module\(s\) in eval mode", ".*does not have many workers", ".*GPU available",
                         ".*TPU available", ".*LOCAL_RANK"):
                warnings.filterwarnings("ignore", message=text)
            yield
    finally:
        logger.setLevel(level)


def train_fit(cell: Cell, cfg: GridConfig, entry: FitEntry, lam: float, *, data_root: str | None,
              device: str = "cpu", num_workers: int = 0) -> dict:
    """Train one fit (λ = `lam`) from the cell's model; return its checkpoint dict (model tensors under `model.`,
    the module's hyper-parameters, and the penalty's target on the first training batch after training)."""
    import lightning as L

    from qclip.io.data import make_loader
    from qclip.train.checkpointing import capture_rng, restore_rng
    from qclip.train.data import PairDataModule
    from qclip.train.losses import feature_spectral_penalty
    from qclip.train.module import QATCLIPModule

    state, seed_env = capture_rng(), os.environ.get("PL_GLOBAL_SEED")
    try:
        with _quiet_lightning():
            L.seed_everything(cell.seed, verbose=False)
            dm = PairDataModule(dataset=cfg.dataset, data_root=data_root, batch_size=entry.batch_size,
                                num_workers=num_workers, train_limit=entry.steps * entry.batch_size, val_limit=1,
                                calib_pairs=calib_pairs(cfg, entry), seed=cell.seed)
            module = QATCLIPModule(model=cell.model, pretrained=cell.pretrained, quant=entry.spec,
                                   contrastive_weight=entry.contrastive_weight, distill_weight=entry.distill_weight,
                                   lr=entry.lr, scale_lr=entry.scale_lr, warmup_steps=entry.warmup_steps,
                                   spectral_lambda=float(lam), spectral_k=entry.spectral_k,
                                   spectral_on=entry.spectral_on)
            trainer = L.Trainer(max_steps=entry.steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                accelerator="gpu" if torch.device(device).type == "cuda" else "cpu", devices=1,
                                default_root_dir=str(cache_dir("fits")))
            trainer.fit(module, dm)
        model = module.model.eval()
        images = next(iter(make_loader(dm.train_spec, module.preprocess, batch_size=entry.batch_size,
                                       num_workers=0, limit=entry.batch_size)))[0]
        with torch.no_grad():
            target = float(feature_spectral_penalty(model.encode_image(images.to(module.device)), entry.spectral_k))
        logged = trainer.callback_metrics
    finally:  # the grid's own random streams go on as if no fit had run
        restore_rng(state)
        os.environ.pop("PL_GLOBAL_SEED", None)
        if seed_env is not None:
            os.environ["PL_GLOBAL_SEED"] = seed_env
    return {"state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
            "hyper_parameters": dict(module.hparams),
            "qclip_fit": {"steps": int(trainer.global_step), "train_batch_target": target,
                          "last_penalty": float(logged["train/spectral_penalty"]),
                          "last_loss": float(logged["train/loss"])}}


def ensure_fit(cell: Cell, cfg: GridConfig, fp_key: str, *, data_root: str | None, device: str = "cpu",
               num_workers: int = 0) -> Path:
    """The cached trained fit of `cell` (`fp_key`: its FP model's content hash), trained now if absent."""
    entry, lam = fit_of(cfg, cell)
    path = fit_path(fit_key(fp_key, cfg, entry, lam, cell.seed))
    if not path.is_file():
        buffer = io.BytesIO()
        torch.save(train_fit(cell, cfg, entry, lam, data_root=data_root, device=device, num_workers=num_workers),
                   buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


def trained_model(fp: LoadedModel, path: Path) -> LoadedModel:
    """A copy of the FP model holding a fit's trained float weights (its quantizers are loaded after quantizing)."""
    model = copy.deepcopy(fp.model)
    load_state_dict_into(model, read_state_dict(path), str(path))
    return fp._replace(model=model.eval())


def compare_fit_to_base(suite: ReliabilitySuite, base: LoadedModel, base_key: str, variant: LoadedModel,
                        key: str, *, n_boot: int, seed: int) -> dict:
    """Paired tests (fit − λ = 0 fit, same images) of acc1 (McNemar) / ECE (bootstrap) on every labelled set and
    AUROC (DeLong) on every OOD set, as `compare_to_fp` makes them: the one place the dose–response picks its
    tests."""
    from qclip.evals.paired import compare_to_fp

    return compare_to_fp(suite.paired_inputs(base, base_key), suite.paired_inputs(variant, key), n_boot=n_boot,
                         seed=seed)


def _tail(k):
    """Energy share beyond rank k of centred features [N, D] (float64), as the feature penalty computes it."""
    from qclip.spectral.penalties import feature_tail_energy, rank_spec

    def tail(feats: torch.Tensor) -> float:
        return float(feature_tail_energy(feats.double(), rank_spec(k)))

    return tail


def _weighted_tail(k):
    """The same share for bootstrap counts: `tail(w [R, N], xt [D, N]) -> [R]`, each row the share of the features
    drawn with multiplicities w (their weighted centred scatter matrix), so a paired bootstrap runs as one batch."""
    from qclip.spectral.penalties import rank_spec, resolve_rank

    def tail(w: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        w, x = w.double(), xt.double().T  # [R, N], [N, D]
        total = w.sum(1, keepdim=True)
        mean = (w @ x) / total  # [R, D]
        scatter = torch.einsum("rn,nd,ne->rde", w, x, x) - total[:, :, None] * mean[:, :, None] * mean[:, None, :]
        eig = torch.linalg.eigvalsh(scatter).clamp_min(0)  # ascending
        kk = resolve_rank(rank_spec(k), min(x.shape))
        return eig[:, : eig.shape[1] - kk].sum(1) / eig.sum(1).clamp_min(torch.finfo(torch.float64).tiny)

    return tail


def feature_target(feats: torch.Tensor, k, *, n_boot: int, seed: int, base: torch.Tensor | None = None,
                   test_boot: int | None = None) -> dict:
    """Energy share beyond rank k of the centred features [N, D] with a percentile bootstrap interval over images
    ({"value", "low", "high", "n"}; `n_boot` resamples), and with `base` (the λ = 0 fit's features of the same
    images) the paired bootstrap test of the difference ({"diff", "low", "high", "p", "se", ...}; p = (k + 1)/(B + 1)
    with B = `test_boot`, default `n_boot`). Each resample is an eigendecomposition, so B is kept to what the
    interval and the dose family need, not the ECE family's."""
    from qclip.evals.metrics import bootstrap_ci, paired_bootstrap

    tail = _tail(k)
    out: dict = {"value": tail(feats), "low": None, "high": None, "n": int(feats.shape[0])}
    if n_boot > 0:
        out["low"], out["high"] = bootstrap_ci(tail, feats, n_boot=n_boot, seed=seed)
        if base is not None:
            out["vs_base"] = paired_bootstrap(_weighted_tail(k), (feats.T,), (base.T,), n_boot=test_boot or n_boot,
                                              seed=seed)
    elif base is not None:
        out["vs_base"] = {"diff": out["value"] - tail(base), "low": None, "high": None, "p": None}
    return out


def _penalised_maps(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The latent float weights `QATCLIPModule` penalises: every quantized image-tower map but the patch
    embedding (the maps `prepare_qat_` reports, minus `patch_embed`)."""
    from qclip.quant.modules import is_quantized
    from qclip.quant.surgery import list_linear_maps

    return {m.name: model.get_submodule(m.name).weight for m in list_linear_maps(model)
            if m.tower == "vision" and m.role != "patch_embed" and is_quantized(model.get_submodule(m.name))}


def weight_target(model: torch.nn.Module, k, *, n_boot: int, seed: int) -> dict | None:
    """Mean normalized tail energy beyond rank k of the penalised float weights, with a percentile bootstrap
    interval over layers ({"value", "low", "high", "layers"}); None when the model has no such map."""
    from qclip.evals.metrics import bootstrap_ci
    from qclip.spectral.penalties import rank_spec, tail_energy

    maps = _penalised_maps(model)
    if not maps:
        return None
    with torch.no_grad():
        tails = torch.tensor([float(tail_energy(w.detach().double(), rank_spec(k))) for w in maps.values()],
                             dtype=torch.float64)
    out = {"value": float(tails.mean()), "low": None, "high": None, "layers": len(maps)}
    if n_boot > 0 and len(maps) > 1:
        out["low"], out["high"] = bootstrap_ci(lambda t: float(t.mean()), tails, n_boot=n_boot, seed=seed)
    return out


def dose_resamples(cfg: GridConfig) -> int:
    """Resamples of the feature-target tests: the grid's `bootstrap`, raised so the p floor 1/(B + 1) can resolve
    the family of the grid's λ > 0 fits (`min_resamples`), which no other test shares."""
    from qclip.evals.metrics import min_resamples

    doses = sum(lam > 0 for entry in cfg.fit for lam in entry.spectral_lambda) * len(cfg.seeds) * len(cfg.models)
    return max(cfg.bootstrap, min_resamples(doses)) if doses and cfg.bootstrap > 0 else cfg.bootstrap


def fit_summary(cfg: GridConfig, cell: Cell, path: Path, feats: torch.Tensor, variant: LoadedModel, *,
                base: tuple[LoadedModel, str, torch.Tensor] | None, suite: ReliabilitySuite, key: str,
                n_boot: int) -> dict:
    """The record's `fit` field: settings, the penalty's target (and Δ vs the λ = 0 fit), paired differences vs
    the λ = 0 fit on every set (`base` = (its model, its feature key, its ID features); None for λ = 0 itself)."""
    entry, lam = fit_of(cfg, cell)
    meta = torch.load(path, map_location="cpu", weights_only=True).get("qclip_fit") or {}
    out = {**entry.settings(lam), "seed": cell.seed, "baseline": entry.variant(0.0),
           "cache_key": path.stem, "train": meta,
           "feature_target": feature_target(feats, entry.spectral_k, n_boot=cfg.bootstrap, seed=cell.seed,
                                            base=None if base is None else base[2], test_boot=dose_resamples(cfg)),
           "weight_target": None, "vs_base": None}
    if entry.spectral_on in ("weights", "both"):
        out["weight_target"] = weight_target(variant.model, entry.spectral_k, n_boot=cfg.bootstrap, seed=cell.seed)
    if base is not None:
        out["vs_base"] = compare_fit_to_base(suite, base[0], base[1], variant, key, n_boot=n_boot, seed=cell.seed)
    return out
