"""qclip.evals: reliability evaluation of zero-shot CLIP models — metrics (calibration and temperature tuning, OOD
detection, robustness deltas, bootstrap intervals, selective prediction, conformal sets), template-ensembled
zero-shot classifiers, torch corruptions, cached feature extraction, model variants for evaluation
(quantized/truncated copies), and the one-pass `ReliabilitySuite` that feeds every metric from one forward pass.

Imports io, quant and spectral; never train or experiments.
"""
