"""qclip.experiments: what runs many evaluations and explains them — the ablation grid (`grid`, `ablate`), the
spectral analysis of each variant against FP (`analysis`), the report (`cells`, `findings`, `report`), every
figure (`plots`), and the `qclip spectrum` command (`spectrum`).

The top layer below the CLI: imports io, evals, train, quant and spectral; nothing imports it but the CLI.
"""
