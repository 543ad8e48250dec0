"""Evaluation metrics: calibration and temperature tuning, OOD detection (ID positive), quantization robustness
deltas, bootstrap CIs. Pure functions of tensors; nothing here loads models or writes files."""

from .bootstrap import bootstrap_ci, bootstrap_ci_two_sample
from .calibration import (adaptive_ece, brier, ece, ece_floor, ece_from_bins, mce, nll, reliability_bins,
                          softmax_probs)
from .ood import (SCORE_INPUTS, SCORES, aupr, auroc, energy_score, fpr_at_95_tpr, max_logit_score, mcm_score,
                  msp_score, neg_entropy_score, ood_metrics)
from .robustness import delta_rsg, relative_change, relative_changes, rsg, vuln_add
from .temperature import fit_logit_scale, nll_at

__all__ = [
    # calibration
    "softmax_probs", "ece", "ece_floor", "adaptive_ece", "mce", "nll", "brier", "reliability_bins", "ece_from_bins",
    # OOD detection
    "mcm_score", "max_logit_score", "energy_score", "neg_entropy_score", "msp_score", "SCORES", "SCORE_INPUTS",
    "auroc", "aupr", "fpr_at_95_tpr", "ood_metrics",
    # robustness
    "relative_change", "rsg", "delta_rsg", "vuln_add", "relative_changes",
    # temperature (logit-scale) tuning
    "fit_logit_scale", "nll_at",
    # bootstrap
    "bootstrap_ci", "bootstrap_ci_two_sample",
]
