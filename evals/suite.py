"""The one-pass reliability suite: one feature extraction per (model, quant, dataset, corruption) feeds every
metric — accuracy, calibration (ECE, adaptive ECE, MCE, NLL, Brier, ECE after logit-scale tuning), OOD
detection (MCM, max-logit, energy, entropy → AUROC, AUPR, FPR95), corruption and shift accuracy, spurious gaps —
plus bootstrap intervals and the relative change δ against the full-precision model.

Conventions: calibration uses logits = logit_scale.exp() · cos; MCM uses softmax(cos / T) with T = 1; OOD
metrics take ID as the positive class and FPR95 is the share of OOD samples accepted at 95% ID recall.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from qclip.io.data import DatasetSpec, resolve_dataset
from qclip.io.errors import ConfigError, DataError
from qclip.io.models import LoadedModel, load_model
from qclip.io.records import Metrics, SuiteRecord
from qclip.io.store import config_hash
from qclip.io.validate import PRECISIONS, check_choice, check_int, check_seed, check_str, check_str_list

from .features import DecodedImages, dataset_features
from .metrics import (
    SCORE_INPUTS,
    SCORES,
    adaptive_ece,
    auroc,
    bootstrap_ci,
    bootstrap_ci_two_sample,
    brier,
    debiased_ece,
    delta_rsg,
    ece,
    ece_floor,
    mce,
    mcm_score,
    nll,
    ood_metrics,
    relative_changes,
    reliability_bins,
    rsg,
    selective_metrics,
    split_conformal,
    vuln_add,
)
from .paired import PairedInputs, compare_to_fp, family_resamples, labelled_set_count
from .variants import check_specs_fit, compile_image_tower_, quantize_loaded
from .zeroshot import model_fingerprint, topk_accuracy, zero_shot_classifier

__all__ = ["SuiteConfig", "ReliabilitySuite", "calibration_metrics", "ece_after_tuning", "map_classes",
           "numeric_metrics", "spurious_changes_"]


@dataclass
class SuiteConfig:
    """Everything that determines a suite result (its hash keys the results store)."""

    model: str
    dataset: str
    pretrained: str | None = None
    quant: str | None = None
    split: str = "test"
    ood: list[str] = field(default_factory=list)
    corruptions: list[tuple[str, int]] = field(default_factory=list)
    shift: list[str] = field(default_factory=list)
    spurious: tuple[str, str] | None = None
    limit: int | None = None
    ood_limit: int | None = None
    seed: int = 0
    bootstrap: int = 200
    calib_batches: int | None = None
    precision: str = "fp32"

    def __post_init__(self):
        check_str("model", self.model)
        check_str("dataset", self.dataset)
        check_str("pretrained", self.pretrained, optional=True)
        check_str("quant", self.quant, optional=True)
        check_str("split", self.split)
        self.ood, self.shift = check_str_list("ood", self.ood), check_str_list("shift", self.shift)
        if isinstance(self.corruptions, str) or not all(
                isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], str) for c in self.corruptions):
            raise ConfigError(f"corruptions must be (name, severity) pairs, got {self.corruptions!r}")
        for name, severity in self.corruptions:
            check_int(f"severity of {name}", severity, minimum=1)
        if self.spurious is not None and len(check_str_list("spurious", self.spurious)) != 2:
            raise ConfigError(f"spurious needs two datasets (common, counter), got {self.spurious!r}")
        check_int("limit", self.limit, minimum=1, optional=True)
        check_int("ood_limit", self.ood_limit, minimum=1, optional=True)
        check_seed("seed", self.seed)
        check_int("bootstrap", self.bootstrap, minimum=0)
        check_int("calib_batches", self.calib_batches, minimum=1, optional=True)
        check_choice("precision", self.precision, PRECISIONS)

    def key(self) -> dict:
        """The hashed part (runtime settings such as device or workers excluded)."""
        d = asdict(self)
        d["corruptions"] = [f"{n}:{s}" for n, s in self.corruptions]
        return d

    @property
    def hash(self) -> str:
        """Config hash for the results store."""
        return config_hash(self.key())


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """acc1, acc5, ECE (15 equal-width bins), adaptive ECE, MCE, NLL and Brier of calibration-convention logits."""
    probs = logits.float().softmax(-1)
    acc = topk_accuracy(logits, labels, (1, 5))
    return {"acc1": acc[1], "acc5": acc[5], "ece": ece(probs, labels), "ece_adaptive": adaptive_ece(probs, labels),
            "mce": mce(probs, labels), "nll": nll(logits, labels), "brier": brier(probs, labels)}


def uncertainty_metrics(probs: torch.Tensor, labels: torch.Tensor, seed: int = 0, alpha: float = 0.1) -> dict:
    """Debiased calibration error, selective prediction (AURC, AUGRC, accuracy at 80/90% coverage) and
    split-conformal sets (THR and APS at 1 − `alpha`, calibrated on a seeded half) of one set's probabilities."""
    out: dict = {"confidence": float(probs.amax(-1).double().mean())}
    if labels.numel() >= 30:  # 15 equal-mass bins of at least 2 samples
        out["ece_debiased"] = debiased_ece(probs, labels)
    out["selective"] = selective_metrics(probs, labels)
    if labels.numel() >= 4:
        out["conformal"] = {}
        for method in ("thr", "aps"):
            r = split_conformal(probs, labels, alpha=alpha, method=method, seed=seed)
            out["conformal"][method] = {"coverage": r["coverage"], "set_size": r["set_size"]}
        out["conformal_alpha"] = alpha
    return out


