"""quant: surgery equivalence and coverage, torchao-exact fake quant, LSQ gradients, rotation, truncation,
SmoothQuant, logit-scale tuning, spec parsing, and save/load round trips."""

from __future__ import annotations

import copy
import math

import numpy as np
import open_clip
import pytest
import torch
from conftest import MICRO
from qclip.evals.metrics.temperature import fit_logit_scale, nll_at
from qclip.quant.api import convert_to_float_, quantize_
from qclip.quant.export import export_int_, load_int, save_int
from qclip.quant.lsq import LSQQuantizer, clamp_steps_, lsq_quantize
from qclip.quant.primitives import (
    EPS,
    fake_quantize,
    fake_quantize_weight,
    qparams_from_minmax,
    qrange,
)
from qclip.quant.rotation import HadamardRotation, hadamard, rotation_matrix
from qclip.quant.smoothquant import apply_smoothquant_
from qclip.quant.spec import QuantSpec, RankSpec, parse_spec
from qclip.quant.surgery import (
    LinearMHA,
    attention_surgery_,
    is_surgically_changed,
    list_linear_maps,
)
from qclip.quant.truncation import kept_rank, truncate_weight
from scipy.optimize import minimize_scalar
from torch import nn
from torchao.quantization.qat import IntxFakeQuantizeConfig, IntxFakeQuantizer
from torchao.quantization.quant_primitives import (
    MappingType,
    choose_qparams_affine,
    dequantize_affine,
    quantize_affine,
)

from qclip.io.demo import DEMO_MODEL_NAME, register_model_configs

register_model_configs()
ARCHS = [MICRO, DEMO_MODEL_NAME]


def build(name: str) -> nn.Module:
    """A seeded random-init open_clip model in eval mode."""
    torch.manual_seed(0)
    return open_clip.create_model(name).eval()


