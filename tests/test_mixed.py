"""quant.mixed: the `mp` spec grammar, spectral sensitivities, the exact budgeted allocation (vs brute force and a
case greedy gets wrong), the random baseline, and `quantize_` with per-map weight widths on a micro model."""

from __future__ import annotations

import copy
import itertools
import math

import open_clip
import pytest
import torch
from conftest import MICRO
from qclip.quant import mixed
from qclip.quant.api import quantize_, quantize_maps_
from qclip.quant.mixed import (
    allocate_bits,
    assign_bits,
    average_bits,
    random_bits,
    sensitivity_table,
    spectral_sensitivity,
    top_rank,
    total_sensitivity,
)
from qclip.quant.modules import effective_weight, is_quantized
from qclip.quant.primitives import fake_quantize_weight
from qclip.quant.spec import MixedSpec, parse_spec
from qclip.quant.surgery import attention_surgery_, is_surgically_changed, list_linear_maps
from qclip.spectral.weights import error_energy_split

EPS = 1e-12


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """The seeded micro ViT, surgically changed (never quantized: tests copy it)."""
    torch.manual_seed(0)
    return attention_surgery_(open_clip.create_model(MICRO).eval())


@pytest.fixture(scope="module")
def vision(reference):
    """(modules, params, sensitivity table) of the micro model's vision maps."""
    modules = {m.name: reference.get_submodule(m.name) for m in list_linear_maps(reference) if m.tower == "vision"}
    params = {n: m.weight.numel() for n, m in modules.items()}
    return modules, params, sensitivity_table(modules)


