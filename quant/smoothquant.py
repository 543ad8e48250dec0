"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights before quantization.

For each LayerNorm feeding linear maps (attention q/k/v after `ln_1`, the MLP's first layer after `ln_2`),
s_j = max|X_j|^α / max|W_:,j|^(1-α); the LayerNorm's γ and β are divided by s and the weights' input columns
multiplied by s, so the float function is unchanged. Maps without a foldable LayerNorm before them (out and
second MLP projections, convolutions behind ReLU, the tower projections) are left to plain RTN.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["smoothing_groups", "collect_input_absmax", "apply_smoothquant_"]


def smoothing_groups(model: nn.Module, prefixes: tuple[str, ...]) -> list[tuple[str, nn.LayerNorm, list[nn.Linear]]]:
    """(name, LayerNorm, linears fed by it) for every residual attention block under `prefixes`."""
    groups = []
    for name, block in model.named_modules():
        if not name.startswith(prefixes):
            continue
        ln_1, attn, ln_2, mlp = (getattr(block, a, None) for a in ("ln_1", "attn", "ln_2", "mlp"))
        if isinstance(ln_1, nn.LayerNorm) and all(isinstance(getattr(attn, p, None), nn.Linear)
                                                  for p in ("q_proj", "k_proj", "v_proj")):
            groups.append((f"{name}.ln_1", ln_1, [attn.q_proj, attn.k_proj, attn.v_proj]))
        c_fc = getattr(mlp, "c_fc", None) if mlp is not None else None
        if isinstance(ln_2, nn.LayerNorm) and isinstance(c_fc, nn.Linear):
            groups.append((f"{name}.ln_2", ln_2, [c_fc]))
    return groups


@torch.no_grad()
def collect_input_absmax(model: nn.Module, norms: list[nn.LayerNorm], calibrate: Callable[[nn.Module], None]
                         ) -> list[torch.Tensor]:
    """Per-channel max |output| of each LayerNorm over the calibration batches."""
    stats: list[torch.Tensor | None] = [None] * len(norms)
    handles = []
    for i, ln in enumerate(norms):
        def hook(module, inputs, output, i=i):
            amax = output.detach().abs().float().reshape(-1, output.shape[-1]).amax(0)
            stats[i] = amax if stats[i] is None else torch.maximum(stats[i], amax)
        handles.append(ln.register_forward_hook(hook))
    try:
        calibrate(model)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, s in enumerate(stats) if s is None]
    if missing:
        raise RuntimeError(f"calibration never ran through {len(missing)} LayerNorms: does it cover both towers?")
    return stats


@torch.no_grad()
def apply_smoothquant_(model: nn.Module, prefixes: tuple[str, ...], calibrate: Callable[[nn.Module], None],
                      alpha: float = 0.5) -> int:
    """Smooth every LayerNorm→linear group under `prefixes`; return the number of groups smoothed."""
    groups = smoothing_groups(model, prefixes)
    if not groups:
        return 0
    act_max = collect_input_absmax(model, [g[1] for g in groups], calibrate)
    for (_, ln, linears), amax_x in zip(groups, act_max):
        amax_w = torch.stack([lin.weight.detach().abs().float().amax(0) for lin in linears]).amax(0)
        s = (amax_x.clamp(min=1e-5) ** alpha) / (amax_w.clamp(min=1e-5) ** (1 - alpha))
        s = s.clamp(min=1e-5)
        ln.weight.div_(s.to(ln.weight.dtype))
        if ln.bias is not None:
            ln.bias.div_(s.to(ln.bias.dtype))
        for lin in linears:
            lin.weight.mul_(s.to(lin.weight.dtype))
    return len(groups)
