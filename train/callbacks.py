"""Callbacks for QAT fine-tuning: spectral diagnostics to the logger, and convert + export at the end."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from qclip.spectral.features import band_sqnr, feature_basis, parse_bands, per_rank_sqnr
from qclip.spectral.penalties import rank_spec, resolve_rank, tail_energy

__all__ = ["SpectralDiagnostics", "ExportQAT"]


class SpectralDiagnostics(L.Callback):
    """Every N steps: per-rank SQNR of the student's image features vs the FP model (banded), and the mean
    exact tail energy beyond rank k of the penalised weights."""

    def __init__(self, every_n_steps: int = 50, probe_images: int = 256, bands: str = "0-8,8-64,64-"):
        self.every_n_steps, self.probe_images, self.bands = every_n_steps, probe_images, parse_bands(bands)
        self._probe: torch.Tensor | None = None
        self._reference: torch.Tensor | None = None

    @torch.no_grad()
    def on_fit_start(self, trainer, pl_module) -> None:
        from qclip.io.models import load_model

        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "calibration_batches"):
            return
        batches = dm.calibration_batches()
        self._probe = torch.cat(batches)[: self.probe_images] if batches else None
        if self._probe is None:
            return
        reference = pl_module.teacher or load_model(pl_module.hparams.model, pl_module.hparams.pretrained).model
        reference = reference.to(pl_module.device).eval()
        self._reference = reference.encode_image(self._probe.to(pl_module.device)).float().cpu()

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._probe is None or trainer.global_step % self.every_n_steps:
            return
        # switch modes through the LightningModule: its train() keeps the teacher (and, with freeze_bn, the
        # student's BatchNorm layers) in eval mode, which the inner model's train() would undo
        was_training = pl_module.training
        pl_module.eval()
        student = pl_module.model.encode_image(self._probe.to(pl_module.device)).float().cpu()
        pl_module.train(was_training)
        r = per_rank_sqnr(self._reference, student, feature_basis(self._reference))
        metrics = {f"spectral/sqnr_db/{k}": v for k, v in band_sqnr(r["signal"], r["error"], self.bands).items()
                   if v == v}
        names = pl_module._penalised
        if names:
            k = pl_module.hparams.spectral_k
            metrics["spectral/weight_tail_energy"] = float(torch.stack(
                [tail_energy(pl_module.model.get_submodule(n).weight.detach().float(), _rank(k, n, pl_module))
                 for n in names]).mean())
        pl_module.log_dict(metrics)


def _rank(k: float, name: str, pl_module) -> int:
    w = pl_module.model.get_submodule(name).weight
    return resolve_rank(rank_spec(k), min(w.shape[0], w[0].numel()))


class ExportQAT(L.Callback):
    """At the end of fit: write the run's export folder (`qclip.io.export_dir.save_export_dir`, the layout `qclip export`
    writes): `float/` (fake quantizers folded into float weights; stock open_clip loads it) and, for quantized runs,
    the integer model (`int.safetensors`, the learned LSQ steps as its weight and activation grids) with
    `export.json` listing every quantized map and its kernel; `load_model(EXPORT_DIR)` rebuilds it."""

    def __init__(self, dirpath: str | None = None, int_export: bool = True):
        self.dirpath, self.int_export = dirpath, int_export

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        from qclip.quant.spec import parse_spec

        from qclip.io.export_dir import save_export_dir
        from qclip.io.models import model_config

        out = Path(self.dirpath or Path(trainer.default_root_dir) / "export")
        model_cfg, preprocess_cfg = model_config(pl_module.hparams.model)
        spec_text = pl_module.hparams.quant
        spec = parse_spec(spec_text) if self.int_export and spec_text else None
        source = {"model": pl_module.hparams.model, "pretrained": pl_module.hparams.pretrained, "quant": spec_text,
                  "qat_backend": pl_module.hparams.backend, "global_step": trainer.global_step}
        manifest = save_export_dir(pl_module.model, spec, out, model_cfg=model_cfg,  # copies it to the CPU itself
                                   preprocess_cfg=preprocess_cfg, source=source)
        s = manifest["summary"]
        print(f"qclip: exported {out / 'float'}" + (f" and the integer model ({s['integer_arithmetic']}/{s['maps']} "
                                                    f"maps in integer arithmetic) in {out}" if s["maps"] else ""))
