"""A model variant against its full-precision reference on the same images, one paired test per metric and set:
Δacc1 by McNemar's exact test, ΔECE by a paired bootstrap with p = (k + 1)/(B + 1), ΔAUROC (MCM, ID positive) by
DeLong's paired test; every Δ is variant − FP. Each set also carries a digest of the variant's logits (or OOD
scores), so variants with identical predictions can share one test in a family. Takes tensors only (no suite, no
model); writes nothing. `compare_to_fp` is the one comparison `qclip eval`, `qclip ablate` and the report use."""

from __future__ import annotations

import hashlib
from typing import TypedDict

import torch

from .metrics import delong, ece_gaps, ece_of_gaps, mcnemar, min_resamples, paired_bootstrap_many, top_label

__all__ = ["PairedInputs", "compare_to_fp", "compare_labelled", "compare_ood", "digest", "family_resamples",
           "labelled_set_count"]


class PairedInputs(TypedDict, total=False):
    """One model's outputs on a suite's sets: calibration logits [N, C] and labels [N] of every labelled set, and
    MCM scores [N_id + N_ood] with the ID indicator (1 = ID) of every OOD set."""

    id: tuple[torch.Tensor, torch.Tensor]
    corruptions: dict[str, tuple[torch.Tensor, torch.Tensor]]
    shift: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ood: dict[str, tuple[torch.Tensor, torch.Tensor]]


def digest(x: torch.Tensor) -> str:
    """First 16 hex digits of the sha256 of a tensor's float32 bytes: equal digests = identical predictions."""
    return hashlib.sha256(x.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def labelled_set_count(inputs: PairedInputs) -> int:
    """How many labelled sets (ID, corruptions, shift) `inputs` holds."""
    return 1 + len(inputs.get("corruptions") or {}) + len(inputs.get("shift") or {})


def family_resamples(requested: int, family_size: int, alpha: float = 0.05) -> int:
    """The resample count ECE tests use: 0 when the bootstrap is off (`requested` 0), else at least
    `min_resamples(family_size, alpha)` so the p floor 1/(B + 1) sits well below Holm's first threshold α/m (a
    smaller `requested` is raised, not refused: the grid's intervals keep their own count)."""
    return 0 if requested <= 0 else max(requested, min_resamples(max(1, family_size), alpha))


def _labelled_many(fp: list[tuple[torch.Tensor, torch.Tensor]], q: list[tuple[torch.Tensor, torch.Tensor]],
                   n_boot: int, seed: int) -> list[dict]:
    """Paired tests of sets of one N (e.g. the ID set and its corruptions): McNemar per set, one bootstrap for
    every set's ΔECE (the same resamples)."""
    tops_fp = [top_label(lg.double().softmax(-1), y) for lg, y in fp]
    tops_q = [top_label(lg.double().softmax(-1), y) for lg, y in q]
    out = [{"n": int(y.numel()), "hash": digest(lg), "acc1": mcnemar(r_q, r_fp)}
           for (lg, y), (_, r_fp), (_, r_q) in zip(q, tops_fp, tops_q)]
    if n_boot > 0:
        gaps = [ece_gaps(torch.stack([t[0] for t in tops]), torch.stack([t[1] for t in tops]))
                for tops in (tops_q, tops_fp)]  # once per model: each resample is then one matrix product
        eces = paired_bootstrap_many(ece_of_gaps, (gaps[0],), (gaps[1],), n_boot=n_boot, seed=seed)
        for entry, e in zip(out, eces):
            entry["ece"] = e
    return out


def compare_labelled(fp_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *, n_boot: int,
                     seed: int = 0) -> dict:
    """{"n", "hash", "acc1": McNemar test, "ece": bootstrap test (absent when `n_boot` is 0)} of a variant's
    calibration logits against FP's on one labelled set (see `qclip.io.records.PairedSet`)."""
    return _labelled_many([(fp_logits, labels)], [(logits, labels)], n_boot, seed)[0]


def compare_ood(fp_scores: torch.Tensor, scores: torch.Tensor, is_id: torch.Tensor) -> dict:
    """{"n", "hash", "auroc": DeLong test} of a variant's MCM scores against FP's on the ID + OOD samples."""
    return {"n": int(scores.numel()), "hash": digest(scores), "auroc": delong(scores, fp_scores, is_id)}


@torch.no_grad()
def compare_to_fp(fp: PairedInputs, variant: PairedInputs, *, n_boot: int, seed: int = 0) -> dict:
    """{"id": set, "corruptions": {NAME: set}, "shift": {NAME: set}, "ood": {NAME: set}} of paired tests of
    `variant` against `fp` on every set both hold (`n_boot`: the ECE bootstrap's resamples, 0 = no ECE test; see
    `family_resamples`). Labelled sets of one N share one resample matrix."""
    named = [("id", "", fp["id"], variant["id"])]
    for role in ("corruptions", "shift"):
        named += [(role, name, pair, variant[role][name]) for name, pair in (fp.get(role) or {}).items()]
    by_n: dict[int, list] = {}
    for item in named:
        by_n.setdefault(int(item[2][1].numel()), []).append(item)
    out: dict = {"id": {}, "corruptions": {}, "shift": {}, "ood": {}}
    for items in by_n.values():
        for (role, name, _, _), entry in zip(items, _labelled_many([i[2] for i in items], [i[3] for i in items],
                                                                    n_boot, seed)):
            if role == "id":
                out["id"] = entry
            else:
                out[role][name] = entry
    for name, (s_fp, is_id) in (fp.get("ood") or {}).items():
        out["ood"][name] = compare_ood(s_fp, variant["ood"][name][0], is_id)
    return out
