"""Evaluation metrics: calibration and temperature tuning, OOD detection (ID positive), quantization robustness
deltas, selective prediction, split-conformal prediction sets, bootstrap CIs. Pure functions of tensors; nothing here
loads models or writes files."""

from .bootstrap import (
                          RESAMPLE_MARGIN,
                          bootstrap_ci,
                          bootstrap_ci_two_sample,
                          min_resamples,
                          paired_bootstrap,
                          paired_bootstrap_diff,
                          paired_bootstrap_many,
                          resample_counts,
)
from .calibration import (
                          adaptive_ece,
                          brier,
                          debiased_ece,
                          ece,
                          ece_floor,
                          ece_from_bins,
                          ece_gaps,
                          ece_of_confidence,
                          ece_of_gaps,
                          ece_weighted,
                          mce,
                          nll,
                          reliability_bins,
                          softmax_probs,
                          top_label,
)
from .conformal import (
                          CONFORMAL_METHODS,
                          conformal_scores,
                          conformal_threshold,
                          coverage,
                          mean_set_size,
                          prediction_sets,
                          split_conformal,
)
from .delong import delong, delong_components, midranks
from .mcnemar import mcnemar, sign_test
from .ood import (
                          SCORE_INPUTS,
                          SCORES,
                          aupr,
                          auroc,
                          energy_score,
                          fpr_at_95_tpr,
                          max_logit_score,
                          mcm_score,
                          msp_score,
                          neg_entropy_score,
                          ood_metrics,
)
from .power import POWER, mde, n_to_resolve, z_two_sided
from .robustness import delta_rsg, relative_change, relative_changes, rsg, vuln_add
from .selective import accuracy_at_coverage, augrc, aurc, risk_coverage_curve, selective_metrics
from .temperature import fit_logit_scale, nll_at

__all__ = [
    # calibration
    "softmax_probs", "ece", "ece_floor", "adaptive_ece", "debiased_ece", "mce", "nll", "brier", "reliability_bins",
    "ece_from_bins", "ece_of_confidence", "ece_gaps", "ece_of_gaps", "ece_weighted", "top_label",
    # OOD detection
    "mcm_score", "max_logit_score", "energy_score", "neg_entropy_score", "msp_score", "SCORES", "SCORE_INPUTS",
    "auroc", "aupr", "fpr_at_95_tpr", "ood_metrics",
    # robustness
    "relative_change", "rsg", "delta_rsg", "vuln_add", "relative_changes",
    # selective prediction
    "risk_coverage_curve", "aurc", "augrc", "accuracy_at_coverage", "selective_metrics",
    # split-conformal prediction sets
    "CONFORMAL_METHODS", "conformal_scores", "conformal_threshold", "prediction_sets", "coverage", "mean_set_size",
    "split_conformal",
    # temperature (logit-scale) tuning
    "fit_logit_scale", "nll_at",
    # bootstrap
    "bootstrap_ci", "bootstrap_ci_two_sample", "paired_bootstrap_diff", "paired_bootstrap",
    "paired_bootstrap_many", "resample_counts", "min_resamples", "RESAMPLE_MARGIN",
    # paired tests and their power
    "mcnemar", "sign_test", "delong", "delong_components", "midranks", "POWER", "mde", "n_to_resolve", "z_two_sided",
]
