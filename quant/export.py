"""Export: real integer weights through torchao, and a dequantized float model stock open_clip loads."""

from __future__ import annotations

import os

import torch
from torch import nn

from .api import convert_to_float_, towers_of
from .modules import weight_grid_scale
from .spec import QuantSpec
from .surgery import attention_surgery_, list_linear_maps

__all__ = ["int_config_for", "export_int_", "save_int", "load_int"]


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
