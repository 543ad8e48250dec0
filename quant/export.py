"""Export: a quantized model as integer codes + quantization parameters (rebuilt into `IntLinear` / `IntConv2d`
maps that run oneDNN int8 kernels), and the legacy torchao integer-tensor export.

`integer_tensors(model, spec)` reads every in-scope map of a fake-quant model (RTN, SmoothQuant, rotation, LSQ,
mixed precision, or torchao QAT) and returns plain tensors (codes, scales, activation grids) plus one manifest
entry per map saying which kernel will run it and why; `build_integer_model_(float_model, entries, tensors)`
swaps those maps into a float model. Nothing here pickles: the tensors go to safetensors, the entries to JSON.
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

import torch
from torch import nn

from .api import convert_to_float_, towers_of
from .kernels import IntConv2d, IntLinear, IntMap, int16_safe, onednn_unsupported
from .modules import is_quantized, weight_grid_scale
from .primitives import qrange
from .spec import MixedSpec, QuantSpec, RankSpec, parse_spec
from .surgery import attention_surgery_, list_linear_maps

__all__ = ["integer_tensors", "build_integer_model_", "check_integer_tensors", "map_kernel", "MapEntry", "EXPORT_FORMAT",
           "int_config_for", "export_int_", "save_int", "load_int"]

#: `format` of an export manifest (bumped when the layout of the tensors, the entries or the manifest changes; 2: the
#: manifest carries the sha256 of every file it describes)
EXPORT_FORMAT = "qclip-export/2"


class MapEntry(TypedDict, total=False):
    """One exported map of an export manifest (see `integer_tensors`)."""

    name: str
    tower: str  # vision | text
    role: str
    op: str  # linear | conv2d
    shape: list[int]
    w_bits: int
    a_bits: int | None
    weights: str  # per_channel | per_group | per_tensor
    symmetric: bool
    grid: str  # lsq_step | torchao_qat_scale | rtn_scale | recovered
    rotation: dict[str, int] | None
    integer_weights: bool
    integer_arithmetic: bool
    kernel: str  # onednn | dequant
    kernel_op: str
    why_float: str | None
    int16_safe: bool | None
    conv: dict[str, Any]


#: The keys every entry carries, with their types (checked when an export folder is read).
_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "tower": (str,), "op": (str,), "shape": (list,), "w_bits": (int,), "symmetric": (bool,),
    "integer_arithmetic": (bool,), "kernel": (str,)}
_KERNEL_NAMES = {("linear", "onednn"): "onednn.qlinear_pointwise (u8 x s8 -> s32)",
                 ("conv2d", "onednn"): "onednn.qconv2d_pointwise (u8 x s8 -> s32)",
                 ("linear", "dequant"): "dequantize + F.linear (float32)",
                 ("conv2d", "dequant"): "dequantize + F.conv2d (float32)"}


def _signed_codes(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric integer codes of `w` [out, in...] on `scale` [out|1, groups]: clamp(round(w · (1/scale)))."""
    qmin, qmax = qrange(bits, True)
    rows = w.reshape(w.shape[0], scale.shape[1], -1)
    q = torch.clamp(torch.round(rows * (1.0 / scale.float()[..., None])), qmin, qmax)
    return q.reshape(w.shape).to(torch.int8)


