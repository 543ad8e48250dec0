"""quant: turn an open_clip model into a quantized or rank-truncated one (never loads models or data).

One verb, validated specs::

    from qclip.quant import parse_spec, quantize_
    report = quantize_(model, "w4a8-rot", calibrate)   # calibrate(model) runs a few forward passes

Names are imported on first use, so importing the spec parser does not load torchao.
"""

from importlib import import_module

_EXPORTS = {
    "QuantSpec": "spec", "RankSpec": "spec", "MixedSpec": "spec", "parse_spec": "spec",
    "quantize_": "api", "QuantReport": "api", "convert_to_float_": "api",
    "prepare_qat_": "qat", "convert_qat_": "qat",
    "attention_surgery_": "surgery", "list_linear_maps": "surgery", "LinearMap": "surgery",
    "assign_bits": "mixed", "allocate_bits": "mixed", "random_bits": "mixed", "sensitivity_table": "mixed",
    "export_int_": "export", "save_int": "export", "load_int": "export",
    "quantize_model": "api",  # for BC: the former name of quantize_
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'qclip.quant' has no attribute {name!r}")
