"""`qclip spectrum`: weight and feature spectra of a model and its quantized (or truncated) variant, written as
tidy CSVs and PNG plots (and optionally logged to wandb).

Outputs in DIR: `weights_layers.csv` (one row per linear map: σ_max, stable/effective rank, entropy, power-law
alpha for FP and quantized — `*_alpha` is WeightWatcher 0.7.7's alpha on its eigenvalues (float64, convolution
slices pooled), `*_alpha_clauset2` a Clauset-style estimator with a two-sided KS xmin — and the error's
top-subspace share), `weights_sigma.csv` (per layer and index: σ_fp, σ_q,
σ_q/σ_fp), `features_sqnr.csv` (per rank: signal, error, SQNR), `features_bands.csv` (per model and band:
SQNR and accuracy), `summary.json`, and `sigma_spectra.png`, `sqnr_vs_rank.png`, `band_accuracy.png`.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qclip.evals.features import dataset_features
from qclip.evals.variants import check_specs_fit, quantize_loaded
from qclip.evals.zeroshot import model_fingerprint, zero_shot_classifier
from qclip.io.data import resolve_dataset
from qclip.io.errors import ConfigError
from qclip.io.models import LoadedModel, load_model
from qclip.io.paths import atomic_write_text, staged_output_dir
from qclip.io.results import write_csv
from qclip.io.validate import PRECISIONS, check_choice, check_float, check_int, check_spec, check_str
from qclip.spectral.features import band_accuracy, band_name, feature_basis, parse_bands

from .analysis import FpWeights, own_basis_accuracy, sqnr_profile, weight_spectra
from .plots import plot_band_accuracy, plot_sigma_spectra, plot_sqnr

__all__ = ["SpectrumConfig", "run_spectrum"]

log = logging.getLogger(__name__)


@dataclass
class SpectrumConfig:
    """What `qclip spectrum` analyses."""

    model: str
    pretrained: str | None = None
    quant: str | None = None
    features: str | None = None
    limit: int | None = 2000
    bands: str = "0-8,8-64,64-"
    truncate: str | None = None
    svd: str = "gram"  # σ and the ESDs from one float64 Gram decomposition (see FpWeights)
    top_fraction: float = 0.1
    precision: str = "fp32"
    frequency_images: int = 512
    perturbation_std: float = 0.1

    def __post_init__(self):
        check_str("model", self.model)
        for name in ("pretrained", "features"):
            check_str(name, getattr(self, name), optional=True)
        for name in ("quant", "truncate"):
            text = check_str(name, getattr(self, name), optional=True)
            if text is not None and check_spec(name, text).kind != "rank" and name == "truncate":
                raise ConfigError(f"truncate must be a rank-truncation spec (rank-k16, rank-e0.9, rank-f0.5), "
                                  f"got {text!r}")
        check_int("limit", self.limit, minimum=1, optional=True)
        try:
            parse_bands(self.bands)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        check_choice("svd", self.svd, ("svd", "gram"))
        check_float("top_fraction", self.top_fraction, low=0.0, high=1.0, low_open=True)
        check_choice("precision", self.precision, PRECISIONS)
        check_int("frequency_images", self.frequency_images, minimum=0)
        check_float("perturbation_std", self.perturbation_std, low=0.0, low_open=True)


def _write_csv(path: Path, rows: list[dict]) -> None:
    """Write `rows` as a CSV atomically (nothing when there are no rows)."""
    if rows:
        write_csv(path, rows)


def _features(loaded: LoadedModel, spec, limit, device, progress, use_cache, precision):
    key = model_fingerprint(loaded.model)
    return dataset_features(loaded.model, loaded.preprocess, spec, model_key=key, limit=limit, device=device,
                            progress=progress, use_cache=use_cache, autocast=precision.startswith("amp"))


def run_spectrum(cfg: SpectrumConfig, out_dir: str | os.PathLike, *, data_root: str | None = None,
                 device: str = "cpu", progress: bool = True, use_cache: bool = True, wandb_run=None) -> dict:
    """Run the weight (and, with `cfg.features`, feature) analyses; write CSVs, PNGs and summary.json."""
    out = Path(out_dir)
    bands = parse_bands(cfg.bands)
    spec = resolve_dataset(cfg.features, data_root, "test") if cfg.features else None
    calib_spec = spec or (resolve_dataset("wds/cifar10", data_root, "test") if cfg.quant else None)
    fp = load_model(cfg.model, cfg.pretrained, device=device, precision=cfg.precision)
    check_specs_fit(fp, cfg.quant, cfg.truncate)
    variants: dict[str, LoadedModel] = {"fp": fp}
    summary: dict = {"config": asdict(cfg), "outputs": []}
    if cfg.quant:
        variants["quantized"], summary["quant_report"] = quantize_loaded(fp, cfg.quant, calib_spec, device=device,
                                                                        data_root=data_root)
    if cfg.truncate:
        variants["truncated"], summary["truncate_report"] = quantize_loaded(fp, cfg.truncate, calib_spec,
                                                                           device=device, data_root=data_root)
    with staged_output_dir(out) as stage:  # every output moves into --out only once all analyses are done
        summary = _analyse(cfg, variants, spec, bands, summary, stage, device, progress, use_cache)
    if wandb_run is not None:
        _log_wandb(wandb_run, out, summary)
    return summary


def _analyse(cfg: SpectrumConfig, variants: dict[str, LoadedModel], spec, bands, summary: dict, out: Path, device,
             progress: bool, use_cache: bool) -> dict:
    """The weight, feature and frequency analyses of the loaded variants, written into `out`; the summary."""
    fp = variants["fp"]
    other = variants.get("quantized") or variants.get("truncated")
    layers, sigmas = weight_spectra(FpWeights(fp.model, method=cfg.svd),
                                    None if other is None else copy.deepcopy(other.model), top_fraction=cfg.top_fraction)
    _write_csv(out / "weights_layers.csv", layers)
    _write_csv(out / "weights_sigma.csv", sigmas)
    summary["layers"] = len(layers)
    groups: dict[str, list] = defaultdict(list)
    by_layer: dict[str, list] = defaultdict(list)
    for r in sigmas:
        by_layer[(r["tower"], r["role"], r["layer"])].append(r)
    for (tower, role, _), rows in by_layer.items():
        fp_s = [r["sigma_fp"] for r in rows]
        groups[f"{tower}/{role}"].append((fp_s, [r.get("sigma_q", math.nan) for r in rows] if other else fp_s))
    if other is not None:
        plot_sigma_spectra(dict(groups), out / "sigma_spectra.png", title=f"{cfg.model}: FP vs {cfg.quant or cfg.truncate}")
        summary["outputs"].append("sigma_spectra.png")
        changed = [r for r in layers if r["err_error_energy"] > 0]  # the maps in the spec's scope
        summary["changed_layers"] = len(changed)
        for key in ("mean_damping_top10pct", "mean_damping_bottom50pct", "err_top_share", "err_uniform_share"):
            summary[f"avg_{key}"] = sum(r[key] for r in changed) / max(1, len(changed))
    if spec is not None:
        summary.update(_feature_analysis(cfg, variants, spec, bands, out, device, progress, use_cache))
        if cfg.frequency_images > 0:
            summary.update(_frequency_analysis(cfg, variants, spec, out, device))
    summary["outputs"] += [p.name for p in sorted(out.glob("*.csv"))]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _feature_analysis(cfg, variants, spec, bands, out: Path, device, progress, use_cache) -> dict:
    fp = variants["fp"]
    clf = zero_shot_classifier(fp.model, fp.tokenizer, spec.classnames, spec.templates, device=device,
                               use_cache=use_cache).float().cpu()
    feats = {name: _features(v, spec, cfg.limit, device, progress, use_cache, cfg.precision)
             for name, v in variants.items()}
    f_fp, labels = feats["fp"]
    result: dict = {"feature_effective_rank": {}}
    band_rows, acc = [], {}
    for name, (f, y) in feats.items():
        vclf = clf
        if name != "fp":  # a quantized text tower has its own classifier
            v = variants[name]
            vclf = zero_shot_classifier(v.model, v.tokenizer, spec.classnames, spec.templates, device=device,
                                        use_cache=use_cache).float().cpu()
        acc[name], result["feature_effective_rank"][name] = own_basis_accuracy(f, y, vclf, bands)
    basis = feature_basis(f_fp)
    for k in sorted({b[1] for b in bands if b[1]}):  # truncation control: FP features, top-k components
        acc.setdefault("fp_top_k", {})
        acc["fp_top_k"][f"top{k}"] = band_accuracy(f_fp, labels, clf, basis, ((0, k),))[band_name((0, k))]
    if "quantized" in feats:
        prof = sqnr_profile(f_fp, feats["quantized"][0], bands)
        sq, rho = prof["sqnr_db"], prof["rho"]
        _write_csv(out / "features_sqnr.csv", [{"rank": i, "signal": float(prof["signal"][i]),
                                               "error": float(prof["error"][i]), "sqnr_db": float(sq[i])}
                                              for i in range(sq.numel())])
        result["sqnr_spearman_rho"] = rho
        result["band_sqnr_db"] = prof["band_sqnr_db"]
        plot_sqnr(sq.tolist(), out / "sqnr_vs_rank.png", title=f"{cfg.quant}: per-rank SQNR (Spearman ρ = {rho:.2f})",
                  bands=bands)
        for b, v in result["band_sqnr_db"].items():
            band_rows.append({"model": "quantized", "band": b, "metric": "sqnr_db", "value": v})
    for name, per_band in acc.items():
        for b, v in per_band.items():
            band_rows.append({"model": name, "band": b, "metric": "acc1", "value": v})
    _write_csv(out / "features_bands.csv", band_rows)
    plot_band_accuracy({k: {b: v for b, v in d.items() if b != "all"} for k, d in acc.items() if k != "fp_top_k"},
                       out / "band_accuracy.png", title=f"{spec.name}: accuracy by rank band")
    result["band_accuracy"] = acc
    return result


def _log_wandb(run, out: Path, summary: dict) -> None:
    """Log CSV tables, PNG plots and scalar summaries to a wandb run."""
    import wandb

    line_plots = {"features_sqnr": ("rank", "sqnr_db", "per-rank SQNR (dB)"),
                  "frequency_radial": ("frequency", "power_share", "feature-map FFT radial energy")}
    for path in sorted(out.glob("*.csv")):
        with open(path) as f:
            rows = list(csv.reader(f))
        if not rows or len(rows) > 200_001:
            continue
        table = wandb.Table(columns=rows[0], data=[[_num(v) for v in r] for r in rows[1:]])
        run.log({f"table/{path.stem}": table})
        if path.stem in line_plots:
            x, y, title = line_plots[path.stem]
            run.log({f"line/{path.stem}": wandb.plot.line(table, x, y, title=title)})
    for path in sorted(out.glob("*.png")):
        run.log({f"plot/{path.stem}": wandb.Image(str(path))})
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    run.summary.update(scalars)


def _feature_map_module(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    """The module whose output is the image tower's spatial feature map, and whether it returns ViT tokens."""
    visual = model.visual
    if hasattr(visual, "transformer"):
        return visual.transformer, True
    if hasattr(visual, "layer1"):  # ModifiedResNet: the last stage that keeps >= 8x8 at 32 px
        return visual.layer1, False
    raise ValueError(f"no spatial feature map known for {type(visual).__name__}")


