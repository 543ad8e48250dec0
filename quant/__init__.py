"""quant: turn an open_clip model into a quantized or rank-truncated one (never loads models or data).

One verb, validated specs::

    from quant import parse_spec, quantize_model
    report = quantize_model(model, "w4a8-rot", calibrate)   # calibrate(model) runs a few forward passes
"""

from .api import QuantReport, convert_to_float, quantize_model
from .export import export_int_, load_int, save_int
from .qat import convert_qat, prepare_qat
from .spec import QuantSpec, RankSpec, parse_spec
from .surgery import LinearMap, attention_surgery, list_linear_maps
from .temperature import fit_logit_scale

__all__ = [
    "QuantSpec", "RankSpec", "parse_spec", "quantize_model", "QuantReport", "convert_to_float",
    "prepare_qat", "convert_qat", "attention_surgery", "list_linear_maps", "LinearMap",
    "export_int_", "save_int", "load_int", "fit_logit_scale",
]
