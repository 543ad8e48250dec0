"""qclip.train: fine-tuning with quantization-aware training — the Lightning module (`QATCLIPModule`: LSQ fake
quantizers, contrastive + distillation losses, the spectral-filtering regularizer), the image–text pair data
module, the learning-rate schedule, diagnostics/export callbacks, the `qclip fit` LightningCLI and the demo
model's pretraining.

Imports io, evals, quant and spectral; never experiments.
"""
