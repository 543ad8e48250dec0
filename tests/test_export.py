"""`qclip export`: the float folder stock open_clip loads, the integer model (oneDNN int8 kernels) rebuilt from
`int.safetensors` + `export.json`, its agreement with the fake-quant model, `qclip eval` on an export folder, the
feature cache keeping integer and float features apart, and a fit checkpoint exported with its learned LSQ steps.

Tolerances. The integer model quantizes activations exactly as the fake-quant model does (static per-tensor grid,
the same rounding, bit for bit: the "dequant" reference kernel reproduces the fake-quant features to float
rounding), and multiplies integer codes with exact int32 accumulation instead of float sums. Map by map (same
input into both kernels) that is the whole difference with weights of 7 bits or fewer: relative error ~1e-7,
checked at 1e-5 on w4a8. End to end, a float-rounding difference that moves a value across a rounding boundary of
the next map's activation grid flips one code, so whole-model features are compared by cosine similarity (mean >=
0.99, worst sample >= 0.95). With 8-bit weights and full-range 8-bit activations, oneDNN on CPUs without VNNI (this
AVX2 machine) sums u8 x s8 pairs in saturating int16: several % relative error per map on the random-init micro
model, so only the end-to-end cosine bound is checked there. No torchao dynamic per-token int8 path is involved (it
runs ~30x slower than FP32 on this CPU: torch._int_mm has no fast AVX2 kernel).
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from qclip.quant.kernels import IntConv2d, IntLinear, int8_advice, int8_features, integer_maps
from qclip.quant.surgery import attention_surgery_, list_linear_maps
from safetensors.torch import load_file

from qclip.cli import main
from qclip.io.data import make_loader, resolve_dataset
from qclip.io.export_dir import load_export_dir
from qclip.io.models import load_model, save_open_clip_dir

X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def export(model: str, out: Path, quant: str | None, wds_root: Path, *extra: str) -> int:
    args = ["export", "--model", model, "--out", str(out), "--data-root", str(wds_root), "--no-progress", *extra]
    if quant:
        args += ["--quant", quant, "--dataset", "wds/cifar10", "--calib-batches", "1"]
    return main(args)


def fake_quant(model: str, quant: str, wds_root: Path):
    """The fake-quant model the export starts from (same calibration images: the first train batch)."""
    from qclip.evals.variants import quantize_loaded

    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    return quantize_loaded(load_model(model), quant, spec, calib_batches=1, data_root=str(wds_root))[0].model


@torch.no_grad()
def image_features(model) -> torch.Tensor:
    return model.encode_image(X)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def cosine_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    cos = F.cosine_similarity(a, b)
    return bool(cos.mean() >= 0.99 and cos.min() >= 0.95)


@torch.no_grad()
def per_map_errors(model) -> dict[str, float]:
    """Relative error of each oneDNN map against the reference kernel on the input it sees in a forward pass."""
    inputs, hooks = {}, []
    for name, m in integer_maps(model).items():
        hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: inputs.__setitem__(name, inp[0])))
    model.encode_image(X)
    for h in hooks:
        h.remove()
    errors = {}
    for name, m in integer_maps(model).items():
        fast = m(inputs[name])
        m.kernel = "dequant"
        errors[name] = rel_error(fast, m(inputs[name]))
        m.kernel = "onednn"
    return errors


@pytest.fixture(scope="module")
def vit_w8a8(micro_dir, wds_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "vit-w8a8"
    assert export(f"local-dir:{micro_dir}", out, "w8a8", wds_root) == 0
    return out


@pytest.fixture(scope="module")
def micro_rn_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = open_clip.create_model("qclip-micro-rn")
    return save_open_clip_dir(model, open_clip.get_model_config("qclip-micro-rn"), tmp_path_factory.mktemp("rn") / "rn")


def test_w8a8_export_covers_every_map_with_int8_kernels(vit_w8a8, micro_dir, wds_root):
    # the float folder is a stock open_clip folder
    stock, _, _ = open_clip.create_model_and_transforms(f"local-dir:{vit_w8a8 / 'float'}")
    assert isinstance(stock, open_clip.CLIP)
    manifest = json.loads((vit_w8a8 / "export.json").read_text())
    # an independent count: every linear map + convolution of the image tower (attention surgery exposes q/k/v/out)
    fresh = attention_surgery_(open_clip.create_model("qclip-micro-vit"))
    expected = [m.name for m in list_linear_maps(fresh) if m.tower == "vision"]
    convs = [n for n, m in fresh.visual.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert [e["name"] for e in manifest["maps"]] == expected and len(expected) == 14
    assert all(e["integer_arithmetic"] and e["kernel"] == "onednn" and e["why_float"] is None for e in manifest["maps"])
    assert manifest["summary"]["integer_arithmetic"] == len(expected)
    assert manifest["summary"]["by_op"]["conv2d"] == {"quantized": len(convs), "integer_arithmetic": len(convs)}
    assert manifest["summary"]["by_tower"]["text"]["quantized"] == 0
    # the integer model: every map rebuilt from integer codes, nothing else changed
    loaded = load_model(str(vit_w8a8))
    maps = integer_maps(loaded.model)
    assert sorted(maps) == sorted(expected) and all(m.kernel == "onednn" for m in maps.values())
    tensors = load_file(str(vit_w8a8 / "int.safetensors"))
    assert all(tensors[f"{n}.weight_codes"].dtype == torch.int8 for n in expected)
    # reference kernel = fake-quant model (same grids); int8 kernel within the stated tolerance
    fq = image_features(fake_quant(f"local-dir:{micro_dir}", "w8a8", wds_root))
    ref = image_features(load_export_dir(vit_w8a8, kernel="dequant").model)
    assert rel_error(ref, fq) < 1e-5
    assert cosine_ok(image_features(loaded.model), fq)
    # 8-bit weights x full-range 8-bit activation codes can saturate int16 without VNNI; the manifest says so
    assert all(e["int16_safe"] is False for e in manifest["maps"])
    # the advice follows the int8 path of the CPU the export was checked on, which the manifest records
    cpu = manifest["cpu_features"]
    assert cpu == int8_features() and cpu["int8_path"] in ("avx2", "vnni", "amx", None)
    advice = int8_advice(cpu["int8_path"], len(expected), 8)
    assert manifest["notes"] == ([advice] if advice else [])


@pytest.mark.parametrize("quant", ["w4a8", "w8a7"])
def test_int16_safe_integer_model_equals_fake_quant(micro_dir, wds_root, tmp_path, quant):
    # 4-bit weights, or 7-bit activations (codes in [0, 127]), never saturate oneDNN's int16 pair sums on a CPU
    # without VNNI, so int8 arithmetic reproduces the fake-quant model to float rounding on any x86 CPU
    out = tmp_path / quant
    assert export(f"local-dir:{micro_dir}", out, quant, wds_root) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert all(e["int16_safe"] is True for e in manifest["maps"])
    advice = int8_advice(manifest["cpu_features"]["int8_path"], 0, 7 if quant == "w8a7" else 8)
    assert manifest["notes"] == ([advice] if advice else [])  # w4a8 on any CPU, w8a7 on AVX2: nothing to say
    if quant == "w8a7":  # 7-bit grids in the uint8 frame (signed ones shifted by -qmin = 64): codes 0..127
        tensors = load_file(str(out / "int.safetensors"))
        assert all(tensors[f"{e['name']}.act_range"].tolist() == [0, 127] for e in manifest["maps"])
    fq = image_features(fake_quant(f"local-dir:{micro_dir}", quant, wds_root))
    model = load_model(str(out)).model
    errors = per_map_errors(model)
    assert len(errors) == 14 and max(errors.values()) < 1e-5, errors
    assert cosine_ok(image_features(model), fq)


def test_weight_only_and_per_group_exports_are_dequantized(micro_dir, wds_root, tmp_path):
    # weight-only: no integer GEMM (float activations); stock open_clip on the float folder = fake-quant model
    out = tmp_path / "w4"
    assert export(f"local-dir:{micro_dir}", out, "w4", wds_root) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["summary"]["integer_arithmetic"] == 0 and manifest["summary"]["maps"] == 14
    assert all(e["kernel"] == "dequant" and "weight-only" in e["why_float"] for e in manifest["maps"])
    fq = image_features(fake_quant(f"local-dir:{micro_dir}", "w4", wds_root))
    stock, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out / 'float'}")
    assert rel_error(image_features(stock.eval()), fq) < 1e-5
    assert rel_error(image_features(load_model(str(out)).model), fq) < 1e-5
    # per-group weights have no oneDNN kernel: listed as dequantized, with the reason
    out = tmp_path / "g32"
    assert export(f"local-dir:{micro_dir}", out, "w4a8-g32", wds_root) == 0
    entries = json.loads((out / "export.json").read_text())["maps"]
    assert all(not e["integer_arithmetic"] and "per-group" in e["why_float"] for e in entries)


def test_resnet_convolutions_run_as_int8(micro_rn_dir, wds_root, tmp_path):
    out = tmp_path / "rn"
    assert export(f"local-dir:{micro_rn_dir}", out, "w8a8", wds_root) == 0
    manifest = json.loads((out / "export.json").read_text())
    fresh = attention_surgery_(open_clip.create_model("qclip-micro-rn"))
    convs = [f"visual.{n}" for n, m in fresh.visual.named_modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m.name for m in list_linear_maps(fresh, include_conv=False) if m.tower == "vision"]
    assert len(convs) == 19 and len(linears) == 4  # the demo's tower layout: 19 convolutions + attention pool
    by_op = {op: [e["name"] for e in manifest["maps"] if e["op"] == op and e["integer_arithmetic"]]
             for op in ("conv2d", "linear")}
    assert by_op == {"conv2d": convs, "linear": linears}
    model = load_model(str(out)).model
    assert sum(isinstance(m, IntConv2d) for m in model.modules()) == 19
    assert sum(isinstance(m, IntLinear) for m in model.modules()) == 4
    fq = image_features(fake_quant(f"local-dir:{micro_rn_dir}", "w8a8", wds_root))
    assert cosine_ok(image_features(model), fq)


def test_eval_of_an_export_folder_scores_the_integer_model(vit_w8a8, wds_root, tmp_path):
    from qclip.evals.features import dataset_features
    from qclip.evals.zeroshot import build_zero_shot_classifier, model_fingerprint

    common = ["--dataset", "wds/cifar10", "--data-root", str(wds_root), "--limit", "64", "--bootstrap", "0",
              "--workers", "0", "--no-progress"]
    # warm the feature cache with the float model first: the integer model must not get its features
    assert main(["eval", "--model", f"local-dir:{vit_w8a8 / 'float'}", "--out", str(tmp_path / "f.json"), *common]) == 0
    assert main(["eval", "--model", str(vit_w8a8), "--out", str(tmp_path / "i.json"), *common]) == 0
    record = json.loads((tmp_path / "i.json").read_text())
    loaded = load_model(str(vit_w8a8))
    floats = load_model(f"local-dir:{vit_w8a8 / 'float'}")
    reference = load_export_dir(vit_w8a8, kernel="dequant")
    keys = {model_fingerprint(m.model) for m in (loaded, floats, reference)}
    assert len(keys) == 3  # integer, float and fake-quant reference never share a cache entry
    spec = resolve_dataset("wds/cifar10", str(wds_root), "test")
    feats, labels = [], []
    with torch.no_grad():
        for images, y in make_loader(spec, loaded.preprocess, batch_size=64, num_workers=0, limit=64):
            feats.append(loaded.model.encode_image(images))
            labels.append(y)
        clf = build_zero_shot_classifier(loaded.model, loaded.tokenizer, spec.classnames, spec.templates)
    feats, labels = torch.cat(feats), torch.cat(labels)
    acc1 = float(((F.normalize(feats, dim=-1) @ clf).argmax(-1) == labels).float().mean())
    assert record["n"] == 64 and record["metrics"]["acc1"] == pytest.approx(acc1, abs=1e-12)
    cached, _ = dataset_features(loaded.model, loaded.preprocess, spec, model_key=model_fingerprint(loaded.model),
                                 limit=64, num_workers=0, progress=False)
    float_cached, _ = dataset_features(floats.model, floats.preprocess, spec,
                                       model_key=model_fingerprint(floats.model), limit=64, num_workers=0,
                                       progress=False)
    # cached (eval's batches) vs this loop's batch of 64: oneDNN may pick another int8 kernel per batch size (VNNI,
    # AMX), which moves float32 requantization by ulps: 1e-5 on O(1) features, 10x under the float-vs-int gap
    assert torch.allclose(cached, feats, atol=1e-5) and not torch.allclose(cached, float_cached, atol=1e-4)
    # --quant on an export folder is refused in one line
    assert main(["eval", "--model", str(vit_w8a8), "--quant", "w8a8", "--out", str(tmp_path / "x.json"), *common]) == 2


@pytest.mark.slow
def test_eval_compile_runs_the_compiled_integer_tower(vit_w8a8, wds_root, tmp_path):
    common = ["--dataset", "wds/cifar10", "--data-root", str(wds_root), "--limit", "32", "--batch-size", "32",
              "--bootstrap", "0", "--workers", "0", "--no-progress"]
    assert main(["eval", "--model", str(vit_w8a8), "--out", str(tmp_path / "e.json"), *common]) == 0
    assert main(["eval", "--model", str(vit_w8a8), "--compile", "--out", str(tmp_path / "c.json"), *common]) == 0
    eager, compiled = (json.loads((tmp_path / f).read_text())["metrics"] for f in ("e.json", "c.json"))
    # the same kernels; Inductor's fused float ops may flip a rounding (one sample at most here)
    assert abs(compiled["acc1"] - eager["acc1"]) <= 1 / 32 and compiled["nll"] == pytest.approx(eager["nll"], rel=1e-2)


def test_fit_checkpoint_exports_its_learned_steps(micro_dir, wds_root, tmp_path, monkeypatch):
    from test_fit import fit_args

    monkeypatch.setenv("QCLIP_DATA_ROOT", str(wds_root))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "fit"
    assert main(fit_args(micro_dir, root, "--trainer.max_steps", "2", "--model.scale_lr", "0.05",
                         "--trainer.logger", "false")) == 0
    ckpt = root / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    name = "visual.transformer.resblocks.0.mlp.c_fc"
    step = state[f"model.{name}.weight_quant.step"]
    act_step = state[f"model.{name}.input_quant.step"]
    out = tmp_path / "exported"
    assert export(str(ckpt), out, "w4a8-lsq", wds_root) == 0
    for folder in (root / "export", out):  # qclip fit's own export and qclip export of its checkpoint
        tensors = load_file(str(folder / "int.safetensors"))
        assert torch.equal(tensors[f"{name}.weight_scale"].reshape(-1), step.reshape(-1).float())
        assert torch.equal(tensors[f"{name}.act_scale"].reshape(()), act_step.reshape(()).float())
        assert int(tensors[f"{name}.act_zero_point"]) == 128  # signed LSQ codes in the uint8 frame
        assert int(tensors[f"{name}.weight_codes"].abs().max()) <= 8
        entries = {e["name"]: e for e in json.loads((folder / "export.json").read_text())["maps"]}
        assert entries[name]["grid"] == "lsq_step" and entries[name]["integer_arithmetic"]


def test_export_bad_input_exits_2(micro_dir, vit_w8a8, wds_root, tmp_path, capsys):
    model = f"local-dir:{micro_dir}"
    assert main(["export", "--model", model, "--quant", "w8a8", "--out", str(tmp_path / "a")]) == 2  # no --dataset
    assert main(["export", "--model", model, "--quant", "w9", "--out", str(tmp_path / "b")]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["export", "--model", model, "--out", str(tmp_path / "file")]) == 2
    assert main(["export", "--model", str(vit_w8a8), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("qclip: error:") for line in err)
    # a damaged manifest or integer file is a one-line load error
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "export.json").write_text("{not json")
    assert main(["eval", "--model", str(broken), "--dataset", "wds/cifar10", "--data-root", str(wds_root),
                 "--out", str(tmp_path / "x.json"), "--no-progress", "--workers", "0"]) == 2
    assert "export manifest" in capsys.readouterr().err


# ------------------------------------------------------------------ int8 paths per CPU (injected CPU features)
@pytest.mark.parametrize(("flags", "path"), [
    ({"sse4_2", "avx2", "fma"}, "avx2"),
    ({"avx2", "avx512f", "avx512_vnni"}, "vnni"),
    ({"avx2", "avx_vnni"}, "vnni"),  # Alder Lake-style AVX-VNNI without AVX-512
    ({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}, "amx"),
    ({"sse4_2"}, None),
])
def test_int8_path_from_cpu_flags(flags, path):
    feats = int8_features(frozenset(flags))
    assert feats["int8_path"] == path
    assert set(feats["flags"]) == flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}


def test_w8a7_is_recommended_only_without_vnni():
    # AVX2: 8-bit x full-range 8-bit maps saturate int16 pair sums -> recommend w8a7; nothing when all maps are safe
    avx2 = int8_advice("avx2", 23, 8)
    assert "no VNNI" in avx2 and "w8a7" in avx2 and "23 maps" in avx2
    assert int8_advice("avx2", 0, 7) is None and int8_advice("avx2", 0, 8) is None
    for path, unit in (("vnni", "VNNI"), ("amx", "AMX-INT8")):
        w8a8 = int8_advice(path, 23, 8)  # exact int32 sums: says so, and names w8a7 only for AVX2-only CPUs
        assert unit in w8a8 and "exactly in int32" in w8a8 and "AVX2-only" in w8a8
        w8a7 = int8_advice(path, 0, 7)
        assert unit in w8a7 and "w8a8" in w8a7 and "only avoid" in w8a7
        assert int8_advice(path, 0, 8) is None  # e.g. w4a8: nothing to say
    assert int8_advice(None, 23, 8) is None  # unknown CPU: no claim either way
