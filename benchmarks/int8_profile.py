"""Where the time of a compiled integer image tower goes, next to the compiled FP32 tower: a torch.profiler table.

Usage:
    python benchmarks/int8_profile.py [--model ViT-B-32] [--quant w8a8] [--batch 64] [--calls 3] [--out FILE.json]

Builds the model (random init for an architecture name; `demo` and `local-dir:` work too), its fake-quant model
(`--quant`, calibrated on random images as `qclip bench` does) and the integer model rebuilt from it
(`qclip.evals.variants.integer_loaded`), compiles both image towers with the settings of `qclip bench --compile`
(Inductor, freezing, prepacked oneDNN weights), warms each up, then profiles `--calls` forwards of one random batch.
Self CPU time is summed per operator and grouped:

  int8 GEMM / conv   oneDNN's quantized linear and convolution (`onednn::qlinear_pointwise`, `qconv2d_pointwise`)
  float GEMM / conv  float matmuls and convolutions (`mkldnn` / `aten::mm`, `addmm`, `bmm`, `convolution`): in the
                     integer tower, attention's q·kᵀ and p·v (scaled_dot_product_attention), which have no weights
  Inductor kernels   the compiled graph's own time: its generated C++ kernels (fused elementwise work:
                     quantize-to-uint8, layer norm, GELU, residual adds) between the library calls
  other              the rest

The JSON holds both towers' groups, their top operators, and the images/s measured under the profiler (slower than
`qclip bench`'s figures; use those for throughput, this for the split). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch


def _group(name: str) -> str:
    low = name.lower()
    if "qlinear" in low or "qconv" in low:
        return "int8 GEMM / conv"
    if any(k in low for k in ("mkldnn_linear", "mkl_linear", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                              "convolution", "_linear_pointwise", "mkldnn_rnn", "aten::linear", "aten::matmul",
                              "scaled_dot_product")):
        return "float GEMM / conv"
    if "compiledfxgraph" in low or "cpp_fused" in low or "inductor" in low:  # the generated code's own time
        return "Inductor kernels"
    return "other"


def _tower(loaded, compiled: bool):
    from qclip.evals.variants import compile_image_tower_

    if compiled:
        compile_image_tower_(loaded)
    return loaded.model.visual.eval()


@torch.inference_mode()
def profile_tower(tower, x: torch.Tensor, calls: int, warmup: int) -> dict:
    """Warm `tower` up, then profile `calls` forwards of `x`: grouped self CPU time and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    for _ in range(warmup):
        tower(x)
    first_s = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t1 = time.perf_counter()
        for _ in range(calls):
            tower(x)
        wall = time.perf_counter() - t1
    groups: dict[str, float] = defaultdict(float)
    ops = []
    for evt in prof.key_averages():
        self_us = evt.self_cpu_time_total
        if self_us <= 0:
            continue
        groups[_group(evt.key)] += self_us
        ops.append((evt.key, self_us, evt.count))
    total = sum(groups.values()) or 1.0
    ops.sort(key=lambda o: -o[1])
    return {"warmup_s": round(first_s, 2), "profiled_wall_s": round(wall, 3),
            "images_per_s_under_profiler": round(calls * x.shape[0] / wall, 2),
            "groups": {k: {"ms_per_call": round(v / 1e3 / calls, 2), "share": round(v / total, 4)}
                       for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": k, "ms_per_call": round(us / 1e3 / calls, 2), "calls": n // calls, "group": _group(k)}
                        for k, us, n in ops[:15]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--quant", default="w8a8")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls (the first compiles)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from qclip.evals.variants import integer_loaded
    from qclip.io.validate import check_spec
    from qclip.quant.api import quantize_
    from qclip.quant.kernels import cpu_int8_vnni

    from qclip.experiments.bench import input_shape, random_calibrator
    from qclip.io.models import load_model

    torch.manual_seed(0)
    fp = load_model(args.model)
    spec = check_spec("--quant", args.quant)
    fq = fp._replace(model=copy.deepcopy(fp.model))
    quantize_(fq.model, spec, random_calibrator(fp, spec, 2, 0))
    integer, summary = integer_loaded(fq, str(spec))
    del fq
    x = torch.randn(args.batch, *input_shape(fp.model), generator=torch.Generator().manual_seed(0))
    result = {"model": args.model, "quant": str(spec), "batch": args.batch, "calls": args.calls,
              "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "vnni": cpu_int8_vnni(), "export": {k: summary[k] for k in ("maps", "integer_arithmetic", "int16_safe")},
              "towers": {}}
    for name, loaded in (("fp32_compiled", fp), ("int_compiled", integer)):
        print(f"compiling and profiling {name} ...", file=sys.stderr, flush=True)
        result["towers"][name] = profile_tower(_tower(loaded, True), x, args.calls, args.warmup)
    for name, res in result["towers"].items():
        print(f"\n{name}: {res['images_per_s_under_profiler']} img/s under the profiler (warm-up {res['warmup_s']} s)")
        for group, v in res["groups"].items():
            print(f"  {group:18s} {v['ms_per_call']:9.1f} ms/call  {v['share']:6.1%}")
        for op in res["top_ops"][:8]:
            print(f"    {op['op'][:60]:60s} {op['ms_per_call']:9.1f} ms  x{op['calls']}  [{op['group']}]")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"-> {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
