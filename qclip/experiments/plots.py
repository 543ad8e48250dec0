"""Every PNG figure qclip draws: spectra, per-rank SQNR, band accuracy, FFT profiles, reliability diagrams, and
the report's line plots (matplotlib Agg canvas; no global pyplot state). Each `plot_*` writes one PNG, atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qclip.evals.metrics.calibration import ece_from_bins
from qclip.io.paths import atomic_write_bytes

__all__ = ["plot_sigma_spectra", "plot_sqnr", "plot_band_accuracy", "plot_radial_profiles", "plot_reliability",
           "save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render a figure to PNG at `path`, written atomically (`qclip.io.paths.atomic_write_bytes`)."""
    path = Path(path)
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_sigma_spectra(groups: dict[str, list[tuple[list[float], list[float]]]], path, title: str = "") -> Path:
    """One panel per layer group: normalised σ_i (FP solid, other dashed) against normalised rank i/r."""
    n = max(1, len(groups))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    for j, (name, pairs) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, j + 1)
        for k, (fp, other) in enumerate(pairs):
            r = len(fp)
            x = [i / max(1, r - 1) for i in range(r)]
            ax.semilogy(x, [v / fp[0] for v in fp], color="C0", lw=0.8, alpha=0.7, label="FP" if k == 0 else None)
            ax.semilogy(x, [v / fp[0] for v in other], color="C3", lw=0.8, ls="--", alpha=0.7,
                        label="quantized" if k == 0 else None)
        ax.set_title(f"{name} ({len(pairs)} layers)", fontsize=9)
        ax.set_xlabel("rank / r")
        ax.set_ylabel("σ / σ_max(FP)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_sqnr(sqnr_db: list[float], path, title: str = "", bands=None) -> Path:
    """Per-rank SQNR (dB) against rank, with band boundaries."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(len(sqnr_db)), sqnr_db, lw=1)
    for b in bands or ():
        ax.axvline(b[0], color="grey", ls=":", lw=0.8)
    ax.set_xlabel("rank i (FP feature basis)")
    ax.set_ylabel("SQNR_i (dB)")
    ax.set_title(title or "per-rank SQNR")
    return save_figure(fig, path)


def plot_band_accuracy(acc: dict[str, dict[str, float]], path, title: str = "") -> Path:
    """Grouped bars: zero-shot accuracy per rank band for each model (FP, quantized, truncated...)."""
    models = list(acc)
    bands = list(next(iter(acc.values())))
    fig = Figure(figsize=(1.5 + 1.6 * len(bands), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    for j, m in enumerate(models):
        ax.bar([i + j * width for i in range(len(bands))], [acc[m][b] for b in bands], width, label=m)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(bands))], bands)
    ax.set_xlabel("rank band")
    ax.set_ylabel("zero-shot top-1")
    ax.legend(fontsize=8)
    ax.set_title(title or "accuracy of features restricted to rank bands")
    return save_figure(fig, path)


def plot_radial_profiles(profiles: dict[str, list[float]], freqs: list[float], path, title: str = "") -> Path:
    """Radial FFT power profiles of feature maps, one line per model."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for name, p in profiles.items():
        ax.semilogy(freqs[: len(p)], p, label=name)
    ax.set_xlabel("radial frequency (cycles / patch)")
    ax.set_ylabel("power share")
    ax.legend(fontsize=8)
    ax.set_title(title or "2D FFT radial energy of feature maps")
    return save_figure(fig, path)


def plot_reliability(bins: dict[str, list], path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a reliability diagram PNG (accuracy bars, gap to mean confidence, diagonal, ECE in the title)."""
    lower, upper = bins["lower"], bins["upper"]
    full = [i for i, c in enumerate(bins["count"]) if c]
    centers = [(lower[i] + upper[i]) / 2 for i in full]
    widths = [upper[i] - lower[i] for i in full]
    acc = [bins["accuracy"][i] for i in full]
    conf = [bins["confidence"][i] for i in full]

    fig = Figure(figsize=(4.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(centers, acc, width=widths, color="tab:blue", edgecolor="black", linewidth=0.6, label="accuracy")
    ax.bar(centers, [abs(a - c) for a, c in zip(acc, conf)], bottom=[min(a, c) for a, c in zip(acc, conf)],
           width=widths, color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", linewidth=0.6, label="gap")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label)")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}ECE = {ece_from_bins(bins):.4f} (N = {sum(bins['count'])}, {len(lower)} bins)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
