"""Evaluation metrics: calibration, OOD detection (ID positive), quantization robustness deltas, bootstrap CIs."""

from .bootstrap import bootstrap_ci, bootstrap_ci_two_sample
from .calibration import (adaptive_ece, brier, ece, ece_floor, mce, nll, plot_reliability, reliability_bins,
                          softmax_probs)
from .ood import (SCORE_INPUTS, SCORES, aupr, auroc, energy_score, fpr_at_95_tpr, max_logit_score, mcm_score,
                  msp_score, neg_entropy_score, ood_metrics)
from .robustness import delta_rsg, relative_change, relative_changes, rsg, vuln_add

__all__ = [
    # calibration
    "softmax_probs", "ece", "ece_floor", "adaptive_ece", "mce", "nll", "brier", "reliability_bins", "plot_reliability",
    # OOD detection
    "mcm_score", "max_logit_score", "energy_score", "neg_entropy_score", "msp_score", "SCORES", "SCORE_INPUTS",
    "auroc", "aupr", "fpr_at_95_tpr", "ood_metrics",
    # robustness
    "relative_change", "rsg", "delta_rsg", "vuln_add", "relative_changes",
    # bootstrap
    "bootstrap_ci", "bootstrap_ci_two_sample",
]