def inputs(name: str):
    """A seeded image batch and two prompts for model `name`."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), open_clip.get_tokenizer(name)(["a photo of a cat.", "a truck"])


def max_diff(a: nn.Module, b: nn.Module, name: str) -> tuple[float, float]:
    """Largest absolute difference of image and text embeddings of two models."""
    x, t = inputs(name)
    with torch.no_grad():
        return ((a.encode_image(x) - b.encode_image(x)).abs().max().item(),
                (a.encode_text(t) - b.encode_text(t)).abs().max().item())


def calibrator(name: str):
    """calibrate(model) over the test inputs (both towers)."""
    x, t = inputs(name)
    return lambda model: (model.encode_image(x), model.encode_text(t))


# ----------------------------------------------------------------------------------------------------- surgery
@pytest.mark.parametrize("name", ARCHS)
def test_surgery_is_equivalent_and_keeps_keys(name):
    ref = build(name)
    cut = attention_surgery_(copy.deepcopy(ref))
    assert is_surgically_changed(cut) and not is_surgically_changed(ref)
    di, dt = max_diff(ref, cut, name)
    assert di <= 1e-5 and dt <= 1e-5
    sd_ref, sd_cut = ref.state_dict(), cut.state_dict()
    assert sorted(sd_ref) == sorted(sd_cut)  # same keys (a projection moves after the parameters)
    assert all(torch.equal(sd_ref[k], sd_cut[k]) for k in sd_ref)
    stock = open_clip.create_model(name)  # stock open_clip loads the surgically changed checkpoint...
    stock.load_state_dict(sd_cut)
    again = attention_surgery_(open_clip.create_model(name))  # ...and a changed model loads a stock one
    again.load_state_dict(sd_ref)
    assert max(max_diff(ref, again.eval(), name)) <= 1e-5


@pytest.mark.parametrize("name, vision, text", [(MICRO, 2 * 6 + 1 + 1, 2 * 6 + 1), (DEMO_MODEL_NAME, 19 + 4, 4 * 6 + 1)])
def test_surgery_exposes_every_linear_map(name, vision, text):
    model = attention_surgery_(build(name))
    maps = list_linear_maps(model)
    assert sum(m.tower == "vision" for m in maps) == vision
    assert sum(m.tower == "text" for m in maps) == text
    # 100%: every nn.Linear / nn.Conv2d of the model is listed, and every weight matrix that feeds a matmul
    listed = {m.name for m in maps}
    assert listed == {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    blocks = [n for n, m in model.named_modules() if isinstance(m, LinearMHA)]
    for b in blocks:
        assert {f"{b}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")} <= listed
    roles = {(m.tower, m.role) for m in maps}
    assert ("vision", "proj") in roles or name == DEMO_MODEL_NAME  # ResNet: attnpool c_proj is the projection
    assert ("text", "proj") in roles


def test_vit_b32_shaped_coverage():
    model = attention_surgery_(open_clip.create_model("ViT-B-32"))
    maps = list_linear_maps(model, include_conv=False)
    per_tower = {t: sum(m.tower == t for m in maps) for t in ("vision", "text")}
    assert per_tower == {"vision": 12 * 6 + 1, "text": 12 * 6 + 1}  # q,k,v,out,fc1,fc2 per block + projection


@pytest.mark.parametrize("batch_first", [True, False])
def test_linear_mha_matches_torch_with_masks_and_weights(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    lin = LinearMHA.from_mha(mha).eval()
    q = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    causal = torch.triu(torch.full((5, 5), float("-inf")), 1)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    with torch.no_grad():
        for kwargs in ({}, {"attn_mask": causal}, {"key_padding_mask": pad}, {"attn_mask": causal.isinf()}):
            a, _ = mha(q, q, q, need_weights=False, **kwargs)
            b, _ = lin(q, q, q, need_weights=False, **kwargs)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        a, wa = mha(q, q, q, need_weights=True, attn_mask=causal)
        b, wb = lin(q, q, q, need_weights=True, attn_mask=causal)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        torch.testing.assert_close(wa, wb, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------- fake quant vs torchao
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("granularity", ["per_channel", "per_group"])
def test_weight_fake_quant_equals_torchao_qat(bits, granularity):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(bits))
    group = 16 if granularity == "per_group" else None
    cfg = IntxFakeQuantizeConfig(getattr(torch, f"int{bits}"), granularity if group is None else None,
                                 group_size=group, is_symmetric=True)
    ref = IntxFakeQuantizer(cfg)(w)
    ours = fake_quantize_weight(w, bits, granularity=granularity, group_size=group)
    assert torch.equal(ours, ref)
    for block in ours.reshape(-1, group or 64):  # each scale group uses at most 2^bits levels
        assert block.unique().numel() <= 2 ** bits


@pytest.mark.parametrize("bits, symmetric", [(8, False), (4, False), (8, True), (3, True)])
def test_activation_fake_quant_equals_torchao_primitives(bits, symmetric):
    x = torch.randn(4096, generator=torch.Generator().manual_seed(bits)) * 2.5 + 0.7
    qmin, qmax = qrange(bits, symmetric)
    scale, zp = qparams_from_minmax(x.min(), x.max(), bits, symmetric)
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    dtype = torch.int8 if symmetric else torch.uint8
    s2, z2 = choose_qparams_affine(x, mapping, (x.numel(),), dtype, quant_min=qmin, quant_max=qmax, eps=EPS,
                                   zero_point_dtype=torch.float32)
    assert torch.equal(scale.reshape(1), s2.reshape(1)) and torch.equal(zp.reshape(1), z2.reshape(1))
    q = quantize_affine(x, (x.numel(),), s2, z2, dtype, qmin, qmax)
    ref = dequantize_affine(q, (x.numel(),), s2, z2, dtype, qmin, qmax)
    assert torch.equal(fake_quantize(x, scale, zp, qmin, qmax), ref)


def test_lsq_forward_equals_torchao_dequantize():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    step = torch.rand(8, 1, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.01
    qmin, qmax = qrange(4, True)
    ours = lsq_quantize(x, step, qmin, qmax, g=0.3)
    q = quantize_affine(x, (1, 32), step, torch.zeros_like(step), torch.int8, qmin, qmax)
    ref = dequantize_affine(q, (1, 32), step, torch.zeros_like(step), torch.int8, qmin, qmax)
    assert torch.equal(ours, ref)


# ------------------------------------------------------------------------------------------------ LSQ gradients
@pytest.mark.parametrize("per_channel", [True, False])
def test_lsq_gradients_match_closed_form(per_channel):
    torch.manual_seed(0)
    x = (torch.randn(6, 40) * 0.5).requires_grad_(True)
    quant = LSQQuantizer(4, per_channel=per_channel, channels=6)
    quant.init_from(step=torch.full((6,) if per_channel else (1,), 0.05))
    upstream = torch.randn(6, 40)
    (quant(x) * upstream).sum().backward()
    qmin, qmax = qrange(4, True)
    s = quant.step.detach().view(-1, 1) if per_channel else quant.step.detach().view(1, 1)
    v = x.detach() / s
    inside = (v >= qmin) & (v <= qmax)
    dstep = torch.where(inside, torch.round(v) - v, torch.where(v < qmin, float(qmin), float(qmax)))
    n = 40 if per_channel else 240
    g = 1.0 / math.sqrt(n * qmax)
    expected_step = (dstep * upstream).sum(1) * g if per_channel else (dstep * upstream).sum().reshape(1) * g
    torch.testing.assert_close(quant.step.grad, expected_step, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, upstream * inside)


def test_clamp_steps_keeps_lsq_steps_positive():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[0].q, model[1].q = LSQQuantizer(4, per_channel=True, channels=3), LSQQuantizer(8, per_channel=False)
    with torch.no_grad():
        model[0].q.step.copy_(torch.tensor([0.5, -0.2, 0.0]))
        model[1].q.step.fill_(0.1)
    model[0].q.initialized.fill_(True)  # steps as an optimizer left them: no re-initialisation from data
    assert clamp_steps_(model, min_step=1e-6) == 2
    assert model[0].q.step.tolist() == pytest.approx([0.5, 1e-6, 1e-6]) and model[1].q.step.item() == pytest.approx(0.1)
    assert clamp_steps_(model, min_step=1e-6) == 0
    w = torch.randn(3, 5)  # per-channel steps: one per row of a weight
    assert torch.isfinite(model[0].q(w)).all()  # a zero step would have divided by zero


def test_lsq_step_gradient_matches_finite_difference_of_smoothed_loss():
    # Between rounding boundaries the output is q·s with q fixed, so d/ds = q exactly (g = 1 here)
    x = torch.tensor([0.123, -0.377, 0.9, -2.0])
    step = torch.tensor(0.1, requires_grad=True)
    out = lsq_quantize(x, step, -8, 7, g=1.0)
    out.sum().backward()
    eps = 1e-4
    fd = (lsq_quantize(x, step.detach() + eps, -8, 7, 1.0).sum() - lsq_quantize(x, step.detach() - eps, -8, 7, 1.0).sum()) / (2 * eps)
    v = x / 0.1
    closed = torch.where((v >= -8) & (v <= 7), torch.round(v) - v, torch.clamp(v, -8, 7)).sum()
    assert step.grad.item() == pytest.approx(closed.item(), abs=1e-5)
    # finite differences see only the piecewise-constant part q (LSQ adds the -v term by design)
    assert fd.item() == pytest.approx(torch.clamp(torch.round(v), -8, 7).sum().item(), abs=1e-2)


# -------------------------------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_hadamard_is_orthogonal(n):
    h = hadamard(n, torch.float64)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64))


def test_block_rotation_of_non_power_of_two():
    r = rotation_matrix(96, torch.float64)  # 3 blocks of 32
    torch.testing.assert_close(r @ r.T, torch.eye(96, dtype=torch.float64))
    rot = HadamardRotation(96)
    x = torch.randn(5, 96, dtype=torch.float64)
    torch.testing.assert_close(rot.double()(x), x @ r.T)


@pytest.mark.parametrize("name", ARCHS)
def test_rotation_leaves_float_function_unchanged(name):
    ref = build(name)
    spec = QuantSpec(w_bits=8, a_bits=None, method="rotation", scope="vision+text")
    rot = copy.deepcopy(ref)
    attention_surgery_(rot)
    from qclip.quant.modules import (
        quantize_module_,  # rotation alone: fold Hᵀ into W, rotate inputs online
    )
    for m in list_linear_maps(rot):
        mod = rot.get_submodule(m.name)
        r = HadamardRotation(mod.weight.shape[1], dim=1 if isinstance(mod, nn.Conv2d) else -1)
        with torch.no_grad():
            mod.weight.copy_(r.fold_into_weight(mod.weight))
        quantize_module_(mod, input_rotation=r)
    di, dt = max_diff(ref, rot, name)
    assert di <= 1e-5 and dt <= 1e-5
    # the spec flag drives quantize_maps_: a rotation spec rotates, an RTN spec does not
    assert spec.rotates and not QuantSpec(w_bits=8, a_bits=None, method="rtn").rotates
    assert parse_spec("w4a8-rot-lsq").rotates and not parse_spec("w4a8-lsq").rotates


# ------------------------------------------------------------------------------------------------ truncation
def test_full_rank_truncation_is_identity():
    w = torch.randn(12, 20, generator=torch.Generator().manual_seed(0))
    for mode, value in (("energy", 1.0), ("fraction", 1.0), ("topk", 12)):
        wk, k, share = truncate_weight(w, mode, value)
        assert k == 12 and share == pytest.approx(1.0)
        torch.testing.assert_close(wk, w, atol=1e-5, rtol=0)


def test_truncation_ranks_match_numpy_svd():
    w = torch.randn(16, 30, generator=torch.Generator().manual_seed(2))
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    cum = np.cumsum(s ** 2) / np.sum(s ** 2)
    assert kept_rank(torch.from_numpy(s), "energy", 0.75) == int(np.searchsorted(cum, 0.75) + 1)
    assert kept_rank(torch.from_numpy(s), "fraction", 0.25) == 4
    wk, k, share = truncate_weight(w, "topk", 5)
    assert k == 5 and np.linalg.matrix_rank(wk.double().numpy(), tol=1e-4) == 5
    assert share == pytest.approx(float(np.sum(s[:5] ** 2) / np.sum(s ** 2)))
    # Eckart–Young: the error is the energy of the dropped singular values
    assert float((w - wk).double().norm() ** 2) == pytest.approx(float(np.sum(s[5:] ** 2)), rel=1e-4)


def test_rank_spec_through_quantize_model():
    model = build(MICRO)
    report = quantize_(model, "rank-k4")
    assert report.truncation and all(r.kept == 4 for r in report.truncation)
    assert all(m.tower == "vision" for m in report.maps)


# ----------------------------------------------------------------------------------------------- SmoothQuant
def test_smoothquant_leaves_float_function_unchanged():
    ref = build(MICRO)
    smooth = attention_surgery_(copy.deepcopy(ref))
    n = apply_smoothquant_(smooth, ("visual", "transformer"), calibrator(MICRO), alpha=0.5)
    assert n == 2 * 2 * 2  # 2 towers x 2 blocks x (ln_1 -> qkv, ln_2 -> fc1)
    di, dt = max_diff(ref, smooth, MICRO)
    assert di <= 1e-5 and dt <= 1e-5
    assert not torch.equal(smooth.visual.transformer.resblocks[0].ln_1.weight,
                           ref.visual.transformer.resblocks[0].ln_1.weight)


# ---------------------------------------------------------------------------------------------- quantize_
@pytest.mark.parametrize("spec", ["w8a8", "w6a8", "w4a8", "w8a8-smoothquant", "w8a8-rot", "w8a8-lsq", "w8a8-rot-lsq",
                                  "w8a8-mse", "w8a8-pct", "w8a8-ema", "w4-g16", "w8a8-vt"])
def test_quantize_model_runs_and_covers_scope(spec):
    ref = build(MICRO)
    model = copy.deepcopy(ref)
    report = quantize_(model, spec, calibrator(MICRO))
    parsed = parse_spec(spec)
    assert report.coverage["vision"] == (14, 14)
    assert report.coverage["text"] == ((13, 13) if parsed.scope == "vision+text" else (0, 13))
    x, _ = inputs(MICRO)
    with torch.no_grad():
        rel = ((model.encode_image(x) - ref.encode_image(x)).norm() / ref.encode_image(x).norm()).item()
    assert 0 < rel < (0.08 if parsed.w_bits == 8 else 0.5)


def test_more_bits_means_less_error():
    ref = build(MICRO)
    x, _ = inputs(MICRO)
    errors = []
    for bits in (3, 4, 6, 8):
        model = copy.deepcopy(ref)
        quantize_(model, f"w{bits}", None)
        with torch.no_grad():
            errors.append((model.encode_image(x) - ref.encode_image(x)).norm().item())
    assert errors == sorted(errors, reverse=True)


def _snapshot(model: nn.Module) -> tuple[list, dict, bool]:
    """Module types, state dict and mode: what a refused call must leave as it was."""
    return [type(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}, model.training


def _unchanged(model: nn.Module, before: tuple[list, dict, bool]) -> bool:
    types, state, training = before
    now = model.state_dict()
    return ([type(m) for m in model.modules()] == types and now.keys() == state.keys()
            and all(torch.equal(now[k], v) for k, v in state.items()) and model.training == training)


def test_quantize_model_needs_calibration_and_a_fresh_model():
    model = build(MICRO).train()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="calibrate"):
        quantize_(model, "w8a8")
    assert _unchanged(model, before)  # refused before surgery, eval() or any quantizer
    with pytest.raises(TypeError, match="callable"):
        quantize_(model, "w8", calibrate="not a function")
    assert _unchanged(model, before)
    quantize_(model, "w8", None)
    assert not _unchanged(model, before)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(model, "w8", None)


# ------------------------------------------------------------------------------------------ temperature tuning
def test_logit_scale_fit_matches_scipy_and_recovers_truth():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(4000, 10, generator=g) * 0.6 - 0.3
    labels = torch.multinomial(torch.softmax(25.0 * cos, 1), 1, generator=g).squeeze(1)
    t = fit_logit_scale(cos, labels)
    ref = minimize_scalar(lambda b: nll_at(b, cos, labels), bounds=(0.01, 1000), method="bounded",
                          options={"xatol": 1e-8})
    assert math.exp(t) == pytest.approx(ref.x, rel=1e-4)
    assert math.exp(t) == pytest.approx(25.0, rel=0.15)
    assert fit_logit_scale(cos, labels) == t  # deterministic


# ------------------------------------------------------------------------------------------------------ specs
@pytest.mark.parametrize("text", ["w8a8", "w6a8", "w4a8", "w4a8-rot", "w6a8-smoothquant", "w6a8-lsq", "w4",
                                  "w8a8-vt", "w4a8-rot-lsq-vt", "w4a8-g64-mse-asym", "w8a8-pt-pct",
                                  "w2a8-ema", "rank-e0.9", "rank-f0.5", "rank-k16-vt"])
def test_spec_round_trips(text):
    spec = parse_spec(text)
    assert str(spec) == text
    assert parse_spec(str(spec)) == spec


def test_spec_fields():
    s = parse_spec("w4a8-rot-lsq-vt")
    assert (s.w_bits, s.a_bits, s.method, s.scope, s.granularity) == (4, 8, "rotation+lsq", "vision+text",
                                                                      "per_channel")
    assert parse_spec("w4").a_bits is None
    assert parse_spec("rank-e0.9") == RankSpec("energy", 0.9)
    assert parse_spec("w6a8-sq").method == "smoothquant"


@pytest.mark.parametrize("text, field", [("w9a8", "w_bits"), ("w1", "w_bits"), ("w8a9", "a_bits"),
                                         ("w8a8-foo", "unknown part"), ("x8a8", "w<bits>"), ("", "empty"),
                                         ("w4-smoothquant", "a_bits"), ("w4a8-lsq-g32", "per_group"),
                                         ("w8a8-rot-sq", "cannot be combined"), ("rank-e1.5", "value"),
                                         ("rank-k0", "value"), ("rank-x3", "rank spec")])
def test_spec_rejects_bad_input(text, field):
    with pytest.raises(ValueError, match=field):
        parse_spec(text)


def test_spec_dataclass_validates_fields():
    with pytest.raises(ValueError, match="granularity"):
        QuantSpec(granularity="per_row")
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec(granularity="per_group")
    with pytest.raises(ValueError, match="observer"):
        QuantSpec(observer="kl")
    with pytest.raises(ValueError, match="scope"):
        QuantSpec(scope="text")
    with pytest.raises(ValueError, match="smoothquant_alpha"):
        QuantSpec(method="smoothquant", smoothquant_alpha=1.5)


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("spec", ["w8a8", "w4", "w4-vt"])
def test_int_export_save_load_round_trip(spec, tmp_path):
    ref = build(MICRO)
    model = copy.deepcopy(ref)
    parsed = parse_spec(spec)
    quantize_(model, parsed, calibrator(MICRO))
    fake = copy.deepcopy(model)
    n = export_int_(model, parsed)
    assert n == (13 if parsed.scope == "vision" else 26)
    assert "Tensor" in type(model.visual.transformer.resblocks[0].attn.q_proj.weight).__name__
    save_int(model, tmp_path / "int.pt")
    loaded = load_int(open_clip.create_model(MICRO), parsed, tmp_path / "int.pt")
    assert max(max_diff(model, loaded, MICRO)) == 0.0
    if parsed.a_bits is None:  # weight-only: torchao's integer weights hold exactly the fake-quant grid values
        assert max(max_diff(model, fake, MICRO)) <= 1e-4
    else:  # torchao quantizes activations per token, dynamically: close to the static fake-quant model
        assert max(max_diff(model, ref, MICRO)) < 0.1


def test_float_export_loads_in_stock_open_clip(tmp_path):
    ref = build(MICRO)
    model = copy.deepcopy(ref)
    quantize_(model, "w4a8-lsq", calibrator(MICRO))
    expected = model.visual.transformer.resblocks[0].mlp.c_fc.weight_quant(
        model.visual.transformer.resblocks[0].mlp.c_fc.weight).detach()
    convert_to_float_(model)
    assert type(model.visual.transformer.resblocks[0].mlp.c_fc) is nn.Linear
    torch.testing.assert_close(model.visual.transformer.resblocks[0].mlp.c_fc.weight, expected)
    torch.save(model.state_dict(), tmp_path / "float.pt")
    stock = open_clip.create_model(MICRO)
    stock.load_state_dict(torch.load(tmp_path / "float.pt", weights_only=True))
    assert max(max_diff(model, stock.eval(), MICRO)) <= 1e-5


@pytest.mark.parametrize("xshape, sshape", [((6, 40), (6, 1)), ((6, 40), ()), ((4, 8, 5, 5), (8, 1, 1)),
                                            ((4, 8, 5, 5), (4, 1, 1, 1))])
def test_fused_lsq_equals_autograd_reference(xshape, sshape):

    g = torch.Generator().manual_seed(3)
    x = torch.randn(*xshape, generator=g) * 0.4
    step = torch.rand(*sshape, generator=g) * 0.05 + 0.02 if sshape else torch.tensor(0.03)
    upstream = torch.randn(*xshape, generator=g)
    results = []
    for fn in (lsq_quantize, lsq_quantize_reference):
        xx, ss = x.clone().requires_grad_(), step.clone().requires_grad_()
        y = fn(xx, ss, -8, 7, 0.37)
        (y * upstream).sum().backward()
        results.append((y.detach(), xx.grad, ss.grad))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["lsq", "torchao"])
def test_prepare_train_convert_qat(backend, tmp_path):
    from qclip.quant.qat import convert_qat_, prepare_qat_

    ref = build(MICRO)
    model = copy.deepcopy(ref)
    report = prepare_qat_(model, "w4a8", calibrator(MICRO), backend=backend)
    assert report.coverage["vision"] == (14, 14)
    x, t = inputs(MICRO)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "step" in n or "scale" in n}
    assert before, "QAT must expose learnable quantizer scales"
    loss = (model.encode_image(x) - ref.encode_image(x).detach()).pow(2).mean()
    loss.backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed, "no quantizer scale was trained"
    convert_qat_(model.eval())
    kinds = {type(model.get_submodule(m.name)) for m in list_linear_maps(model)}
    assert kinds <= {nn.Linear, nn.Conv2d, __import__("qclip.quant.surgery", fromlist=["x"]).ProjectionLinear}
    torch.save(model.state_dict(), tmp_path / "qat.pt")
    stock = open_clip.create_model(MICRO)
    stock.load_state_dict(torch.load(tmp_path / "qat.pt", weights_only=True))
    assert max(max_diff(model, stock.eval(), MICRO)) <= 1e-5


def test_qat_rejects_untrainable_recipes():
    from qclip.quant.qat import prepare_qat_

    with pytest.raises(ValueError, match="cannot be trained"):
        prepare_qat_(build(MICRO), "w8a8-smoothquant", calibrator(MICRO))
    with pytest.raises(ValueError, match="'lsq' backend"):
        prepare_qat_(build(MICRO), "w4a8-rot-lsq", calibrator(MICRO), backend="torchao")
    with pytest.raises(ValueError, match="backend"):
        prepare_qat_(build(MICRO), "w4a8-lsq", calibrator(MICRO), backend="tensorrt")


@pytest.mark.parametrize("beta, shift", [(20.0, 0.0), (20.0, 0.4), (60.0, -0.2), (5.0, 0.1)])
def test_logit_scale_fit_converges_for_shifted_cosines(beta, shift):
    g = torch.Generator().manual_seed(int(beta))
    cos = torch.rand(5000, 10, generator=g) * 0.5 + shift
    labels = torch.multinomial(torch.softmax(beta * cos, 1), 1, generator=g).squeeze(1)
    ref = minimize_scalar(lambda b: nll_at(b, cos, labels), bounds=(0.01, 1000), method="bounded",
                          options={"xatol": 1e-8})
    assert math.exp(fit_logit_scale(cos, labels)) == pytest.approx(ref.x, rel=1e-4)


def lsq_quantize_reference(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, g: float) -> torch.Tensor:
    """LSQ written with straight-through tricks (autograd derives the gradients): the fused operator's reference."""
    from qclip.quant.lsq import grad_scale, round_ste

    s = grad_scale(step, g)
    return round_ste(torch.clamp(x * (1.0 / s), qmin, qmax)) * s



def test_prepare_qat_refuses_before_touching_the_model():
    from qclip.quant.qat import prepare_qat_

    model = build(MICRO).train()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="calibrate"):
        prepare_qat_(model, "w4a8-lsq", None, backend="torchao")
    with pytest.raises(ValueError, match="backend"):
        prepare_qat_(model, "w4a8-lsq", None, backend="nope")
    with pytest.raises(ValueError, match="cannot be trained"):
        prepare_qat_(model, "w4a8-smoothquant", None)
    assert _unchanged(model, before)
