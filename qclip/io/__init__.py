"""qclip.io: the foundation every other layer uses — open_clip model loading (names/tags, files, `local-dir:`,
`hf-hub:`, Lightning checkpoints, the demo model), datasets (CLIP_benchmark wds shards, ImageFolder), the dataset
registry and its fetcher/builder, calibration images, the user cache and atomic writes, the append-only results
store, the typed JSON records, config validation and the user-error types (exit status 2).

Imports only `qclip.quant`/`qclip.spectral` at most; never evals, train or experiments.
"""
