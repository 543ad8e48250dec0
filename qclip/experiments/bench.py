"""`qclip bench`: image-tower latency and throughput of one model's variants side by side, in one run.

Variants: FP32 eager, FP32 compiled, BF16 autocast, the spec's fake-quant model, and its integer model (oneDNN
int8 kernels, see `qclip.quant.kernels`) eager and compiled. Compiled variants come with `--compile` (Inductor,
static shapes, freezing on); their first call per batch size is the compile time, reported apart. Inputs are
random N(0, 1) images of the model's input size (no data is read); calibration of the fake-quant model uses such
images too unless a dataset is given (timings do not depend on the activation ranges).

Timing: per (batch size, variant) a warm-up, then `repeats` samples, each the mean of enough calls to last
`min_time` seconds; the variants are interleaved within every repeat (their order rotated each repeat) so machine
noise hits all alike; medians over repeats. Ratios are to FP32 eager: `time_ratio` = time / time(FP32 eager),
`speedup` = its inverse. Memory: bytes of the tower's parameters and buffers (integer codes at their storage
size); oneDNN's prepacked weight copies are listed apart.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from qclip.io.errors import ConfigError, QclipInputError
from qclip.io.export_dir import export_dir_of, load_export_dir, verify_export_dir
from qclip.io.models import LoadedModel, load_model
from qclip.io.paths import atomic_write_text
from qclip.io.progress import progress_bar
from qclip.io.validate import check_float, check_int, check_seed

__all__ = ["BenchConfig", "VARIANTS", "parse_batches", "run_bench", "bench_markdown", "write_bench", "weight_bytes",
           "input_shape", "random_calibrator"]

#: variant name -> label, in report order
VARIANTS = {"fp32_eager": "FP32 eager", "fp32_compiled": "FP32 compiled", "bf16_autocast": "BF16 autocast",
            "fakequant": "fake-quant (eager)", "int_eager": "integer eager", "int_compiled": "integer compiled"}
RANDOM_INPUT = "random N(0,1) images of the model's input size (no data read)"


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64); a bad list is a `ConfigError` (exit 2)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"bad --batch {text!r}: expected comma-separated positive integers, e.g. 1,64") from None
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"bad --batch {text!r}: expected distinct positive integers, e.g. 1,64")
    return values


@dataclass
class BenchConfig:
    """What `qclip bench` times (validated when built)."""

    model: str
    pretrained: str | None = None
    quant: str | None = None
    compile: bool = False
    batches: tuple[int, ...] = (1, 64)
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 2
    min_time: float = 0.2
    dataset: str | None = None
    calib_batches: int | None = None
    seed: int = 0
    variants: tuple[str, ...] = field(default_factory=lambda: tuple(VARIANTS))

    def __post_init__(self):
        if isinstance(self.batches, str):
            self.batches = parse_batches(self.batches)
        self.batches = tuple(self.batches)
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError(f"batches must be positive integers, got {self.batches!r}")
        check_int("repeats", self.repeats, minimum=1)
        check_int("warmup", self.warmup, minimum=0)
        check_seed("seed", self.seed)
        check_int("calib_batches", self.calib_batches, minimum=1, optional=True)
        check_float("min_time", self.min_time, low=0.0)
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {self.device}: CUDA is not available on this machine")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(f"unknown bench variant {bad[0]!r} (known: {', '.join(VARIANTS)})")
        if self.quant and export_dir_of(self.model) is not None:
            raise QclipInputError(f"--model {self.model} is an export folder (already quantized): drop --quant")


@dataclass
class _Variant:
    name: str
    tower: nn.Module
    autocast: bool = False
    compiled: bool = False
    weight_bytes: int = 0
    packed_bytes: int = 0
    note: str | None = None


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers at their storage dtype (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t is None or t.layout != torch.strided:
            continue
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _packed_bytes(module: nn.Module) -> int:
    from qclip.quant.kernels import integer_maps

    return sum(int(m.weight_codes.numel()) for m in integer_maps(module).values() if m.kernel == "onednn")


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(3, H, W) of an open_clip model's image input."""
    size = getattr(model.visual, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return 3, int(h), int(w)


def random_calibrator(loaded: LoadedModel, spec, batches: int, seed: int) -> Callable[[nn.Module], None]:
    """A `calibrate(model)` on random images (and generic prompts when the text tower is in scope)."""
    g = torch.Generator().manual_seed(seed + 1)
    shape = input_shape(loaded.model)
    images = [torch.randn(16, *shape, generator=g) for _ in range(batches)]
    tokens = loaded.tokenizer([f"a photo of a {w}." for w in ("cat", "dog", "car", "ship", "bird", "tree")]) \
        if spec.scope == "vision+text" else None

    @torch.no_grad()
    def calibrate(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for x in images:
            model.encode_image(x.to(device))
        if tokens is not None:
            model.encode_text(tokens.to(device))

    return calibrate


def _build_models(cfg: BenchConfig, data_root: str | None) -> tuple[dict[str, LoadedModel], dict]:
    """The FP, fake-quant and integer models of the config, and facts about them for the record."""
    from qclip.evals.variants import check_specs_fit, integer_loaded, needs_calibration, quantize_loaded
    from qclip.io.validate import check_spec
    from qclip.quant.api import quantize_

    info: dict = {"calibration": None, "export": None, "fakequant_note": None}
    export = export_dir_of(cfg.model)
    models: dict[str, LoadedModel] = {}
    if export is not None:
        manifest, _ = verify_export_dir(export)  # digests, entries and grids, before any model is built
        models["fp"] = load_model(f"local-dir:{export / 'float'}", device=cfg.device)
        if manifest["maps"]:
            models["fakequant"] = load_export_dir(export, cfg.device, kernel="dequant")
            if cfg.device == "cpu":
                models["int"] = load_export_dir(export, "cpu")
        info["calibration"] = "export folder"
        info["fakequant_note"] = ("the export's reference kernel: activations fake-quantized on the exported grids, "
                                  "integer codes dequantized to float32 (the fake-quant model's function)")
        info["export"] = {"spec": manifest["spec"], "summary": manifest["summary"]}
        return models, info
    fp = load_model(cfg.model, cfg.pretrained, device=cfg.device)
    check_specs_fit(fp, cfg.quant)
    models["fp"] = fp
    if not cfg.quant:
        return models, info
    spec = check_spec("--quant", cfg.quant)
    ckpt = next((p for p in (cfg.model, cfg.pretrained) if p and p.endswith(".ckpt")), None)
    if cfg.dataset is not None or ckpt is not None:
        dataset = None
        if cfg.dataset is not None:
            from qclip.io.data import resolve_dataset

            dataset = resolve_dataset(cfg.dataset, data_root, "test")
        elif needs_calibration(spec):
            raise ConfigError(f"{cfg.model} is a fit checkpoint: pass --dataset for its activation calibration")
        fq, summary = quantize_loaded(fp, str(spec), dataset, device=cfg.device, data_root=data_root,
                                      calib_batches=cfg.calib_batches, qat_checkpoint=ckpt)
        info["calibration"] = cfg.dataset if needs_calibration(spec) else None
        w_bits = summary.get("bits")
    else:
        fq = fp._replace(model=copy.deepcopy(fp.model))
        calibrate = None
        if needs_calibration(spec):
            calibrate = random_calibrator(fp, spec, cfg.calib_batches or 2, cfg.seed)
            info["calibration"] = "random images"
        report = quantize_(fq.model, spec, calibrate)
        w_bits = report.bits or None
    models["fakequant"] = fq
    if spec.kind != "rank" and cfg.device == "cpu":
        models["int"], summary = integer_loaded(fq, str(spec), w_bits=w_bits)
        info["export"] = {"spec": str(spec), "summary": {k: summary[k] for k in
                                                         ("maps", "integer_arithmetic", "dequantized", "int16_safe")}}
    return models, info


def _variants(cfg: BenchConfig, models: dict[str, LoadedModel], info: dict) -> tuple[list[_Variant], dict[str, str]]:
    from qclip.quant.kernels import prepack_

    skipped: dict[str, str] = {}
    out: list[_Variant] = []
    fp_tower = models["fp"].model.visual.eval()
    want = set(cfg.variants)

    def add(name: str, **kw) -> None:
        if name in want:
            out.append(_Variant(name, **kw))

    def compiled(tower: nn.Module) -> nn.Module:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        prepack_(tower)
        return torch.compile(tower, dynamic=False)

    fp_bytes = weight_bytes(fp_tower)
    add("fp32_eager", tower=fp_tower, weight_bytes=fp_bytes)
    if cfg.compile:
        add("fp32_compiled", tower=compiled(fp_tower), compiled=True, weight_bytes=fp_bytes)
    else:
        skipped["fp32_compiled"] = "pass --compile"
    add("bf16_autocast", tower=fp_tower, autocast=True, weight_bytes=fp_bytes,
        note="float32 weights, matmuls and convolutions under torch.autocast(bfloat16)")
    if "fakequant" in models:
        tower = models["fakequant"].model.visual.eval()
        add("fakequant", tower=tower, weight_bytes=weight_bytes(tower), note=info.get("fakequant_note"))
    else:
        skipped["fakequant"] = skipped["int_eager"] = skipped["int_compiled"] = "no --quant spec"
    if "int" in models:
        tower = models["int"].model.visual.eval()
        prepack_(tower)
        nbytes, packed = weight_bytes(tower), _packed_bytes(tower)
        add("int_eager", tower=tower, weight_bytes=nbytes, packed_bytes=packed)
        if cfg.compile:
            add("int_compiled", tower=compiled(tower), compiled=True, weight_bytes=nbytes, packed_bytes=packed)
        else:
            skipped["int_compiled"] = "pass --compile"
    elif "fakequant" in models:
        why = ("integer maps run on oneDNN's CPU kernels: use --device cpu" if cfg.device != "cpu"
               else "a rank spec has no integer maps")
        skipped["int_eager"] = skipped["int_compiled"] = why
    return out, {k: v for k, v in skipped.items() if k in want}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def _call(v: _Variant, x: torch.Tensor, device: str) -> torch.Tensor:
    ctx = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if v.autocast else nullcontext()
    with ctx:
        return v.tower(x)


def _timed(v: _Variant, x: torch.Tensor, device: str, calls: int) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        _call(v, x, device)
    _sync(device)
    return (time.perf_counter() - t0) / calls


def _machine(device: str) -> dict:
    from qclip.quant.kernels import cpu_int8_vnni, onednn_int8_available

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "vnni": cpu_int8_vnni(),
           "onednn_int8": onednn_int8_available(), "device": device, "gpu": None}
    if str(device).startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def run_bench(cfg: BenchConfig, *, data_root: str | None = None, progress: bool = True) -> dict:
    """Time every variant of `cfg`; return the bench record (see docs/json-contract.md)."""
    from qclip.io.results import versions

    torch.manual_seed(cfg.seed)
    models, info = _build_models(cfg, data_root)
    variants, skipped = _variants(cfg, models, info)
    shape = input_shape(models["fp"].model)
    g = torch.Generator().manual_seed(cfg.seed)
    inputs = {b: torch.randn(b, *shape, generator=g).to(cfg.device) for b in cfg.batches}
    compile_s: dict[str, dict[str, float]] = {v.name: {} for v in variants if v.compiled}
    calls: dict[tuple[str, int], int] = {}
    outputs: dict[str, torch.Tensor] = {}
    largest = max(cfg.batches)
    with progress_bar(len(variants) * len(cfg.batches), desc="bench warm-up", enabled=progress) as bar:
        for b in cfg.batches:
            for v in variants:
                t0 = time.perf_counter()
                y = _call(v, inputs[b], cfg.device)
                _sync(cfg.device)
                if v.compiled:
                    compile_s[v.name][str(b)] = round(time.perf_counter() - t0, 3)
                if b == largest:
                    outputs[v.name] = y.float().cpu()
                for _ in range(cfg.warmup):
                    _call(v, inputs[b], cfg.device)
                once = _timed(v, inputs[b], cfg.device, 1)
                calls[(v.name, b)] = max(1, min(100, math.ceil(cfg.min_time / max(once, 1e-6))))
                bar.update()
    times: dict[tuple[str, int], list[float]] = {k: [] for k in calls}
    with progress_bar(cfg.repeats * len(variants) * len(cfg.batches), desc="bench", enabled=progress) as bar:
        for r in range(cfg.repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for b in cfg.batches:
                for v in order:
                    times[(v.name, b)].append(_timed(v, inputs[b], cfg.device, calls[(v.name, b)]))
                    bar.update()
    median = {k: _median(ts) for k, ts in times.items()}
    record: dict = {"model": cfg.model, "pretrained": cfg.pretrained, "quant": cfg.quant, "compile": cfg.compile,
                    "tower": "image", "input": {"shape": list(shape), "images": RANDOM_INPUT},
                    "calibration": info["calibration"], "export": info["export"], "batches": list(cfg.batches),
                    "repeats": cfg.repeats, "warmup": cfg.warmup, "min_time_s": cfg.min_time,
                    "machine": _machine(cfg.device), "variants": {}, "skipped": skipped}
    ref = outputs.get("fp32_eager")
    for v in variants:
        entry: dict = {"label": VARIANTS[v.name], "weight_bytes": v.weight_bytes,
                       "runtime_packed_bytes": v.packed_bytes or None, "compiled": v.compiled,
                       "compile_seconds": compile_s.get(v.name), "note": v.note, "batches": {}}
        if ref is not None and v.name in outputs:
            entry["cosine_vs_fp32_eager"] = round(float(torch.nn.functional.cosine_similarity(
                outputs[v.name].flatten(1), ref.flatten(1)).mean()), 6)
        for b in cfg.batches:
            t = median[(v.name, b)]
            base, comp = median.get(("fp32_eager", b)), median.get(("fp32_compiled", b))
            entry["batches"][str(b)] = {
                "median_s": t, "times_s": times[(v.name, b)], "calls_per_sample": calls[(v.name, b)],
                "images_per_s": b / t, "time_ratio_vs_fp32_eager": None if base is None else t / base,
                "speedup_vs_fp32_eager": None if base is None else base / t,
                "speedup_vs_fp32_compiled": None if comp is None else comp / t}
        record["variants"][v.name] = entry
    record["versions"] = versions()
    return record


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def bench_markdown(record: dict) -> str:
    """The bench record as Markdown: one table per batch size, then weights and compile times."""
    m = record["machine"]
    lines = [f"# qclip bench: {record['model']}" + (f" {record['quant']}" if record.get("quant") else ""), "",
             f"Image tower, input {'x'.join(map(str, record['input']['shape']))}: {record['input']['images']}. "
             f"{m['cpu']} ({m['cpu_capability']}, VNNI: {m['vnni']}), {m['torch_threads']} torch threads, device "
             f"{m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else "") + f". Medians of {record['repeats']} "
             "interleaved repeats; ratios against FP32 eager in this run.", ""]
    for b in record["batches"]:
        lines += [f"## batch {b}", "", "| variant | ms / batch | images/s | time / FP32 eager | speedup vs FP32 eager "
                  "| speedup vs FP32 compiled |", "|---|---:|---:|---:|---:|---:|"]
        for entry in record["variants"].values():
            r = entry["batches"][str(b)]
            lines.append(f"| {entry['label']} | {r['median_s'] * 1e3:.2f} | {r['images_per_s']:.1f} | "
                         f"{_fmt(r['time_ratio_vs_fp32_eager'], '.3f')} | {_fmt(r['speedup_vs_fp32_eager'], '.2f')}x | "
                         f"{_fmt(r['speedup_vs_fp32_compiled'], '.2f')}{'x' if r['speedup_vs_fp32_compiled'] else ''} |")
        lines.append("")
    lines += ["## weights and compile time", "", "| variant | weights (MB) | oneDNN packed copy (MB) | compile (s) "
              "| output cosine vs FP32 eager |", "|---|---:|---:|---:|---:|"]
    for entry in record["variants"].values():
        comp = entry["compile_seconds"]
        comp_text = ", ".join(f"b{b}: {s:.1f}" for b, s in comp.items()) if comp else "–"
        packed = entry["runtime_packed_bytes"]
        lines.append(f"| {entry['label']} | {entry['weight_bytes'] / 2**20:.2f} | "
                     f"{'–' if not packed else f'{packed / 2**20:.2f}'} | {comp_text} | "
                     f"{_fmt(entry.get('cosine_vs_fp32_eager'), '.5f')} |")
    notes = [f"{e['label']}: {e['note']}" for e in record["variants"].values() if e.get("note")]
    if notes:
        lines += [""] + [f"- {n}." for n in notes]
    if record.get("skipped"):
        lines += ["", "Not run: " + "; ".join(f"{VARIANTS[k]} ({v})" for k, v in record["skipped"].items()) + "."]
    if record.get("export"):
        s = record["export"]["summary"]
        lines += ["", f"Integer model ({record['export']['spec']}): {s['integer_arithmetic']} of {s['maps']} quantized "
                  f"maps in integer arithmetic (oneDNN int8), {s['dequantized']} dequantized to float."]
    return "\n".join(lines) + "\n"


def write_bench(record: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write `bench.json` and `bench.md` into the folder `out`, atomically."""
    out = Path(out)
    record = {**record, "written_at": time.time()}
    atomic_write_text(out / "bench.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "bench.md", bench_markdown(record))
    return out / "bench.json", out / "bench.md"