def calibrator():
    """calibrate(model) over a seeded image batch and two prompts (both towers)."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = open_clip.get_tokenizer(MICRO)(["a photo of a cat.", "a truck"])
    return lambda model: (model.encode_image(x), model.encode_text(t))


# ------------------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("text, expected", [
    ("mp4.5", MixedSpec(4.5)),
    ("mp6", MixedSpec(6)),
    ("mp4.5a8", MixedSpec(4.5)),
    ("MP5a6-vt", MixedSpec(5.0, a_bits=6, scope="vision+text")),
    ("mp4.5-rand", MixedSpec(4.5, allocation="random")),
    ("mp4.5-rand0", MixedSpec(4.5, allocation="random")),
    ("mp4.5-rand3-vt", MixedSpec(4.5, allocation="random", seed=3, scope="vision+text")),
    ("mp5-c48", MixedSpec(5, choices=(4, 8))),
    ("mp3-c2468", MixedSpec(3, choices=(2, 4, 6, 8))),
    ("mp4.25-wo", MixedSpec(4.25, a_bits=None)),
    ("mp7-pct", MixedSpec(7, observer="percentile")),
])
def test_spec_parses_and_round_trips(text, expected):
    spec = parse_spec(text)
    assert spec == expected and spec.kind == "mixed"
    assert parse_spec(str(spec)) == spec and str(parse_spec(str(spec))) == str(spec)
    assert spec.method == f"mixed-{spec.allocation}" and not spec.rotates and not spec.learns_scales


def test_spec_canonical_strings_and_other_kinds_unchanged():
    assert str(MixedSpec(4.5)) == "mp4.5" and str(MixedSpec(6.0)) == "mp6" and str(MixedSpec(6)) == "mp6"
    assert str(MixedSpec(4.5, allocation="random", seed=1, a_bits=6)) == "mp4.5a6-rand1"
    assert str(MixedSpec(4.1, choices=(8, 4), a_bits=None, scope="vision+text")) == "mp4.1-c48-wo-vt"
    assert MixedSpec(5, choices=[8, 4]).choices == (4, 8)
    assert parse_spec("w4a8").kind == "quant" and parse_spec("rank-e0.9").kind == "rank"
    q = MixedSpec(4.5, a_bits=6, observer="ema", scope="vision+text").at_bits(6)
    assert str(q) == "w6a6-ema-vt" and q.kind == "quant"


@pytest.mark.parametrize("text, match", [
    ("mp9", r"avg_bits must lie within \[4, 8\]"),
    ("mp3.99", r"avg_bits must lie within \[4, 8\]"),
    ("mp5-c68", r"avg_bits must lie within \[6, 8\]"),
    ("mp", "expected it to start with mp<avg bits>"),
    ("mp4.5a9", "a_bits must be None"),
    ("mp4.5a8-wo", "contradicts a8"),
    ("mp4.5-rand-rand1", "unknown or repeated part 'rand1'"),
    ("mp4.5-c19", "integer bit widths in 2..8"),
    ("mp5-c448", "distinct"),
    ("mp4.5-rot", "unknown or repeated part 'rot'"),
    ("mp4.5-g128", "unknown or repeated part 'g128'"),
])
def test_spec_rejects_bad_strings(text, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(text)


@pytest.mark.parametrize("kwargs, match", [
    (dict(avg_bits=float("nan")), "finite number"),
    (dict(avg_bits=True), "finite number"),
    (dict(avg_bits="4.5"), "finite number"),
    (dict(avg_bits=8.01), r"within \[4, 8\]"),
    (dict(avg_bits=5, choices=()), "one or more"),
    (dict(avg_bits=5, choices=(4, 6.0)), "integer bit widths"),
    (dict(avg_bits=5, choices="468"), "collection"),
    (dict(avg_bits=5, allocation="greedy"), "allocation must be one of"),
    (dict(avg_bits=5, seed=2), "seed only applies to allocation='random'"),
    (dict(avg_bits=5, allocation="random", seed=-1), "seed must be an integer in 0..4294967295"),
    (dict(avg_bits=5, allocation="random", seed=2**32), "seed must be an integer in 0..4294967295"),
    (dict(avg_bits=5, scope="text"), "scope must be one of"),
    (dict(avg_bits=5, observer="max"), "observer must be one of"),
    (dict(avg_bits=5, calib_batches=0), "calib_batches"),
])
def test_spec_validates_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixedSpec(**kwargs)


# ------------------------------------------------------------------------------------------------ sensitivity
@pytest.mark.parametrize("name, k", [("visual.transformer.resblocks.0.mlp.c_fc", 7),  # tall 256 x 64
                                     ("visual.transformer.resblocks.0.mlp.c_proj", 7),  # wide 64 x 256
                                     ("visual.conv1", 7),  # conv [64, 3, 8, 8] → 64 x 192
                                     ("visual.proj", 4)])  # 32 x 64
def test_sensitivity_is_the_top_subspace_error_share(reference, name, k):
    weight = reference.get_submodule(name).weight
    sens = spectral_sensitivity(weight)
    assert top_rank(weight.shape) == k
    energy = float((weight.detach().double() ** 2).sum())
    for b in (4, 6, 8):
        split = error_energy_split(weight, fake_quantize_weight(weight, b), k)
        assert sens[b] == pytest.approx(split["error_top"] / energy, rel=1e-6)
    assert sens[4] > sens[6] > sens[8] > 0


def test_sensitivity_edge_cases():
    assert spectral_sensitivity(torch.zeros(8, 4)) == {4: 0.0, 6: 0.0, 8: 0.0}
    assert set(spectral_sensitivity(torch.randn(6, 5), (2, 8))) == {2, 8}
    rank1 = (torch.randn(40, 1, dtype=torch.float64) @ torch.randn(1, 30, dtype=torch.float64)).float()
    for w in (rank1, rank1.T.contiguous()):  # tall and wide; k = 3 > rank: only u_1 counts
        u1 = torch.linalg.svd(w.double()).U[:, :1]
        err = fake_quantize_weight(w, 4).double() - w.double()
        expected = float(((u1.T @ err) ** 2).sum() / (w.double() ** 2).sum())
        assert spectral_sensitivity(w, (4,))[4] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="top_fraction"):
        top_rank((8, 4), 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        spectral_sensitivity(torch.full((4, 4), float("nan")))


# ------------------------------------------------------------------------------------------------- allocation
def _brute_force(params, table, avg_bits, choices):
    budget = avg_bits * sum(params.values()) + 1e-9
    best = (math.inf, None)
    names = list(params)
    for combo in itertools.product(choices, repeat=len(names)):
        if sum(params[n] * b for n, b in zip(names, combo)) <= budget:
            best = min(best, (sum(table[n][b] for n, b in zip(names, combo)), combo))
    return best[0]


def test_allocation_finds_the_optimum_greedy_misses():
    # per added bit·param, "a" gains most, but taking it leaves no room for "b"; the optimum is "b" alone
    params = {"a": 1, "b": 3}
    table = {"a": {4: 2.0, 8: 0.0}, "b": {4: 5.0, 8: 0.0}}
    assert allocate_bits(params, table, 7.0, (4, 8)) == {"a": 4, "b": 8}
    assert allocate_bits(params, table, 8.0, (4, 8)) == {"a": 8, "b": 8}
    assert allocate_bits(params, table, 5.0, (4, 8)) == {"a": 8, "b": 4}
    assert allocate_bits(params, table, 4.99, (4, 8)) == {"a": 4, "b": 4}
    flat = {n: {4: 16.0, 6: 1.0, 8: 1 / 16} for n in "abcd"}  # equal maps, convex sensitivity: all at the budget
    assert allocate_bits(dict.fromkeys("abcd", 10), flat, 6, (4, 6, 8)) == dict.fromkeys("abcd", 6)


def test_allocation_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    choices = (4, 6, 8)
    for trial in range(12):
        params = {f"m{i}": int(p) for i, p in enumerate(torch.randint(1, 40, (5,), generator=gen))}
        table = {}
        for n in params:  # random, decreasing in bits
            s = torch.rand(3, generator=gen, dtype=torch.float64).sort(descending=True).values.tolist()
            table[n] = dict(zip(choices, s))
        for avg in (4.0, 4.4, 5.0, 5.75, 6.5, 7.9, 8.0):
            bits = allocate_bits(params, table, avg, choices)
            assert average_bits(params, bits) <= avg + EPS
            assert total_sensitivity(table, bits) == pytest.approx(_brute_force(params, table, avg, choices))


def test_allocation_coarse_grid_stays_within_budget(vision, monkeypatch):
    _, params, table = vision
    exact = allocate_bits(params, table, 5.3)
    monkeypatch.setattr(mixed, "MAX_DP_CELLS", 14 * 3)  # 3 budget units: costs round up, capacity rounds down
    coarse = allocate_bits(params, table, 5.3)
    assert average_bits(params, coarse) <= 5.3 + EPS
    assert total_sensitivity(table, exact) <= total_sensitivity(table, coarse)


@pytest.mark.parametrize("avg", [4.0, 4.5, 5.0, 6.0, 7.25, 8.0])
def test_budget_is_respected_and_filled(vision, avg):
    _, params, table = vision
    step = max(2 * p for p in params.values()) / sum(params.values())  # the largest single upgrade
    for bits in (allocate_bits(params, table, avg), random_bits(params, avg, seed=0), random_bits(params, avg, seed=5)):
        assert set(bits) == set(params) and set(bits.values()) <= {4, 6, 8}
        achieved = average_bits(params, bits)
        assert avg - step - EPS <= achieved <= avg + EPS


@pytest.mark.parametrize("avg, width", [(4, 4), (8, 8)])
def test_extreme_budgets_are_uniform(vision, avg, width):
    _, params, table = vision
    assert set(allocate_bits(params, table, avg).values()) == {width}
    assert set(random_bits(params, avg, seed=3).values()) == {width}


@pytest.mark.parametrize("avg", [4.5, 5.0, 6.0, 7.0])
def test_spectral_beats_random_at_the_same_budget(vision, avg):
    _, params, table = vision
    spectral = total_sensitivity(table, allocate_bits(params, table, avg))
    for seed in range(5):
        rand = random_bits(params, avg, seed=seed)
        assert spectral <= total_sensitivity(table, rand) + EPS
    assert spectral < min(total_sensitivity(table, random_bits(params, avg, seed=s)) for s in range(5))


def test_assignment_is_deterministic(vision):
    modules, params, table = vision
    spec = MixedSpec(4.5)
    torch.manual_seed(0)
    other = attention_surgery_(open_clip.create_model(MICRO).eval())
    again = {n: other.get_submodule(n) for n in modules}
    assert assign_bits(modules, spec) == assign_bits(again, spec) == allocate_bits(params, table, 4.5)
    rand = MixedSpec(4.5, allocation="random", seed=1)
    assert assign_bits(modules, rand) == assign_bits(again, rand) == random_bits(params, 4.5, seed=1)
    assert random_bits(params, 6, seed=1) != random_bits(params, 6, seed=2)


def test_allocation_rejects_bad_inputs(vision):
    _, params, table = vision
    with pytest.raises(ValueError, match="within"):
        allocate_bits(params, table, 8.5)
    with pytest.raises(ValueError, match="sensitivity lacks"):
        allocate_bits(params, {n: {4: 1.0, 8: 0.0} for n in params}, 5)
    with pytest.raises(ValueError, match="no maps"):
        random_bits({}, 5)
    with pytest.raises(ValueError, match="positive integers"):
        random_bits({"a": 0}, 5)
    with pytest.raises(ValueError, match="distinct integer"):
        allocate_bits(params, table, 5, (4, 4, 8))
    with pytest.raises(TypeError, match="MixedSpec"):
        assign_bits({}, parse_spec("w4a8"))


# ----------------------------------------------------------------------------------------------- quantize_
@pytest.mark.parametrize("text", ["mp4.5", "mp6-rand1"])
def test_quantize_applies_the_assigned_widths(reference, text):
    model = copy.deepcopy(reference)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")
                and m.weight is not None}
    report = quantize_(model, text, calibrator())
    spec = parse_spec(text)
    vision = [m.name for m in list_linear_maps(model) if m.tower == "vision"]
    assert report.spec == str(spec) and list(report.bits) == vision and [m.name for m in report.maps] == vision
    assert report.coverage["vision"] == (14, 14) and report.coverage["text"][0] == 0
    params = {n: original[n].numel() for n in vision}
    assert report.avg_bits == pytest.approx(average_bits(params, report.bits)) and report.avg_bits <= spec.avg_bits
    modules = {n: reference.get_submodule(n) for n in vision}
    assert report.bits == assign_bits(modules, spec)
    for name in vision:
        module = model.get_submodule(name)
        expected = fake_quantize_weight(original[name], report.bits[name])
        assert is_quantized(module) and module.input_quant is not None and module.input_quant.bits == 8
        assert torch.equal(effective_weight(module), expected)
        assert not torch.equal(effective_weight(module), original[name])
    for m in list_linear_maps(model):
        if m.tower == "text":
            assert not is_quantized(model.get_submodule(m.name))


def test_uniform_mixed_spec_equals_the_uniform_spec(reference):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    a, b = copy.deepcopy(reference), copy.deepcopy(reference)
    report = quantize_(a, "mp4", calibrator())
    quantize_(b, "w4a8", calibrator())
    assert set(report.bits.values()) == {4} and report.avg_bits == 4.0
    with torch.no_grad():
        assert torch.equal(a.encode_image(x), b.encode_image(x))


def test_quantize_scope_weight_only_and_validation(reference):
    model = copy.deepcopy(reference)
    report = quantize_(model, "mp7-wo-vt")  # weight-only: no calibration needed
    assert report.coverage["text"][0] == report.coverage["text"][1] > 0
    assert len(report.bits) == sum(report.coverage[t][0] for t in ("vision", "text"))
    assert all(model.get_submodule(n).input_quant is None for n in report.bits)
    assert report.avg_bits <= 7.0
    torch.manual_seed(0)
    fresh = open_clip.create_model(MICRO).eval()
    with pytest.raises(ValueError, match="pass a calibrate"):
        quantize_(fresh, "mp4.5")
    assert not is_surgically_changed(fresh)  # validated before touching the model
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(model, "mp4.5", calibrator())
    with pytest.raises(ValueError, match="w_bits must give every module"):
        quantize_maps_(fresh, {"visual.conv1": fresh.visual.conv1}, MixedSpec(5).at_bits(8), calibrator(), w_bits={})


def test_qat_rejects_a_mixed_spec_before_touching_the_model():
    from qclip.quant.qat import prepare_qat_

    torch.manual_seed(0)
    fresh = open_clip.create_model(MICRO).eval()
    with pytest.raises(ValueError, match="QAT needs a uniform quantization spec"):
        prepare_qat_(fresh, "mp4.5", calibrator())
    assert not is_surgically_changed(fresh)
