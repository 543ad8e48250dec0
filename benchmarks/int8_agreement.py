"""Where oneDNN's int8 kernels depart from the fake-quant model, per CPU int8 path, measured on one machine.

Usage: python benchmarks/int8_agreement.py [--specs w8a8 w8a7] [--isas ALL AVX512_CORE_VNNI AVX2] [--images 512]

Each ISA runs in a fresh process with `ONEDNN_MAX_CPU_ISA` set, which caps the instruction set oneDNN dispatches
to (ALL on an AMX machine: AMX-INT8 tiles; AVX512_CORE_VNNI: VPDPBUSD; AVX2: VPMADDUBSW with saturating int16 pair
sums), so one AMX CPU measures all three paths; the fake-quant reference (float32 GEMMs) does not change. The
kernel each path ran is read from `ONEDNN_VERBOSE` and printed.

Model: the demo architecture (`qclip/io/model_configs/qclip-demo.json`) random-init (seed 0), or the trained demo
with `--trained` when it is cached; calibration on `--calib-batches` batches of 64 synthetic images (smooth random
fields, seeded) and evaluated on `--images` more. Per spec and path:
- end to end: image features of the integer model (oneDNN) against the fake-quant model (the export's dequantized
  reference, which equals the fake-quant model: checked), max |Δ| over entries, min cosine over images, top-1
  flips of the zero-shot prediction over the CIFAR-10 class prompts;
- per map, on the same input (the integer model's own activations): max |y_int8 − y_ref| / max |y_ref| — the
  accumulation and output-scaling departure of the kernel alone — and each side against the same map summed in
  float64 (which is exact for these codes to ~1e-16): which side carries the rounding;
- activation codes: the share of each map's input codes that differ between the integer and the reference model
  (float32 rounding moved upstream values across a rounding edge; each such code differs by one step).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, seed: int, size: int = 32):
    """Smooth random images in [0, 1], normalised as CLIP does."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    img = F.interpolate(low, size=size, mode="bicubic", align_corners=False) + 0.1 * torch.rand(n, 3, size, size,
                                                                                                 generator=g)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (img.clamp(0, 1) - mean) / std


def _exact(ref_map, x):
    """A reference (dequant) map's output computed in float64 from the same activation and weight codes."""
    import torch.nn.functional as F
    from qclip.quant.kernels import IntConv2d

    if ref_map.rotation is not None:
        x = ref_map.rotation(x)
    xq = ref_map.fake_quantize_input(x).double()
    w = ref_map.dequantized_weight().double()
    b = None if ref_map.bias is None else ref_map.bias.double()
    if isinstance(ref_map, IntConv2d):
        return F.conv2d(xq, w, b, ref_map.stride, ref_map.padding, ref_map.dilation, ref_map.groups)
    return F.linear(xq, w, b)


