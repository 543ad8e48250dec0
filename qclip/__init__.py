"""qclip: spectral analysis and spectral-filtering QAT for quantized CLIP models (one installed namespace).

Packages, lowest layer first (a package imports only from its own layer and below; tests/test_layering.py checks):

- `qclip.spectral`    weight/feature spectra, per-rank SQNR, rank bands, 2D Fourier, spectral penalties (pure math)
- `qclip.quant`       quantization and rank truncation of an open_clip model in place (specs, surgery, PTQ, LSQ
                      QAT, SmoothQuant, rotation, integer export); never loads models or data
- `qclip.io`          the foundation: model loading, datasets (wds, ImageFolder), the dataset registry and
                      fetcher, caches and atomic writes, the results store, typed records, errors, validation
- `qclip.evals`       reliability metrics, zero-shot classifiers, corruptions, features, the one-pass suite
- `qclip.train`       the Lightning QAT module, pair data module, losses, schedule, callbacks, demo pretraining
- `qclip.experiments` ablation grids, their analysis, report and plots, the `spectrum` command
- `qclip.cli`         argument parsing and dispatch (`qclip ...`)

Architecture and conventions: docs/architecture.md, docs/conventions.md, docs/json-contract.md.
"""

__version__ = "0.1.0"