@torch.no_grad()
def _frequency_analysis(cfg, variants, spec, out: Path, device) -> dict:
    """Radial FFT energy of feature maps (FP vs others) and accuracy under low/mid/high-frequency noise."""
    from itertools import islice

    from qclip.evals.features import split_normalize
    from qclip.io.data import make_loader
    from qclip.spectral.frequency import (
        BANDS,
        band_energy_fractions,
        perturb_band,
        radial_energy,
        radial_frequencies,
        tokens_to_grid,
    )

    from .plots import plot_radial_profiles

    fp = variants["fp"]
    to_tensor, norm = split_normalize(fp.preprocess)
    loader = make_loader(spec, to_tensor, batch_size=128, num_workers=0, limit=cfg.frequency_images)
    batches = list(islice(loader, None))
    images = torch.cat([b[0] for b in batches]).to(device)
    labels = torch.cat([b[1] for b in batches])
    mean = torch.tensor(norm.mean, device=device).view(1, -1, 1, 1) if norm else 0.0
    std = torch.tensor(norm.std, device=device).view(1, -1, 1, 1) if norm else 1.0
    profiles, fractions, rows, freq = {}, {}, [], None
    gen = torch.Generator().manual_seed(0)
    noise = {band: perturb_band(images.cpu(), band, std=cfg.perturbation_std, generator=gen).to(device)
             for band in BANDS}
    for name, v in variants.items():
        module, tokens = _feature_map_module(v.model)
        captured = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
        try:
            v.model.encode_image((images - mean) / std)
        finally:
            handle.remove()
        maps = captured[0].float()
        maps = tokens_to_grid(maps if maps.shape[0] == images.shape[0] else maps.transpose(0, 1)) if tokens else maps
        prof = radial_energy(maps, normalize=True)
        profiles[name] = prof.tolist()
        freq = radial_frequencies(maps.shape[-2], maps.shape[-1], prof.numel()).tolist()
        fractions[name] = band_energy_fractions(maps)
        clf = zero_shot_classifier(v.model, v.tokenizer, spec.classnames, spec.templates, device=device).float()

        def acc(x: torch.Tensor) -> float:
            f = F.normalize(v.model.encode_image((x - mean) / std).float(), dim=-1)
            return float(((f @ clf.to(f.device)).argmax(-1).cpu() == labels).float().mean())

        clean = acc(images)
        for band, x in noise.items():
            a = acc(x)
            rows.append({"model": name, "band": band, "noise_std": cfg.perturbation_std, "acc_clean": clean,
                         "acc_perturbed": a, "drop": clean - a})
        for i, (r, p) in enumerate(zip(freq, prof.tolist())):
            rows_r = {"model": name, "ring": i, "frequency": r, "power_share": p}
            fractions.setdefault("_rows", []).append(rows_r)
    radial_rows = fractions.pop("_rows")
    _write_csv(out / "frequency_radial.csv", radial_rows)
    _write_csv(out / "frequency_perturbation.csv", rows)
    plot_radial_profiles(profiles, freq, out / "fft_radial.png", title=f"{spec.name}: feature-map FFT energy")
    return {"frequency_band_fractions": fractions,
            "frequency_perturbation_drop": {f"{r['model']}/{r['band']}": r["drop"] for r in rows}}


def _num(value: str):
    """CSV cell back to a number when it is one (wandb tables plot numbers, not strings)."""
    try:
        return float(value)
    except ValueError:
        return value
