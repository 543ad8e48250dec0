"""Integer linear maps rebuilt from stored integer codes and quantization parameters (no float weights kept).

`IntLinear` / `IntConv2d` hold a map's integer weight codes with their scales (per channel or per group, zero
points for asymmetric grids), the static per-tensor activation grid of the fake-quant model (scale, zero point,
code range) and an optional input rotation. Two kernels compute the same function:

- `"onednn"`: real integer arithmetic on x86 CPUs. The input is rounded to uint8 codes on the activation grid and
  oneDNN's int8 kernels (`torch.ops.onednn.qlinear_pointwise` / `qconv2d_pointwise`, the kernels Inductor lowers
  PT2E-quantized graphs to) multiply them with the int8 weight codes, accumulating in int32. Needs symmetric
  per-channel (or per-tensor) weights and quantized activations. On CPUs without VNNI, oneDNN multiplies
  u8 x s8 pairs into saturating int16 sums, so 8-bit weights with full-range 8-bit activations lose precision
  (measured ~1% relative error per map on random data). A pair sum stays exact when the largest activation code
  times twice the largest weight magnitude fits int16 (`int16_safe`): weights of 7 bits or fewer, or activations of
  7 bits or fewer (codes in [0, 127]; e.g. the spec `w8a7`), never saturate. torchao's X86 quantizer offers
  `reduce_range` (7-bit activations) for such CPUs for the same reason; here the 7 bits are chosen in the spec, so
  the fake-quant model that was measured is the one the integer kernels compute.
- `"dequant"`: the reference: the input is fake-quantized on the same grid and the codes are dequantized to a
  float weight, so the map computes exactly what the fake-quant model did, in float (also the fallback for grids
  oneDNN cannot run: per-group scales, asymmetric weights, weight-only specs).

The prepacked oneDNN weight is a runtime copy kept outside the state dict; the state dict holds plain tensors
only (codes, scales, activation grid), so models save as safetensors and hash like any other model.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .rotation import HadamardRotation

__all__ = ["KERNELS", "IntLinear", "IntConv2d", "IntMap", "onednn_int8_available", "cpu_int8_vnni", "cpu_flags",
           "int8_features", "int8_advice", "INT8_FLAGS", "prepack_", "integer_maps", "int16_safe"]

KERNELS = ("onednn", "dequant")


@functools.lru_cache(maxsize=1)
def onednn_int8_available() -> bool:
    """True when this torch build has oneDNN's int8 linear and convolution kernels (x86 CPU builds)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        for op in ("qlinear_prepack", "qlinear_pointwise", "qconv_prepack", "qconv2d_pointwise"):
            getattr(torch.ops.onednn, op).default
    except (AttributeError, RuntimeError):
        return False
    return True