@torch.no_grad()
def _weight_grid(module: nn.Module, bits: int, spec: QuantSpec | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor | None, int, str]:
    """(codes, scale [out|1, groups], zero point or None, bits, source) of a quantized map's weight grid."""
    w = module.weight.detach().float()
    out = w.shape[0]
    quant = getattr(module, "weight_quant", None)
    if quant is not None and hasattr(quant, "step"):  # LSQ: the learned steps
        step = quant.step.detach().float().reshape(-1, 1)
        return _signed_codes(w, step, quant.bits), step, None, quant.bits, "lsq_step"
    fake = getattr(module, "weight_fake_quantizer", None)  # torchao QAT: its learned (range-learning) scales
    if fake is not None and getattr(fake, "scale", None) is not None:
        scale = fake.scale.detach().float().reshape(out, -1)
        return _signed_codes(w, scale, bits), scale, None, bits, "torchao_qat_scale"
    if "weight_scale" in module._buffers:  # RTN: the grid the fake-quantized weights lie on
        scale = module.weight_scale.detach().float()
        if spec is None or spec.symmetric:
            return _signed_codes(w, scale, bits), scale, None, bits, "rtn_scale"
        qmin, qmax = qrange(bits, False)  # asymmetric: the row minimum sits on code 0 (see primitives)
        rows = w.reshape(out, scale.shape[1], -1) if scale.shape[0] == out else w.reshape(1, scale.shape[1], -1)
        zp = torch.clamp(torch.round(-rows.amin(-1).clamp(max=0) / scale), qmin, qmax)
        q = torch.clamp(torch.round(rows * (1.0 / scale[..., None])) + zp[..., None], qmin, qmax)
        return q.reshape(w.shape).to(torch.uint8), scale, zp.to(torch.int32), bits, "rtn_scale"
    # no grid recorded (e.g. weights folded by convert_qat_): the symmetric grid that reproduces them exactly
    qmin, qmax = qrange(bits, True)
    flat = w.reshape(out, -1)
    scale = torch.maximum(flat.amin(1).clamp(max=0).abs() / -qmin, flat.amax(1).clamp(min=0) / qmax)
    scale = scale.clamp(min=torch.finfo(torch.float32).eps).reshape(out, 1)
    return _signed_codes(w, scale, bits), scale, None, bits, "recovered"


def _act_grid(module: nn.Module) -> dict | None:
    """The static per-tensor activation grid of a quantized map in the uint8 frame (signed grids shifted by -qmin, so
    codes start at 0: a 7-bit grid's codes stay in [0, 127], which oneDNN's int16 pair sums never saturate)."""
    quant = getattr(module, "input_quant", None)
    if quant is None:
        return None
    if getattr(quant, "calibrating", False):
        raise ValueError("an activation quantizer is still calibrating: run calibration (quantize_) first")
    if hasattr(quant, "step"):  # LSQ activation step: symmetric signed codes
        scale, zero_point, qmin, qmax = quant.step.detach().float().reshape(()), 0, quant.qmin, quant.qmax
    else:
        scale, zero_point, qmin, qmax = quant.scale.detach().float(), int(quant.zero_point), quant.qmin, quant.qmax
    shift = -qmin if qmin < 0 else 0
    return {"scale": scale.clone(), "zero_point": zero_point + shift, "qmin": qmin + shift, "qmax": qmax + shift,
            "bits": quant.bits}


def _rotation(module: nn.Module) -> dict | None:
    rot = getattr(module, "input_rotation", None)
    return None if rot is None else {"channels": rot.channels, "dim": rot.dim}


def map_kernel(entry: dict) -> str:
    """The kernel an exported map runs on here: its planned one, or "dequant" where oneDNN int8 is unavailable."""
    from .kernels import onednn_int8_available

    return "onednn" if entry["kernel"] == "onednn" and onednn_int8_available() else "dequant"


