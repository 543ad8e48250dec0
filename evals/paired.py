"""Paired differences of a model variant against its full-precision reference on the same images: for every
labelled set of a suite (ID, each corruption, each shift set) Δacc1 and ΔECE, and for every OOD set ΔAUROC (MCM),
each as {diff, low, high, p} from one paired bootstrap (the same resampled indices for both models), with
diff = variant − FP. The report judges the paper's claims from these. Writes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from qclip.io.models import LoadedModel

from .metrics import auroc, ece_of_confidence, mcm_score, paired_bootstrap, top_label

if TYPE_CHECKING:
    from .suite import ReliabilitySuite

__all__ = ["paired_differences", "mcm_id_ood_scores"]


def _acc(correct: torch.Tensor) -> float:
    return float(correct.double().mean())


def _labelled(fp_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor, n_boot: int,
              seed: int) -> dict:
    """Δacc1 and ΔECE (variant − FP) on one labelled set, resampling top-label confidence and correctness."""
    (c_fp, r_fp), (c_q, r_q) = (top_label(lg.double().softmax(-1), labels) for lg in (fp_logits, q_logits))
    return {"n": int(labels.numel()),
            "acc1": paired_bootstrap(_acc, (r_q,), (r_fp,), n_boot=n_boot, seed=seed),
            "ece": paired_bootstrap(ece_of_confidence, (c_q, r_q), (c_fp, r_fp), n_boot=n_boot, seed=seed)}


def _auroc_of(scores: torch.Tensor, is_id: torch.Tensor) -> float:
    return auroc(scores[is_id > 0], scores[is_id == 0])


@torch.no_grad()
def paired_differences(suite: ReliabilitySuite, fp: LoadedModel, fp_key: str, variant: LoadedModel,
                       key: str) -> dict:
    """{"id": {...}, "corruptions": {NAME: {...}}, "shift": {NAME: {...}}, "ood": {NAME: {"n", "auroc"}}} for
    `variant` against `fp` (both evaluated by `suite`, so their features are memoised); {} with bootstrap off."""
    n_boot, seed = suite.cfg.bootstrap, suite.cfg.seed
    if n_boot < 1:
        return {}
    a, b = suite.set_logits(fp, fp_key), suite.set_logits(variant, key)
    out: dict = {"id": _labelled(a["id"][0], b["id"][0], a["id"][1], n_boot, seed), "corruptions": {}, "shift": {}}
    for role in ("corruptions", "shift"):
        for name, (lg_fp, labels) in a[role].items():
            out[role][name] = _labelled(lg_fp, b[role][name][0], labels, n_boot, seed)
    out["ood"] = {}
    for name, spec in suite.ood_specs.items():
        s_fp, is_id = mcm_id_ood_scores(suite, fp, fp_key, a, spec)
        s_q, _ = mcm_id_ood_scores(suite, variant, key, b, spec)
        out["ood"][name] = {"n": int(s_fp.numel()),
                            "auroc": paired_bootstrap(_auroc_of, (s_q, is_id), (s_fp, is_id), n_boot=n_boot, seed=seed)}
    return out


def mcm_id_ood_scores(suite: ReliabilitySuite, loaded: LoadedModel, key: str, sets: dict,
                      spec) -> tuple[torch.Tensor, torch.Tensor]:
    """MCM scores of the ID set followed by the OOD set `spec`, and the matching ID indicator (1 = ID), from a
    model's `suite.set_logits` output and its memoised OOD features."""
    f_ood, _ = suite.features(loaded, key, spec, suite.cfg.ood_limit)
    id_scores, ood_scores = mcm_score(sets["id_cos"]), mcm_score(sets["cosines"](f_ood))
    is_id = torch.cat([torch.ones(id_scores.numel()), torch.zeros(ood_scores.numel())])
    return torch.cat([id_scores, ood_scores]), is_id
