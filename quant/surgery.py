"""Attention surgery: expose every linear map of an open_clip model as an `nn.Linear` (or conv) module.

open_clip hides q/k/v inside `nn.MultiheadAttention.in_proj_weight` (and its own `Attention` and the ResNet
`AttentionPool2d`, which call `F.multi_head_attention_forward` on raw weights), and applies `visual.proj` /
`text_projection` as bare matrices. `attention_surgery_` rewrites them in place into equivalent modules whose
q, k, v, out and projections are `nn.Linear`, so quantizers, spectra and regularizers see 100% of the linear
maps. State-dict keys are unchanged in both directions, so a surgically changed model saves checkpoints that
stock open_clip loads, and loads stock checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.modified_resnet import AttentionPool2d
from open_clip.transformer import Attention as OpenClipAttention
from torch import nn

__all__ = ["LinearMHA", "LinearAttention", "LinearAttentionPool2d", "ProjectionLinear", "attention_surgery_",
           "LinearMap", "list_linear_maps", "tower_of", "is_surgically_changed"]


# ----------------------------------------------------------------------------------------------- state hooks
def _is_plain(t) -> bool:
    """A plain dense tensor (not a torchao integer tensor subclass)."""
    return type(t) in (torch.Tensor, nn.Parameter)


def _pack_qkv(module, state_dict, prefix, local_metadata):
    """State-dict post hook: write q/k/v back as MHA's packed `in_proj_*` (or separate `*_proj_weight`).

    Integer-exported (torchao tensor subclass) weights keep their separate q/k/v keys."""
    names = ("q_proj", "k_proj", "v_proj")
    if not all(_is_plain(state_dict.get(f"{prefix}{n}.weight")) for n in names):
        return
    weights = [state_dict.pop(f"{prefix}{n}.weight") for n in names]
    biases = [state_dict.pop(f"{prefix}{n}.bias", None) for n in names]
    if module._packed_qkv:
        state_dict[f"{prefix}in_proj_weight"] = torch.cat(weights)
    else:
        for n, w in zip(names, weights):
            state_dict[f"{prefix}{n}_weight"] = w
    if biases[0] is not None:
        state_dict[f"{prefix}in_proj_bias"] = torch.cat(biases)


def _unpack_qkv(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load pre hook: split MHA's `in_proj_*` (or `*_proj_weight`) keys into the q/k/v Linear keys."""
    names = ("q_proj", "k_proj", "v_proj")
    packed = state_dict.pop(f"{prefix}in_proj_weight", None)
    if packed is not None:
        for n, w in zip(names, packed.chunk(3)):
            state_dict[f"{prefix}{n}.weight"] = w.clone()  # own storage: same kernels as a fresh Linear
    for n in names:
        w = state_dict.pop(f"{prefix}{n}_weight", None)
        if w is not None:
            state_dict[f"{prefix}{n}.weight"] = w
    bias = state_dict.pop(f"{prefix}in_proj_bias", None)
    if bias is not None:
        for n, b in zip(names, bias.chunk(3)):
            state_dict[f"{prefix}{n}.bias"] = b.clone()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _additive_mask(attn_mask, key_padding_mask, b: int, h: int, lq: int, lk: int, dtype) -> torch.Tensor | None:
    """Merge MHA-style masks (bool True = blocked, or additive float) into one additive [B|1, H|1, Lq, Lk] mask."""
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros_like(m, dtype=dtype).masked_fill_(m, float("-inf"))
        m = m.to(dtype)
        mask = m.reshape(b, h, lq, lk) if m.dim() == 3 else m
    if key_padding_mask is not None:
        k = key_padding_mask
        if k.dtype == torch.bool:
            k = torch.zeros_like(k, dtype=dtype).masked_fill_(k, float("-inf"))
        k = k.to(dtype)[:, None, None, :]
        mask = k if mask is None else mask + k
    return mask