def child(args) -> dict:
    """One ISA: build, calibrate, export in memory, compare (runs in the process ONEDNN_MAX_CPU_ISA was set for)."""
    import copy

    import open_clip
    import torch
    import torch.nn.functional as F
    from qclip.evals.agreement import feature_agreement
    from qclip.quant.api import quantize_
    from qclip.quant.export import build_integer_model_, integer_tensors
    from qclip.quant.kernels import int8_features, integer_maps
    from qclip.quant.qat import convert_qat_

    from qclip.io.demo import DEMO_MODEL_NAME, register_model_configs

    torch.manual_seed(0)
    register_model_configs()
    if args.trained:
        from qclip.io.models import load_model

        model = load_model("demo").model
    else:
        model = open_clip.create_model(DEMO_MODEL_NAME).eval()
    tok = open_clip.get_tokenizer(DEMO_MODEL_NAME)
    calib = [_images(64, 100 + b) for b in range(args.calib_batches)]
    test = _images(args.images, 1)
    out = {"isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL"), "cpu": int8_features(), "specs": {}}
    with torch.no_grad():
        text = F.normalize(model.encode_text(tok([f"a photo of a {c}." for c in CLASSES])), dim=-1).T
    for spec in args.specs:
        fq = copy.deepcopy(model)

        @torch.no_grad()
        def calibrate(m):
            for b in calib:
                m.encode_image(b)

        quantize_(fq, spec, calibrate)
        work = copy.deepcopy(fq).eval()
        tensors, entries = integer_tensors(work, spec)
        plain = convert_qat_(work)
        ints = build_integer_model_(copy.deepcopy(plain), entries, tensors)
        ref = build_integer_model_(copy.deepcopy(plain), entries, tensors, kernel="dequant")
        seen: dict[str, list] = {}

        def hook(name):
            def fn(mod, inp, outp):
                seen.setdefault(name, []).append((inp[0].detach(), outp.detach()))
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in integer_maps(ints).items()]
        with torch.no_grad():
            f_int = torch.cat([ints.encode_image(b) for b in test.split(128)])
            for h in handles:
                h.remove()
            f_ref = torch.cat([ref.encode_image(b) for b in test.split(128)])
            f_fq = torch.cat([fq.encode_image(b) for b in test.split(128)])
            ref_maps = integer_maps(ref)
            kernel_err, flipped, total = 0.0, 0, 0
            err64 = {"int8": 0.0, "fake-quant": 0.0}
            ref_in: dict[str, list] = {}
            handles = [m.register_forward_hook(lambda mod, inp, o, n=n: ref_in.setdefault(n, []).append(inp[0]))
                       for n, m in ref_maps.items()]
            for b in test.split(128):
                ref.encode_image(b)
            for h in handles:
                h.remove()
            for name, m in integer_maps(ints).items():
                r = ref_maps[name]
                for (x, y), xr in zip(seen[name], ref_in[name]):
                    y_ref = r(x)  # the reference kernel on the integer model's own input
                    kernel_err = max(kernel_err, float((y - y_ref).abs().max() / y_ref.abs().max()))
                    y64 = _exact(r, x)  # the same map in float64: exact sums of the same codes
                    scale = float(y64.abs().max())
                    err64["int8"] = max(err64["int8"], float((y.double() - y64).abs().max()) / scale)
                    err64["fake-quant"] = max(err64["fake-quant"], float((y_ref.double() - y64).abs().max()) / scale)
                    xi = x if m.rotation is None else m.rotation(x)
                    xr2 = xr if r.rotation is None else r.rotation(xr)
                    ci, cr = m.quantize_input(xi).int(), r.quantize_input(xr2).int()
                    flipped += int((ci != cr).sum())
                    total += ci.numel()
        agr = feature_agreement(f_fq, f_int, text)
        out["specs"][spec] = {**agr, "maps": len(entries),
                              "onednn_maps": sum(e["kernel"] == "onednn" for e in entries),
                              "reference_equals_fake_quant": bool(torch.equal(f_ref, f_fq)),
                              "max_kernel_rel_err": kernel_err, "err_vs_float64": err64, "code_flip_share": flipped / max(1, total),
                              "feature_scale": float(f_fq.abs().max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", nargs="+", default=["w8a8", "w8a7"])
    ap.add_argument("--isas", nargs="+", default=["ALL", "AVX512_CORE_VNNI", "AVX2"])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--trained", action="store_true", help="the cached trained demo instead of a random init")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    for isa in args.isas:
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, ONEDNN_VERBOSE="1")
        cmd = [sys.executable, __file__, "--child", "--images", str(args.images), "--calib-batches",
               str(args.calib_batches), "--specs", *args.specs] + (["--trained"] if args.trained else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        impls = sorted({ln.split(",")[6] for ln in proc.stdout.splitlines()
                        if ln.startswith("onednn_verbose") and ",exec," in ln and ",u8:" not in ln
                        and ("matmul" in ln or "convolution" in ln) and "src:u8" in ln})
        res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
        print(f"ONEDNN_MAX_CPU_ISA={isa}: int8 kernels {', '.join(impls) or '?'} (CPU int8 path: "
              f"{res['cpu']['int8_path']}, flags {', '.join(res['cpu']['flags'] or [])})")
        for spec, r in res["specs"].items():
            print(f"  {spec}: {r['onednn_maps']}/{r['maps']} maps on oneDNN; features vs fake-quant: max |Δ| "
                  f"{r['max_abs_diff']:.2g} (feature scale {r['feature_scale']:.2g}), min cosine "
                  f"{r['min_cosine']:.7f}, top-1 flips {r['top1_flips']}/{r['n']}; per-map kernel error "
                  f"{r['max_kernel_rel_err']:.2g} (vs float64 sums: int8 {r['err_vs_float64']['int8']:.2g}, "
                  f"fake-quant {r['err_vs_float64']['fake-quant']:.2g}); activation codes moved {100 * r['code_flip_share']:.3f}%; "
                  f"reference == fake-quant: {r['reference_equals_fake_quant']}")


if __name__ == "__main__":
    main()
