"""quant: turn an open_clip model into a quantized or rank-truncated one (never loads models or data).

One verb, validated specs::

    from qclip.quant import parse_spec, quantize_model
    report = quantize_model(model, "w4a8-rot", calibrate)   # calibrate(model) runs a few forward passes

Names are imported on first use, so importing the spec parser does not load torchao.
"""

from importlib import import_module

_EXPORTS = {
    "QuantSpec": "spec", "RankSpec": "spec", "parse_spec": "spec",
    "quantize_model": "api", "QuantReport": "api", "convert_to_float": "api",
    "prepare_qat": "qat", "convert_qat": "qat",
    "attention_surgery": "surgery", "list_linear_maps": "surgery", "LinearMap": "surgery",
    "export_int_": "export", "save_int": "export", "load_int": "export",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'qclip.quant' has no attribute {name!r}")
