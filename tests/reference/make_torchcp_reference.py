"""Freeze TorchCP's conformal outputs for fixed inputs into `torchcp_conformal.npz` (read by tests/test_conformal.py).

TorchCP is not a dependency (its package __init__s import torch_geometric, transformers and torchsort), so CI
compares against these frozen outputs. To regenerate:

    pip install --no-deps --target /tmp/torchcp torchcp==1.2.1
    PYTHONPATH=/tmp/torchcp python tests/reference/make_torchcp_reference.py

The inputs are stored beside the outputs, so the comparison does not depend on torch's random streams.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).with_name("torchcp_conformal.npz")
SEEDS = (0, 1)
N, C, N_CAL, ALPHA, LAM, K_REG = 600, 8, 300, 0.1, 0.05, 2


def load_torchcp():
    """TorchCP's LAC, APS, RAPS and calculate_conformal_value, loaded file by file (its package __init__s need
    torch_geometric, transformers and torchsort, none of which these leaf modules use)."""
    spec = importlib.util.find_spec("torchcp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torchcp is not importable: see this file's docstring")
    root = Path(spec.submodule_search_locations[0])
    for name, sub in [("torchcp", "."), ("torchcp.classification", "classification"),
                      ("torchcp.classification.score", "classification/score"), ("torchcp.utils", "utils")]:
        stub = types.ModuleType(name)
        stub.__path__ = [str(root / sub)]
        sys.modules[name] = stub
    lac, aps, raps, common = (importlib.import_module(f"torchcp.{m}") for m in (
        "classification.score.lac", "classification.score.aps", "classification.score.raps", "utils.common"))
    version = importlib.metadata.version("torchcp")
    return lac.LAC, aps.APS, raps.RAPS, common.calculate_conformal_value, version


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of Gaussian logits, labels drawn from their own rows, the first 20 rows with tied classes."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(1.5 * torch.randn(N, C, generator=g, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    probs[:20] = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0], dtype=torch.float64)
    return probs, labels


def main() -> None:
    LAC, APS, RAPS, conformal_value, version = load_torchcp()
    out: dict[str, np.ndarray] = {"torchcp_version": np.array(version)}
    for seed in SEEDS:
        probs, labels = inputs(seed)
        cal, test = slice(0, N_CAL), slice(N_CAL, None)
        out[f"s{seed}/probs"], out[f"s{seed}/labels"] = probs.numpy(), labels.numpy()
        methods = {"thr": LAC(score_type="identity"), "aps": APS(score_type="identity", randomized=False),
                   "raps": RAPS(score_type="identity", randomized=False, penalty=LAM, kreg=K_REG)}
        for method, ref in methods.items():
            cal_scores = ref(probs[cal], labels[cal])
            q = float(conformal_value(cal_scores, ALPHA))
            out[f"s{seed}/{method}/cal_scores"] = cal_scores.double().numpy()
            out[f"s{seed}/{method}/q"] = np.array(q)
            out[f"s{seed}/{method}/sets"] = (ref(probs[test]) <= q).numpy()
        # randomized true-label scores: TorchCP draws one torch.rand(N_CAL) per call; store that draw as u
        for method, ref in {"aps": APS(score_type="identity"),
                            "raps": RAPS(score_type="identity", penalty=LAM, kreg=K_REG)}.items():
            torch.manual_seed(seed)
            scores = ref(probs[cal], labels[cal])
            torch.manual_seed(seed)
            out[f"s{seed}/{method}/u"] = torch.rand(N_CAL).double().numpy()
            out[f"s{seed}/{method}/randomized_cal_scores"] = scores.double().numpy()
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} (torchcp {version})")


if __name__ == "__main__":
    main()