@torch.no_grad()
def integer_tensors(model: nn.Module, spec: QuantSpec | MixedSpec | RankSpec | str | None, *,
                    w_bits: dict[str, int] | None = None) -> tuple[dict[str, torch.Tensor], list[MapEntry]]:
    """Integer codes and quantization parameters of every in-scope map of a fake-quant `model` (not changed).

    Returns (tensors, entries): tensors `{MAP}.weight_codes`, `.weight_scale`, `.weight_zero_point` (asymmetric
    grids), `.act_scale` / `.act_zero_point` / `.act_range` (static activations, uint8 frame); one entry per map
    with its path, tower, role, op, shape, bits, grid source, the kernel it runs on ("onednn": integer arithmetic;
    "dequant": integer codes computed in float), why it is not integer when it is not, and whether its oneDNN sums
    are exact on CPUs without VNNI too (`int16_safe`). `w_bits` gives each
    map's weight bits for mixed precision. A rank spec (or None) has no integer maps."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec is None or isinstance(spec, RankSpec):
        return {}, []
    attention_surgery_(model)
    towers = towers_of(spec.scope)
    tensors: dict[str, torch.Tensor] = {}
    entries: list[MapEntry] = []
    for lm in list_linear_maps(model):
        if lm.tower not in towers:
            continue
        module = model.get_submodule(lm.name)
        fake = getattr(module, "weight_fake_quantizer", None) is not None
        if not (is_quantized(module) or fake):
            raise ValueError(f"map {lm.name} is in the spec's scope but not quantized: quantize the model first")
        bits = (w_bits or {}).get(lm.name, spec.w_bits if isinstance(spec, QuantSpec) else 8)
        codes, scale, zp, bits, source = _weight_grid(module, bits, spec if isinstance(spec, QuantSpec) else None)
        act = _act_grid(module)
        conv = isinstance(module, nn.Conv2d)
        probe = _make_map(module, codes, scale, zp, act, _rotation(module), "dequant", bits)
        why = onednn_unsupported(probe)
        if conv and module.padding_mode != "zeros":
            why = f"padding mode {module.padding_mode!r}: oneDNN's int8 convolution pads with zeros"
        if fake and act is None and spec.a_bits is not None:
            why = ("torchao QAT quantizes activations dynamically per token: no static activation grid for an "
                   "int8 kernel (activations stay float)")
        kernel = "onednn" if why is None else "dequant"
        op = "conv2d" if conv else "linear"
        entry: MapEntry = {"name": lm.name, "tower": lm.tower, "role": lm.role, "op": op, "shape": list(lm.shape),
                            "w_bits": bits, "a_bits": None if act is None else act["bits"],
                            "weights": "per_channel" if scale.shape[1] == 1 and scale.shape[0] > 1 else
                            ("per_tensor" if scale.shape[1] == 1 else "per_group"),
                            "symmetric": zp is None, "grid": source, "rotation": _rotation(module),
                            "integer_weights": True, "integer_arithmetic": kernel == "onednn", "kernel": kernel,
                            "kernel_op": _KERNEL_NAMES[(op, kernel)], "why_float": why,
                            "int16_safe": None if kernel != "onednn" else int16_safe(act["qmax"], codes)}
        if conv:
            entry["conv"] = {"stride": list(module.stride), "padding": list(module.padding)
                             if not isinstance(module.padding, str) else module.padding,
                             "dilation": list(module.dilation), "groups": module.groups}
        entries.append(entry)
        tensors[f"{lm.name}.weight_codes"] = codes.contiguous()
        tensors[f"{lm.name}.weight_scale"] = scale.contiguous()
        if zp is not None:
            tensors[f"{lm.name}.weight_zero_point"] = zp.contiguous()
        if act is not None:
            tensors[f"{lm.name}.act_scale"] = act["scale"].reshape(1)
            tensors[f"{lm.name}.act_zero_point"] = torch.tensor([act["zero_point"]], dtype=torch.int32)
            tensors[f"{lm.name}.act_range"] = torch.tensor([act["qmin"], act["qmax"]], dtype=torch.int32)
    return tensors, entries


def _check_entry(entry: Any) -> str:
    """The name of a well-formed manifest entry; ValueError saying what is wrong otherwise."""
    if not isinstance(entry, dict):
        raise ValueError(f"a map entry is a {type(entry).__name__}, not a mapping")
    name = entry.get("name")
    for key, types in _ENTRY_TYPES.items():
        value = entry.get(key)
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise ValueError(f"map {name!r}: {key} is {str(value)[:80]!r}, expected {types[0].__name__}")
    if entry["tower"] not in ("vision", "text") or entry["op"] not in ("linear", "conv2d"):
        raise ValueError(f"map {name}: unknown tower {entry['tower']!r} or op {entry['op']!r}")
    if entry["kernel"] not in ("onednn", "dequant"):
        raise ValueError(f"map {name}: unknown kernel {str(entry['kernel'])[:40]!r}")
    if entry["integer_arithmetic"] != (entry["kernel"] == "onednn"):
        raise ValueError(f"map {name}: integer_arithmetic {entry['integer_arithmetic']} contradicts kernel "
                         f"{entry['kernel']!r}")
    if not 2 <= entry["w_bits"] <= 8:
        raise ValueError(f"map {name}: w_bits {entry['w_bits']} is outside 2..8")
    if not entry["shape"] or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in entry["shape"]):
        raise ValueError(f"map {name}: shape {entry['shape']!r} is not a list of positive sizes")
    return name


def _finite_positive(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.numel() > 0 and bool(torch.isfinite(t).all()) and bool((t > 0).all())


def check_integer_tensors(entries: list[MapEntry], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse an export whose entries and tensors disagree (ValueError naming the map): every entry well formed and
    unique, every tensor belongs to an entry, scales finite and positive, codes and zero points in the range of their
    bit width, activation grids within uint8."""
    names = [_check_entry(e) for e in entries]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"map {dup} is listed twice")
    known = set(names)
    stray = sorted({k.rsplit(".", 1)[0] for k in tensors} - known)
    if stray:
        raise ValueError(f"the integer weights hold map {stray[0]}, which the manifest does not list")
    for entry in entries:
        name, bits = entry["name"], entry["w_bits"]
        codes, scale = tensors.get(f"{name}.weight_codes"), tensors.get(f"{name}.weight_scale")
        if codes is None or scale is None:
            raise ValueError(f"map {name} has no {'weight_codes' if codes is None else 'weight_scale'} tensor")
        if not _finite_positive(scale):
            raise ValueError(f"map {name}: a weight scale is not a finite positive number")
        zp = tensors.get(f"{name}.weight_zero_point")
        qmin, qmax = qrange(bits, zp is None)
        if codes.dtype != (torch.int8 if zp is None else torch.uint8) or list(codes.shape) != list(entry["shape"]):
            raise ValueError(f"map {name}: weight codes of {codes.dtype} {tuple(codes.shape)} do not fit the entry")
        if codes.numel() and (int(codes.min()) < qmin or int(codes.max()) > qmax):
            raise ValueError(f"map {name}: weight codes outside [{qmin}, {qmax}] of {bits}-bit weights")
        if zp is not None and zp.numel() and (int(zp.min()) < qmin or int(zp.max()) > qmax):
            raise ValueError(f"map {name}: weight zero points outside [{qmin}, {qmax}]")
        act = tensors.get(f"{name}.act_scale")
        if entry["kernel"] == "onednn" and (act is None or zp is not None):
            why = "no activation grid" if act is None else "asymmetric weights"
            raise ValueError(f"map {name}: planned for oneDNN int8 kernels, which it cannot run ({why})")
        if act is not None:
            rng, azp = tensors.get(f"{name}.act_range"), tensors.get(f"{name}.act_zero_point")
            if rng is None or azp is None or rng.numel() != 2 or azp.numel() != 1:
                raise ValueError(f"map {name}: its activation grid lacks act_range or act_zero_point")
            lo, hi = (int(v) for v in rng)
            if not _finite_positive(act) or not 0 <= lo < hi <= 255 or not lo <= int(azp) <= hi:
                raise ValueError(f"map {name}: activation grid (scale, range [{lo}, {hi}], zero point {int(azp)}) "
                                 "is not a finite positive scale on a uint8 range")