# ------------------------------------------------------------------------------------------ attention modules
class LinearMHA(nn.Module):
    """Drop-in for `nn.MultiheadAttention` (no bias_k/bias_v/zero-attn) with `nn.Linear` q/k/v/out projections."""

    def __init__(self, *, embed_dim: int, num_heads: int, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear,
                 out_proj: nn.Linear, batch_first: bool, dropout: float, packed_qkv: bool):
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first, self.dropout = embed_dim, num_heads, batch_first, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self._packed_qkv = packed_qkv
        self.register_state_dict_post_hook(_pack_qkv)
        self.register_load_state_dict_pre_hook(_unpack_qkv)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "LinearMHA":
        """Build the equivalent module from an `nn.MultiheadAttention`, sharing no storage with it."""
        if mha.bias_k is not None or mha.bias_v is not None or mha.add_zero_attn:
            raise ValueError("attention surgery does not support bias_k/bias_v/add_zero_attn")
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
        else:
            wq, wk, wv = mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach()
        bq, bk, bv = (mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None,) * 3)
        out = _linear(mha.out_proj.weight.detach(), None if mha.out_proj.bias is None else mha.out_proj.bias.detach())
        return cls(embed_dim=e, num_heads=mha.num_heads, q_proj=_linear(wq, bq), k_proj=_linear(wk, bk),
                   v_proj=_linear(wv, bv), out_proj=out, batch_first=mha.batch_first, dropout=mha.dropout,
                   packed_qkv=mha._qkv_same_embed_dim)

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = False, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        h = self.num_heads
        q = rearrange(self.q_proj(query), "b l (h d) -> b h l d", h=h)
        k = rearrange(self.k_proj(key), "b s (h d) -> b h s d", h=h)
        v = rearrange(self.v_proj(value), "b s (h d) -> b h s d", h=h)
        mask = _additive_mask(attn_mask, key_padding_mask, q.shape[0], h, q.shape[2], k.shape[2], q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            out = F.dropout(attn, p, self.training) @ v
            weights = attn.mean(1) if average_attn_weights else attn
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(rearrange(out, "b h l d -> b l (h d)"))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


class LinearAttention(OpenClipAttention):
    """open_clip's custom `Attention` with q/k/v as `nn.Linear` (the instance's class is swapped in place)."""

    @classmethod
    def convert(cls, attn: OpenClipAttention) -> "LinearAttention":
        """Split `in_proj_weight` into q/k/v Linear modules and swap the class of `attn` in place."""
        bias = attn.in_proj_bias.detach().chunk(3) if attn.in_proj_bias is not None else (None,) * 3
        linears = [_linear(w, b) for w, b in zip(attn.in_proj_weight.detach().chunk(3), bias)]
        del attn.in_proj_weight, attn.in_proj_bias
        attn.q_proj, attn.k_proj, attn.v_proj = linears
        attn._packed_qkv = True
        attn.__class__ = cls
        attn.register_state_dict_post_hook(_pack_qkv)
        attn.register_load_state_dict_pre_hook(_unpack_qkv)
        return attn

    def forward(self, x, attn_mask: torch.Tensor | None = None):
        n, length, c = x.shape
        q, k, v = (rearrange(p(x), "b l (h d) -> b h l d", h=self.num_heads)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = _additive_mask(attn_mask, None, n, self.num_heads, length, length, q.dtype)
        if self.logit_scale is not None:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
            attn = attn * torch.clamp(self.logit_scale, max=self.logit_scale_max).exp()
            if mask is not None:
                attn = attn + mask
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        else:
            x = F.scaled_dot_product_attention(self.ln_q(q), self.ln_k(k), v, attn_mask=mask,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        if self.head_scale is not None:
            x = x * self.head_scale
        x = self.ln_inner(rearrange(x, "b h l d -> b l (h d)"))
        return self.out_drop(self.out_proj(x))


class LinearAttentionPool2d(AttentionPool2d):
    """ModifiedResNet's attention pool calling its q/k/v/c `nn.Linear` modules (class swapped in place)."""

    def forward(self, x):
        x = rearrange(x, "n c h w -> n (h w) c")
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        h = self.num_heads
        q = rearrange(self.q_proj(x[:, :1]), "n l (h d) -> n h l d", h=h)  # only the pooled token is returned
        k = rearrange(self.k_proj(x), "n l (h d) -> n h l d", h=h)
        v = rearrange(self.v_proj(x), "n l (h d) -> n h l d", h=h)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(rearrange(out, "n h l d -> n l (h d)"))[:, 0]


# ------------------------------------------------------------------------------------------------ projections
def _proj_to_matrix(module, state_dict, prefix, local_metadata):
    """State-dict post hook: store the projection as open_clip's bare [in, out] matrix under the parent's key."""
    if not _is_plain(state_dict.get(f"{prefix}weight")):
        return  # integer-exported weights keep the module layout
    weight = state_dict.pop(f"{prefix}weight")
    state_dict[prefix[:-1]] = weight.t().contiguous()


class ProjectionLinear(nn.Linear):
    """A bare projection matrix (`x @ P`) as an `nn.Linear` (weight = Pᵀ); `x @ module` still works."""

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> "ProjectionLinear":
        """Wrap an open_clip [in, out] projection parameter."""
        lin = cls(matrix.shape[0], matrix.shape[1], bias=False, device=matrix.device, dtype=matrix.dtype)
        with torch.no_grad():
            lin.weight.copy_(matrix.detach().t())
        lin.register_state_dict_post_hook(_proj_to_matrix)
        return lin


def _make_matrix_loader(attr: str):
    def hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        matrix = state_dict.pop(f"{prefix}{attr}", None)
        if matrix is not None:
            state_dict[f"{prefix}{attr}.weight"] = matrix.t().contiguous()
    return hook


def _wrap_projection(owner: nn.Module, attr: str) -> bool:
    value = getattr(owner, attr, None)
    if not isinstance(value, nn.Parameter) or value.dim() != 2:
        return False
    requires_grad = value.requires_grad
    delattr(owner, attr)
    proj = ProjectionLinear.from_matrix(value)
    proj.weight.requires_grad_(requires_grad)
    setattr(owner, attr, proj)
    owner.register_load_state_dict_pre_hook(_make_matrix_loader(attr))
    return True


# ---------------------------------------------------------------------------------------------------- surgery
def attention_surgery_(model: nn.Module) -> nn.Module:
    """Rewrite `model` in place so that every attention projection and output projection is an `nn.Linear`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, LinearMHA.from_mha(child).train(child.training))
            elif type(child) is OpenClipAttention:
                LinearAttention.convert(child)
            elif type(child) is AttentionPool2d:
                child.__class__ = LinearAttentionPool2d
    visual = getattr(model, "visual", None)
    if visual is not None:
        _wrap_projection(visual, "proj")
    _wrap_projection(model, "text_projection")
    text = getattr(model, "text", None)  # CustomTextCLIP keeps the projection on its text tower
    if text is not None:
        _wrap_projection(text, "text_projection")
    return model


def is_surgically_changed(model: nn.Module) -> bool:
    """True when no attention module hides its projections any more."""
    return not any(isinstance(m, nn.MultiheadAttention) or type(m) in (OpenClipAttention, AttentionPool2d)
                   for m in model.modules())


# -------------------------------------------------------------------------------------------------- inventory
@dataclass(frozen=True)
class LinearMap:
    """One quantizable linear map: its module path, tower, role and weight shape (out, in[, kh, kw])."""

    name: str
    tower: str  # "vision" | "text"
    role: str  # q | k | v | out | fc1 | fc2 | proj | conv | patch_embed | linear
    shape: tuple[int, ...]


_ROLE_BY_LEAF = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "out", "c_fc": "fc1", "fc1": "fc1",
                 "fc2": "fc2", "proj": "proj", "text_projection": "proj", "conv1": "conv"}


def _role(name: str, module: nn.Module) -> str:
    leaf = name.rsplit(".", 1)[-1]
    parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if isinstance(module, ProjectionLinear) or leaf == "text_projection":
        return "proj"
    if leaf == "c_proj":
        return "out" if parent.startswith("attnpool") else "fc2"
    if isinstance(module, nn.Conv2d):  # a ViT patch embedding is a conv whose stride equals its kernel
        patchify = module.kernel_size == module.stride and module.kernel_size[0] > 1
        return "patch_embed" if patchify else "conv"
    return _ROLE_BY_LEAF.get(leaf, "linear")


def tower_of(name: str) -> str:
    """The tower a module or parameter name belongs to: vision (under `visual.`) or text."""
    return "vision" if name.startswith("visual.") else "text"


def list_linear_maps(model: nn.Module, *, include_conv: bool = True) -> list[LinearMap]:
    """Every `nn.Linear` (and, by default, `nn.Conv2d`) of a model, with tower and role, in module order.

    Run `attention_surgery_` first: before it, MHA q/k/v and the bare projections are invisible here.
    """
    kinds = (nn.Linear, nn.Conv2d) if include_conv else (nn.Linear,)
    out = []
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
            out.append(LinearMap(name, tower_of(name), _role(name, module), tuple(module.weight.shape)))
        elif isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
            pass  # MHA's out_proj is read directly by MHA: not separately quantizable until surgery
    return out
