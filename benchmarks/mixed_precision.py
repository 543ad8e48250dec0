"""Spectrally guided mixed precision vs uniform bits vs a random assignment at the same average weight bits, on the
demo: acc1 and ECE on the ID set and on the corrupted sets, MCM AUROC, each pair of models compared with paired tests
on the same images (McNemar, bootstrap, DeLong: 95% interval of the difference).

Usage: python benchmarks/mixed_precision.py [--budgets 5 7] [--seeds 0 1 2] [--limit 2000] [--data-root DIR]

For each budget B: `mpB` (spectral allocation over {4, 6, 8} bits), `wBa8` (uniform B bits), `mpB-rand<s>` (random
allocation, seeds s); activations are 8-bit per-tensor everywhere. Prints one Markdown table per budget.
"""

from __future__ import annotations

import argparse

from qclip.evals.metrics import ece_of_confidence, top_label
from qclip.evals.paired import compare_to_fp
from qclip.evals.suite import ReliabilitySuite, SuiteConfig
from qclip.evals.zeroshot import model_fingerprint
from qclip.train.demo import ensure_demo_model

OOD = "wds/imagenet_cifar10_ood"
CORRUPTIONS = [("gaussian_noise", 3), ("shot_noise", 3), ("defocus_blur", 3)]


def compare(a: dict, b: dict, n_boot: int) -> dict[str, dict]:
    """a − b (`paired_inputs` of two models) with paired tests: acc1 (McNemar) and ECE (bootstrap) per labelled
    set, MCM AUROC (DeLong)."""
    tests = compare_to_fp(b, a, n_boot=n_boot)
    res = {}
    for name, entry in [("id", tests["id"]), *tests["corruptions"].items()]:
        res[f"{name} acc1"], res[f"{name} ECE"] = entry["acc1"], entry["ece"]
    res["AUROC"] = tests["ood"][OOD]["auroc"]
    return res


def cell(d: dict) -> str:
    """'+0.0123 [−0.0040, +0.0290]' with a * when the interval excludes 0."""
    star = "*" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]{star}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=float, nargs="+", default=[5, 7])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random-assignment seeds")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--ood-limit", type=int, default=500)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    ensure_demo_model(data_root=args.data_root)
    cfg = SuiteConfig(model="demo", dataset="wds/cifar10", ood=[OOD], corruptions=CORRUPTIONS, limit=args.limit,
                      ood_limit=args.ood_limit, bootstrap=0)
    suite = ReliabilitySuite(cfg, data_root=args.data_root, progress=False, image_cache_mb=1024)
    fp = suite.load()
    for budget in args.budgets:
        b = f"{budget:g}"
        specs = {"spectral": f"mp{b}", "uniform": f"w{b}a8", **{f"random s{s}": f"mp{b}-rand{s}" for s in args.seeds}}
        outs, avg = {}, {}
        for name, spec in specs.items():
            variant, report = _quantize(suite, fp, spec)
            avg[name] = report.get("avg_bits", budget)
            outs[name] = suite.paired_inputs(variant)
            suite.release(model_fingerprint(fp.model))
        rows = {f"spectral − {other}": compare(outs["spectral"], outs[other], args.n_boot)
                for other in specs if other != "spectral"}
        metrics = list(next(iter(rows.values())))
        print(f"\n### average {b} weight bits (achieved: "
              + ", ".join(f"{k} {v:.2f}" for k, v in avg.items()) + ")\n")
        print("| comparison | " + " | ".join(metrics) + " |")
        print("|---|" + "---|" * len(metrics))
        for name, res in rows.items():
            print(f"| {name} | " + " | ".join(cell(res[m]) for m in metrics) + " |", flush=True)
        tops = {name: top_label(o["id"][0].double().softmax(-1), o["id"][1]) for name, o in outs.items()}
        absolute = {name: {"acc1": float(t[1].mean()), "ECE": ece_of_confidence(*t)} for name, t in tops.items()}
        print("\nID acc1 / ECE: " + "; ".join(f"{k} {v['acc1']:.4f} / {v['ECE']:.4f}" for k, v in absolute.items()))
    print("\n(* = the paired 95% interval excludes 0; differences are spectral minus the other model, so + on acc1 /"
          " AUROC and − on ECE favour the spectral allocation.)")


def _quantize(suite: ReliabilitySuite, fp, spec: str):
    """A calibrated quantized copy of `fp` per `spec`, with its summary."""
    from qclip.evals.variants import quantize_loaded

    return quantize_loaded(fp, spec, suite.id_spec, data_root=suite.data_root)


if __name__ == "__main__":
    main()