def _make_map(module: nn.Module, codes, scale, zp, act, rotation, kernel: str, bits: int) -> IntMap:
    bias = None if module.bias is None else module.bias.detach()
    kw = dict(codes=codes, scale=scale, zero_point=zp, bias=bias, act=act, rotation=rotation, kernel=kernel,
              w_bits=bits)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            kw["kernel"] = "dequant"
        return IntConv2d(stride=module.stride, padding=module.padding, dilation=module.dilation,
                         groups=module.groups, **kw)
    return IntLinear(**kw)


@torch.no_grad()
def build_integer_model_(model: nn.Module, entries: list[dict], tensors: dict[str, torch.Tensor], *,
                         kernel: str | None = None) -> nn.Module:
    """Swap the exported maps of a float `model` (the same architecture) for `IntLinear` / `IntConv2d` in place.

    Biases come from the float model; codes and grids from `tensors`. `kernel` forces one kernel for every map
    ("dequant": the fake-quant reference in float); by default each map runs its planned kernel (see
    `map_kernel`). Raises ValueError when an entry does not fit the model."""
    attention_surgery_(model)
    for entry in entries:
        name = entry["name"]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"exported map {name} is not a module of this model") from None
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or list(module.weight.shape) != list(entry["shape"]):
            raise ValueError(f"exported map {name} of shape {entry['shape']} does not fit the model's "
                             f"{type(module).__name__} {tuple(getattr(module, 'weight', torch.empty(0)).shape)}")
        missing = [k for k in ("weight_codes", "weight_scale") if f"{name}.{k}" not in tensors]
        if missing:
            raise ValueError(f"exported map {name} has no {missing[0]} tensor")
        act = None
        if f"{name}.act_scale" in tensors:
            lo, hi = (int(v) for v in tensors[f"{name}.act_range"])
            act = {"scale": tensors[f"{name}.act_scale"].reshape(()), "qmin": lo, "qmax": hi,
                   "zero_point": int(tensors[f"{name}.act_zero_point"].reshape(()))}
        codes = tensors[f"{name}.weight_codes"]
        if list(codes.shape) != list(entry["shape"]):
            raise ValueError(f"exported map {name}: codes of shape {tuple(codes.shape)}, expected {entry['shape']}")
        run = kernel or map_kernel(entry)
        int_map = _make_map(module, codes, tensors[f"{name}.weight_scale"], tensors.get(f"{name}.weight_zero_point"),
                            act, entry.get("rotation"), run, int(entry["w_bits"]))
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, int_map)
    return model.eval()