#: x86 flags that decide oneDNN's int8 path (/proc/cpuinfo names)
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo; None when it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def int8_features(flags: frozenset[str] | set[str] | None = None) -> dict[str, Any]:
    """The int8-relevant CPU features (this CPU's, or those of `flags`) and the path oneDNN's u8 x s8 products take.

    `int8_path`: "amx" (AMX-INT8 tiles: TDPBUSD sums u8 x s8 products straight into int32), "vnni" (AVX-512 VNNI
    or AVX-VNNI: VPDPBUSD, the same exact int32 sums), "avx2" (VPMADDUBSW: pairs of u8 x s8 products summed in
    saturating int16 before widening, so 8-bit weights x full-range 8-bit activations can clip), or None when the
    flags are unknown. `cpu_capability` is torch's own dispatch level."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if flags is None:
        path = None
    elif "amx_int8" in flags:
        path = "amx"
    elif flags & {"avx512_vnni", "avx_vnni"}:
        path = "vnni"
    elif "avx2" in flags:
        path = "avx2"
    else:
        path = None
    return {"flags": None if flags is None else sorted(flags & set(INT8_FLAGS)), "int8_path": path,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@functools.lru_cache(maxsize=1)
def cpu_int8_vnni() -> bool | None:
    """Whether this CPU has VNNI / AMX int8 dot products (without them oneDNN's u8 x s8 sums saturate int16);
    None when it cannot be told (no /proc/cpuinfo)."""
    path = int8_features()["int8_path"]
    return None if path is None else path in ("vnni", "amx")


def int8_advice(int8_path: str | None, unsafe_maps: int, a_bits: int | None) -> str | None:
    """What to tell a user exporting `unsafe_maps` int16-unsafe oneDNN maps (8-bit weights x full-range 8-bit
    activations) with `a_bits`-bit activations on a CPU whose int8 path is `int8_path` (see `int8_features`).

    w8a7 is recommended only where it helps (AVX2: saturating int16 pair sums); on VNNI / AMX the note says that
    8-bit activations are exact there and 7 bits only matter for AVX2-only CPUs. None: nothing to say."""
    if int8_path == "avx2" and unsafe_maps:
        return (f"this CPU has no VNNI or AMX: oneDNN's int8 kernels sum u8 x s8 pairs in saturating int16, so "
                f"{unsafe_maps} maps with 8-bit weights and full-range 8-bit activations lose precision here; "
                "7-bit activations (e.g. --quant w8a7) or weights never saturate")
    if int8_path in ("vnni", "amx"):
        unit = "AMX-INT8" if int8_path == "amx" else "VNNI"
        if unsafe_maps:
            return (f"this CPU has {unit}: u8 x s8 products are summed exactly in int32, so the {unsafe_maps} maps "
                    "with 8-bit weights and 8-bit activations run as the fake-quant model does here (to float32 "
                    "rounding); only on an AVX2-only CPU would they saturate int16 (export w8a7 for such CPUs)")
        if a_bits == 7:
            return (f"this CPU has {unit}: 8-bit activations (w8a8) are exact here too; 7-bit activations only "
                    "avoid int16 saturation on AVX2-only CPUs")
    return None


class IntMap(nn.Module):
    """Shared state and input quantization of `IntLinear` / `IntConv2d` (see the module docstring)."""

    #: open_clip reads this (its bitsandbytes hook) instead of `.weight.dtype` to pick the text tower's cast dtype
    int8_original_dtype = torch.float32

    def __init__(self, *, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, act: dict[str, Any] | None = None,
                 rotation: dict[str, int] | None = None, kernel: str = "dequant", w_bits: int = 8):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if codes.dtype not in (torch.int8, torch.uint8):
            raise ValueError(f"weight codes must be int8 or uint8, got {codes.dtype}")
        out = codes.shape[0]
        if scale.dim() != 2 or scale.shape[0] not in (1, out) or codes[0].numel() % scale.shape[1]:
            raise ValueError(f"weight scale of shape {tuple(scale.shape)} does not fit codes {tuple(codes.shape)}")
        self.w_bits = w_bits
        self.register_buffer("weight_codes", codes.contiguous())
        self.register_buffer("weight_scale", scale.float().expand(out, -1).contiguous())
        if zero_point is not None:
            self.register_buffer("weight_zero_point", zero_point.to(torch.int32).expand(out, -1).contiguous())
        else:
            self.weight_zero_point = None
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.rotation = None if rotation is None else HadamardRotation(rotation["channels"], rotation["dim"])
        if act is not None:
            qmin, qmax = int(act["qmin"]), int(act["qmax"])
            if not 0 <= qmin < qmax <= 255:
                raise ValueError(f"activation code range [{qmin}, {qmax}] does not fit uint8")
            self.register_buffer("act_scale", torch.as_tensor(act["scale"], dtype=torch.float32).reshape(()).clone())
            self.register_buffer("act_zero_point", torch.as_tensor(int(act["zero_point"]), dtype=torch.int32))
            self.register_buffer("act_range", torch.tensor([qmin, qmax], dtype=torch.int32))
        else:
            self.act_scale = self.act_zero_point = self.act_range = None
        if kernel == "onednn":
            why = onednn_unsupported(self)
            if why:
                raise ValueError(f"the onednn kernel cannot run this map: {why}")
        self.kernel = kernel
        # in the state dict so that content hashes (feature caches) tell the integer model from its reference
        self.register_buffer("kernel_id", torch.tensor(KERNELS.index(kernel), dtype=torch.uint8))
        self._packed: torch.Tensor | None = None
        self._sync_act()

    def _sync_act(self) -> None:
        """Python copies of the activation grid (the kernels take floats; Dynamo sees constants)."""
        if self.act_scale is None:
            return
        self._x_scale = float(self.act_scale)
        self._x_inv = float(1.0 / self.act_scale)  # the fake quantizer multiplies by the float32 1/scale
        self._x_zp = int(self.act_zero_point)
        self._x_min, self._x_max = (int(v) for v in self.act_range)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_packed"] = None  # an opaque oneDNN tensor: repacked on first use (deepcopy, pickling)
        return state

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.kernel = KERNELS[int(self.kernel_id)]
        self._packed = None
        self._sync_act()

    @property
    def out_features(self) -> int:
        """Output channels."""
        return self.weight_codes.shape[0]

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the codes stand for (the fake-quant model's weight, rotated when the map rotates)."""
        codes = self.weight_codes.reshape(self.out_features, self.weight_scale.shape[1], -1).float()
        if self.weight_zero_point is not None:
            codes = codes - self.weight_zero_point.float()[..., None]
        return (codes * self.weight_scale[..., None]).reshape(self.weight_codes.shape)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 codes of `x` on the activation grid (the fake quantizer's rounding, bit for bit)."""
        q = torch.round(x.float() * self._x_inv) + self._x_zp
        return q.clamp_(self._x_min, self._x_max).to(torch.uint8)

    def fake_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` rounded to the activation grid, in float (the reference kernel's input)."""
        if self.act_scale is None:
            return x
        return (self.quantize_input(x).float() - self._x_zp) * self._x_scale

    def prepack(self) -> None:
        """Pack the int8 weight for oneDNN now (before `torch.compile`, so the packed weight is a constant)."""
        if self.kernel == "onednn" and self._packed is None:
            self._packed = self._pack()

    def _pack(self) -> torch.Tensor:
        raise NotImplementedError

    def _packed_weight(self) -> torch.Tensor:
        if self._packed is None:
            self._packed = self._pack()
        return self._packed

    def _w_zero_points(self) -> torch.Tensor:
        return torch.zeros(self.out_features, dtype=torch.long)

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:  # `x @ proj` for projections applied as matrices
        return self(x)

    def extra_repr(self) -> str:
        act = "float" if self.act_scale is None else f"u8[{self._x_min},{self._x_max}] zp={self._x_zp}"
        return (f"shape={tuple(self.weight_codes.shape)}, w_bits={self.w_bits}, act={act}, kernel={self.kernel}"
                + (", rotated" if self.rotation is not None else ""))


def onednn_unsupported(m: IntMap) -> str | None:
    """Why the oneDNN int8 kernel cannot run map `m` (None when it can)."""
    if m.act_scale is None:
        return "activations are not quantized (weight-only): there is no integer input to multiply"
    if m.weight_zero_point is not None:
        return "asymmetric weights: oneDNN's int8 kernels need symmetric (zero-point 0) weights"
    if m.weight_scale.shape[1] != 1:
        return "per-group weight scales: oneDNN's int8 kernels take one scale per output channel"
    if m.weight_codes.dtype != torch.int8:
        return "weight codes are not int8"
    if isinstance(m, IntConv2d) and not all(isinstance(p, int) for p in m.padding):
        return f"convolution padding {m.padding!r} is not explicit"
    if not onednn_int8_available():
        return "this torch build has no oneDNN int8 kernels"
    return None


def int16_safe(act_qmax: int, weight_codes: torch.Tensor) -> bool:
    """Whether u8 x s8 pair sums of these codes fit int16 (exact on CPUs without VNNI): qmax · 2 · max|w| ≤ 32767."""
    return act_qmax * 2 * int(weight_codes.to(torch.int32).abs().max()) <= 32767


class IntLinear(IntMap):
    """A linear map on integer codes (`kernel`: "onednn" int8 GEMM or "dequant" float reference)."""

    @property
    def in_features(self) -> int:
        """Input features."""
        return self.weight_codes.shape[1]

    def _pack(self) -> torch.Tensor:
        return torch.ops.onednn.qlinear_prepack(self.weight_codes, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotation is not None:
            x = self.rotation(x)
        if self.kernel == "dequant":
            return F.linear(self.fake_quantize_input(x).to(torch.float32), self.dequantized_weight(), self.bias)
        lead = x.shape[:-1]
        q = self.quantize_input(x.reshape(-1, x.shape[-1]))
        y = torch.ops.onednn.qlinear_pointwise(q, self._x_scale, self._x_zp, self._packed_weight(),
                                               self.weight_scale.reshape(-1), self._w_zero_points(), self.bias,
                                               1.0, 0, torch.float32, "none", [], "")
        return y.reshape(*lead, self.out_features)


class IntConv2d(IntMap):
    """A 2D convolution on integer codes (`kernel`: "onednn" int8 convolution or "dequant" float reference)."""

    def __init__(self, *, stride: tuple[int, int], padding: tuple[int, int] | str, dilation: tuple[int, int],
                 groups: int, **kw):
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), padding, tuple(dilation), groups
        if not isinstance(padding, str):
            self.padding = tuple(padding)
        super().__init__(**kw)

    def _pack(self) -> torch.Tensor:
        return torch.ops.onednn.qconv_prepack(self.weight_codes, self.weight_scale.reshape(-1), self._x_scale,
                                              self._x_zp, list(self.stride), list(self.padding),
                                              list(self.dilation), self.groups, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotation is not None:
            x = self.rotation(x)
        if self.kernel == "dequant":
            return F.conv2d(self.fake_quantize_input(x).to(torch.float32), self.dequantized_weight(), self.bias,
                            self.stride, self.padding, self.dilation, self.groups)
        return torch.ops.onednn.qconv2d_pointwise(self.quantize_input(x), self._x_scale, self._x_zp,
                                                  self._packed_weight(), self.weight_scale.reshape(-1),
                                                  self._w_zero_points(), self.bias, list(self.stride),
                                                  list(self.padding), list(self.dilation), self.groups, 1.0, 0,
                                                  torch.float32, "none", [], "")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, padding={self.padding}"


def integer_maps(model: nn.Module) -> dict[str, IntMap]:
    """Every `IntMap` of a model by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, IntMap)}


def prepack_(model: nn.Module) -> nn.Module:
    """Pack every oneDNN map's weight now (call before `torch.compile`: Inductor needs them as constants)."""
    for m in integer_maps(model).values():
        m.prepack()
    return model