def set_metrics(logits: torch.Tensor, labels: torch.Tensor, seed: int, keys: tuple[str, ...]) -> dict:
    """The calibration metrics `keys` of one corrupted or shifted set, with its ECE floor and mean confidence (the
    report tests calibration claims only where FP's ECE clearly exceeds the floor, and reads over/under-confidence
    from confidence − acc1)."""
    cm = calibration_metrics(logits, labels)
    probs = logits.float().softmax(-1)
    floor, floor_sd = ece_floor(probs, seed=seed)
    return {**{k: cm[k] for k in keys}, "ece_floor": floor, "ece_floor_sd": floor_sd,
            "confidence": float(probs.amax(-1).double().mean())}


def ece_after_tuning(cos: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    """Fit the logit scale by NLL on one half of a seeded split, report ECE on the other half."""
    from .metrics.temperature import fit_logit_scale

    n = labels.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit, held = perm[: n // 2], perm[n // 2:]
    log_scale = fit_logit_scale(cos[fit], labels[fit])
    probs = (math.exp(log_scale) * cos[held]).softmax(-1)
    return {"ece_ts": ece(probs, labels[held]), "logit_scale_ts": math.exp(log_scale)}


def map_classes(source: tuple[str, ...], target: tuple[str, ...]) -> torch.Tensor:
    """Index in `target` of each `source` class name (case-insensitive exact match), −1 when absent."""
    index = {name.strip().lower(): i for i, name in enumerate(target)}
    return torch.tensor([index.get(name.strip().lower(), -1) for name in source])


class ReliabilitySuite:
    """Evaluates a model (and its quantized variant) on an ID set and the configured OOD/shift/corruption sets."""

    def __init__(self, cfg: SuiteConfig, *, data_root: str | None = None, device: str = "cpu", batch_size: int = 256,
                 num_workers: int = 2, progress: bool = True, use_cache: bool = True, image_cache_mb: float = 0.0,
                 compile: bool = False):
        self.cfg, self.data_root, self.device, self.compile = cfg, data_root, device, compile
        self.batch_size, self.num_workers, self.progress, self.use_cache = batch_size, num_workers, progress, use_cache
        self._memo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # decoded images kept across model variants (a grid's cells); off for a single evaluation
        self._decoded = DecodedImages(image_cache_mb) if image_cache_mb > 0 else None
        self.id_spec = resolve_dataset(cfg.dataset, data_root, cfg.split)
        self.ood_specs = {name: resolve_dataset(name, data_root, "test") for name in cfg.ood}
        self.shift_specs = {name: resolve_dataset(name, data_root, "test") for name in cfg.shift}
        self.spurious_specs = ({name: resolve_dataset(name, data_root, "test") for name in cfg.spurious}
                               if cfg.spurious else {})
        for name, spec in self.shift_specs.items():
            if (map_classes(spec.classnames, self.id_spec.classnames) < 0).all():
                raise DataError(f"shift dataset {name} shares no class name with {cfg.dataset}")

    # ------------------------------------------------------------------------------------------ model variants
    def load(self) -> LoadedModel:
        """The full-precision model (its image tower compiled with `compile`, unless a quantized copy is still to be
        made from the eager model: `quantized` compiles both then), refused at once when the config's spec does not
        fit it."""
        fp = load_model(self.cfg.model, self.cfg.pretrained, device=self.device, precision=self.cfg.precision)
        check_specs_fit(fp, self.cfg.quant)
        return compile_image_tower_(fp) if self.compile and not self.cfg.quant else fp

    def quantized(self, fp: LoadedModel) -> tuple[LoadedModel, dict]:
        """A quantized (or truncated) deep copy of `fp` per `cfg.quant`, with its coverage report."""
        ckpt = self.cfg.model if self.cfg.model.endswith(".ckpt") else self.cfg.pretrained
        ckpt = ckpt if ckpt and ckpt.endswith(".ckpt") else None
        q, report = quantize_loaded(fp, self.cfg.quant, self.id_spec, device=self.device, data_root=self.data_root,
                                    calib_batches=self.cfg.calib_batches, qat_checkpoint=ckpt)
        if self.compile:
            compile_image_tower_(fp)
            compile_image_tower_(q)
        return q, report

    # ----------------------------------------------------------------------------------------------- metrics
    def features(self, loaded: LoadedModel, key: str, spec: DatasetSpec, limit, corruption=None):
        """Features of one (model, dataset, corruption): extracted once per run (memo), cached on disk."""
        memo_key = (key, spec.name, spec.split, limit, corruption)
        if memo_key not in self._memo:
            self._memo[memo_key] = dataset_features(
                loaded.model, loaded.preprocess, spec, model_key=key, corruption=corruption, limit=limit,
                batch_size=self.batch_size, num_workers=self.num_workers, device=self.device, progress=self.progress,
                use_cache=self.use_cache, seed=self.cfg.seed, autocast=self.cfg.precision.startswith("amp"),
                decoded=self._decoded)
        return self._memo[memo_key]

    def id_features(self, loaded: LoadedModel, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ID features and labels of a model variant (shared with `evaluate` through the run's memo)."""
        return self.features(loaded, key or model_fingerprint(loaded.model), self.id_spec, self.cfg.limit)

    def memoised(self, key: str) -> dict[tuple, tuple[torch.Tensor, torch.Tensor]]:
        """The memoised features of the model fingerprinted `key` (by memo key), e.g. to hand to another process."""
        return {k: v for k, v in self._memo.items() if k[0] == key}

    def remember(self, entries: dict[tuple, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add features extracted elsewhere (`memoised` of a suite with the same config) to this run's memo."""
        self._memo.update(entries)

    def release(self, *keep_keys: str | None) -> None:
        """Drop memoised features of every model but those fingerprinted `keep_keys` (e.g. the FP reference)."""
        self._memo = {k: v for k, v in self._memo.items() if k[0] in keep_keys}

    @torch.no_grad()
    def set_logits(self, loaded: LoadedModel, key: str | None = None) -> dict:
        """Calibration logits and labels of a model variant on every labelled set of the suite: {"id": (logits,
        labels), "corruptions": {"NAME:SEV": ...}, "shift": {NAME: ...}} (shift labels mapped onto the ID classes,
        unmapped samples dropped), plus the logit scale, the ID classifier, the ID cosines ("id_cos") and
        `cosines(feats)` for other sets (OOD); features come from the memo."""
        cfg, model = self.cfg, loaded.model.eval()
        key = key or model_fingerprint(model)
        scale = float(model.logit_scale.detach().float().exp())
        clf = zero_shot_classifier(model, loaded.tokenizer, self.id_spec.classnames, self.id_spec.templates,
                                   device=self.device, use_cache=self.use_cache).float().cpu()

        def cosines(feats: torch.Tensor) -> torch.Tensor:
            return F.normalize(feats.float(), dim=-1) @ clf

        def logits_of(feats: torch.Tensor) -> torch.Tensor:
            return scale * cosines(feats)

        feats, labels = self.features(loaded, key, self.id_spec, cfg.limit)
        cos = cosines(feats)
        out: dict = {"scale": scale, "classifier": clf, "cosines": cosines, "id_cos": cos, "id": (scale * cos, labels),
                     "corruptions": {}, "shift": {}}
        for name, severity in cfg.corruptions:
            f_c, y_c = self.features(loaded, key, self.id_spec, cfg.limit, corruption=(name, severity))
            out["corruptions"][f"{name}:{severity}"] = (logits_of(f_c), y_c)
        for name, spec in self.shift_specs.items():
            f_s, y_s = self.features(loaded, key, spec, cfg.ood_limit)
            mapped = map_classes(spec.classnames, self.id_spec.classnames)[y_s]
            keep = mapped >= 0
            out["shift"][name] = (logits_of(f_s[keep]), mapped[keep])
        return out

    @torch.no_grad()
    def paired_inputs(self, loaded: LoadedModel, key: str | None = None) -> PairedInputs:
        """A model variant's calibration logits and labels on every labelled set and its MCM scores (ID followed by
        OOD, with the ID indicator) on every OOD set: what `compare_to_fp` pairs; features come from the memo."""
        key = key or model_fingerprint(loaded.model)
        sets = self.set_logits(loaded, key)
        id_scores = mcm_score(sets["id_cos"])
        ood = {}
        for name, spec in self.ood_specs.items():
            f_ood, _ = self.features(loaded, key, spec, self.cfg.ood_limit)
            ood_scores = mcm_score(sets["cosines"](f_ood))
            is_id = torch.cat([torch.ones(id_scores.numel()), torch.zeros(ood_scores.numel())])
            ood[name] = (torch.cat([id_scores, ood_scores]), is_id)
        return {"id": sets["id"], "corruptions": sets["corruptions"], "shift": sets["shift"], "ood": ood}

    @torch.no_grad()
    def evaluate(self, loaded: LoadedModel, key: str | None = None) -> Metrics:
        """All metrics of one model variant (`key`: its `model_fingerprint`, computed when not given)."""
        cfg, model = self.cfg, loaded.model.eval()
        key = key or model_fingerprint(model)
        sets = self.set_logits(loaded, key)
        scale, cosines, cos = sets["scale"], sets["cosines"], sets["id_cos"]
        logits, labels = sets["id"]
        m: Metrics = calibration_metrics(logits, labels)  # type: ignore[assignment]
        m["n"] = int(labels.numel())
        m["logit_scale"] = scale
        m.update(ece_after_tuning(cos, labels, cfg.seed))
        probs = logits.softmax(-1)
        m["ece_floor"], m["ece_floor_sd"] = ece_floor(probs, seed=cfg.seed)
        m["reliability"] = reliability_bins(probs, labels)
        m.update(uncertainty_metrics(probs, labels, cfg.seed))
        boot = dict(n_boot=cfg.bootstrap, seed=cfg.seed)
        ci: dict = {}
        if cfg.bootstrap > 0:
            ci["acc1"] = bootstrap_ci(lambda lg, y: topk_accuracy(lg, y, (1,))[1], logits, labels, **boot)
            ci["ece"] = bootstrap_ci(lambda lg, y: ece(lg.softmax(-1), y), logits, labels, **boot)
            ci["auroc_mcm"] = {}

        def scores(c: torch.Tensor) -> dict[str, torch.Tensor]:
            return {s: fn(c if SCORE_INPUTS[s] == "cos" else scale * c) for s, fn in SCORES.items()}

        id_scores = scores(cos)
        m["ood"] = {}
        for name, spec in self.ood_specs.items():
            f_ood, _ = self.features(loaded, key, spec, cfg.ood_limit)
            ood_scores = scores(cosines(f_ood))
            m["ood"][name] = {s: ood_metrics(id_scores[s], ood_scores[s]) for s in SCORES}
            if cfg.bootstrap > 0:
                ci["auroc_mcm"][name] = bootstrap_ci_two_sample(auroc, id_scores["mcm"], ood_scores["mcm"], **boot)
        m["corruptions"] = {name: set_metrics(lg, y, cfg.seed, ("acc1", "ece", "nll", "brier"))
                            for name, (lg, y) in sets["corruptions"].items()}
        m["shift"] = {name: {**set_metrics(lg, y, cfg.seed, ("acc1", "ece")), "n": int(y.numel())}
                      for name, (lg, y) in sets["shift"].items()}
        if self.spurious_specs:
            accs = []
            for name, spec in self.spurious_specs.items():
                own = zero_shot_classifier(model, loaded.tokenizer, spec.classnames, spec.templates,
                                           device=self.device, use_cache=self.use_cache).float().cpu()
                f_sp, y_sp = self.features(loaded, key, spec, cfg.ood_limit)
                accs.append(topk_accuracy(F.normalize(f_sp, dim=-1) @ own, y_sp, (1,))[1])
            m["spurious"] = {"acc_common": accs[0], "acc_counter": accs[1], "rsg": rsg(accs[0], accs[1])}
        m["ci"] = ci
        return m

    def run(self) -> SuiteRecord:
        """Evaluate the configured model (and, with a quant spec, its FP reference); return the record."""
        t0 = time.perf_counter()
        fp = self.load()
        record: SuiteRecord = {"hash": self.cfg.hash, "config": self.cfg.key(), "model": self.cfg.model,
                  "pretrained": self.cfg.pretrained, "quant": self.cfg.quant, "dataset": self.cfg.dataset}
        if self.cfg.quant:
            q, record["quant_report"] = self.quantized(fp)
            fp_key, q_key = model_fingerprint(fp.model), model_fingerprint(q.model)
            fp_metrics = self.evaluate(fp, fp_key)
            metrics = self.evaluate(q, q_key)
            metrics["delta"] = relative_changes(numeric_metrics(fp_metrics), numeric_metrics(metrics))
            spurious_changes_(fp_metrics, metrics)
            record["fp_metrics"] = fp_metrics
            fp_in, q_in = self.paired_inputs(fp, fp_key), self.paired_inputs(q, q_key)
            n_boot = family_resamples(self.cfg.bootstrap, labelled_set_count(fp_in))  # this record's ECE family
            record["paired"] = compare_to_fp(fp_in, q_in, n_boot=n_boot, seed=self.cfg.seed)
        else:
            metrics = self.evaluate(fp)
        record["n"] = metrics.pop("n")
        record["metrics"] = metrics
        record["seconds"] = round(time.perf_counter() - t0, 2)
        return record


def spurious_changes_(fp_metrics: dict, metrics: dict) -> None:
    """Add ΔRSG and Vuln_add (against the FP reference) to `metrics["spurious"]` when both have spurious results."""
    if "spurious" in metrics and "spurious" in fp_metrics:
        f, q = fp_metrics["spurious"], metrics["spurious"]
        q["delta_rsg"] = delta_rsg(f["acc_common"], f["acc_counter"], q["acc_common"], q["acc_counter"])
        q["vuln_add"] = vuln_add(f["acc_common"], f["acc_counter"], q["acc_common"], q["acc_counter"])


def numeric_metrics(metrics: dict) -> dict:
    """The metric tree without diagnostics that have no meaningful relative change."""
    skip = ("reliability", "ci", "n", "logit_scale", "logit_scale_ts", "ece_floor", "ece_floor_sd", "conformal_alpha")
    return {k: v for k, v in metrics.items() if k not in skip}