def int_config_for(spec: QuantSpec):
    """torchao config for a spec: int8 dynamic activations + int8 weights for w8a8, else intN weight-only.

    Weight-only export uses torchao's "no clipping error" symmetric mapping (scale = max(|min|/|qmin|,
    max/qmax)), which recovers the fake-quant grid from already fake-quantized weights, so the integer model
    computes what the fake-quant model did (up to one ulp of the scale). w8a8 uses torchao's dynamic per-token
    int8 activations, not the static per-tensor ones of the fake-quant model.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    if spec.w_bits == 8 and spec.a_bits == 8:
        return Int8DynamicActivationInt8WeightConfig()
    if spec.granularity == "per_tensor":
        raise ValueError("integer export supports per_channel and per_group weights, not per_tensor")
    granularity = PerGroup(spec.group_size) if spec.granularity == "per_group" else PerAxis(0)
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{spec.w_bits}"), granularity=granularity,
                                mapping_type=MappingType.SYMMETRIC_NO_CLIPPING_ERR)


def _int_filter(model: nn.Module, spec: QuantSpec):
    names = {m.name for m in list_linear_maps(model, include_conv=False) if m.tower in towers_of(spec.scope)}
    return lambda module, fqn: isinstance(module, nn.Linear) and fqn in names


def export_int_(model: nn.Module, spec: QuantSpec) -> int:
    """Fold fake quantizers into float weights, then store in-scope linear weights as torchao integer tensors.

    Weight-only specs reuse each layer's own grid (the RTN scale or the LSQ step), so the integer model computes
    exactly what the fake-quant weights did. Returns the number of linear maps converted (convolutions stay
    float: torchao covers linear layers).
    """
    from torchao.quantization import IntxUnpackedToInt8Tensor, quantize_

    attention_surgery_(model)
    filt = _int_filter(model, spec)
    targets = {n: m for n, m in model.named_modules() if filt(m, n)}
    scales = {n: weight_grid_scale(m) for n, m in targets.items()}
    convert_to_float_(model)
    if spec.a_bits == 8 and spec.w_bits == 8:
        quantize_(model, int_config_for(spec), filter_fn=filt)
        return len(targets)
    int_config_for(spec)  # validates the spec
    dtype = getattr(torch, f"int{spec.w_bits}")
    for name, module in targets.items():
        scale = scales[name]
        w = module.weight.detach()
        if scale is None or spec.granularity == "per_group" or not spec.symmetric:
            quantize_(module, int_config_for(spec), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
            continue
        scale = scale.expand(w.shape[0], 1).contiguous().float()
        qw = IntxUnpackedToInt8Tensor.from_hp(w, (1, w.shape[1]), dtype, intx_choose_qparams_algorithm=None,
                                              custom_scale=scale, custom_zero_point=torch.zeros_like(scale, dtype=torch.int8))
        module.weight = nn.Parameter(qw, requires_grad=False)
    return len(targets)


def save_int(model: nn.Module, path: str | os.PathLike) -> None:
    """Save an int-exported model's state dict (loadable with `torch.load(weights_only=True)`), atomically: a temp
    file beside `path`, fsync'd, given the mode a plain write would (0o666 less the umask), then `os.replace`d."""
    import io
    import tempfile

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_int(skeleton: nn.Module, spec: QuantSpec, path: str | os.PathLike) -> nn.Module:
    """Load `save_int` output into a freshly built model of the same architecture (weights-only load)."""
    from torchao.quantization import quantize_

    attention_surgery_(skeleton)
    quantize_(skeleton, int_config_for(spec), filter_fn=_int_filter(skeleton, spec))
    state = torch.load(path, map_location="cpu", weights_only=True)
    skeleton.load_state_dict(state, assign=True)
    return skeleton.eval()
