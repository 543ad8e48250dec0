"""train: QAT LightningModule and pair DataModule — short fits per loss, the spectral regularizer's effect."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from qclip.quant.modules import is_quantized
from qclip.train.data import CaptionedWds, PairDataModule, TokenizeCollate
from qclip.train.losses import feature_spectral_penalty
from qclip.train.module import QATCLIPModule, is_quantizer_parameter


def _fit(model_src, wds_root, tmp_path, steps=5, **kw):
    L.seed_everything(0, verbose=False)
    dm = PairDataModule(data_root=str(wds_root), batch_size=16, num_workers=0, train_limit=16 * steps,
                        val_limit=32, calib_pairs=32)
    module = QATCLIPModule(model=model_src, **kw)
    trainer = L.Trainer(max_steps=steps, limit_val_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(module, dm)
    return module, trainer


@torch.no_grad()
def _val_accuracy(module, dm) -> float:
    """Top-1 of the trained model on the 32 validation images, with stock open_clip's zero-shot classifier."""
    import open_clip
    import torch.nn.functional as F

    model, spec = module.model.eval(), dm.val_spec
    clf = open_clip.build_zero_shot_classifier(model, module.tokenizer, spec.classnames,
                                               [lambda c, t=t: t.format(c=c) for t in spec.templates])
    correct = seen = 0
    for images, labels in dm.val_dataloader():
        correct += int(((F.normalize(model.encode_image(images).float(), dim=-1) @ clf.float()).argmax(-1)
                        == labels).sum())
        seen += len(labels)
    assert seen == 32
    return correct / seen


def test_captions_use_text_or_epoch_dependent_templates(wds_root):
    from qclip.io.data import resolve_dataset

    spec = resolve_dataset("wds/cifar10", str(wds_root), "train")
    ds = CaptionedWds(spec.shards, None, 40, spec.classnames, spec.templates, seed=0)
    first = [cap for _, cap, _ in ds]
    assert [cap for _, cap, _ in ds] == first  # deterministic
    ds.epoch = 1
    second = [cap for _, cap, _ in ds]
    assert second != first and all(spec.classnames[y] in cap for (_, cap, y) in ds)
    assert ds.caption("k", 0, "my own caption") == "my own caption"
    images, tokens, labels = TokenizeCollate(lambda caps: caps)([(torch.zeros(3, 2, 2), "a", 0),
                                                                 (torch.zeros(3, 2, 2), "b", 1)])
    assert images.shape == (2, 3, 2, 2) and tokens == ["a", "b"] and labels.tolist() == [0, 1]


@pytest.mark.parametrize("kw", [dict(quant="w4a8-lsq"), dict(quant="w4a8-lsq", distill_weight=1.0),
                                dict(quant="w4a8-lsq", distill_weight=1.0, contrastive_weight=0.0),
                                dict(quant="w4a8-rot-lsq", spectral_lambda=0.5, spectral_on="both"),
                                dict(quant=None, spectral_lambda=0.5, spectral_k=4.0, spectral_on="both")])
def test_five_step_fit_per_loss(micro_dir, wds_root, tmp_path, kw):
    module, trainer = _fit(f"local-dir:{micro_dir}", wds_root, tmp_path, **kw)
    assert trainer.global_step == 5
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and "train/spectral_penalty" in metrics
    assert float(metrics["val/acc1"]) == pytest.approx(_val_accuracy(module, trainer.datamodule), abs=1.5 / 32)
    assert "val/ece" in metrics
    if module.teacher is not None:
        assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    quantized = any(is_quantized(m) for m in module.model.modules())
    assert quantized == (kw["quant"] is not None)
    if kw["quant"]:
        groups = trainer.optimizers[0].param_groups
        assert groups[0]["initial_lr"] == 1e-5 and groups[-1]["initial_lr"] == 1e-4  # scales: their own lr
        assert any(is_quantizer_parameter(n) for n, _ in module.model.named_parameters())


def test_spectral_regularizer_lowers_feature_tail_energy(micro_dir, wds_root, tmp_path):
    probe = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tails = {}
    for lam in (0.0, 20.0):
        module, _ = _fit(f"local-dir:{micro_dir}", wds_root, tmp_path / str(lam), steps=8, quant=None, lr=2e-3,
                         spectral_lambda=lam, spectral_k=4, warmup_steps=0)
        with torch.no_grad():
            tails[lam] = float(feature_spectral_penalty(module.model.encode_image(probe), 4))
    assert tails[20.0] < tails[0.0]


def test_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="spectral_on"):
        QATCLIPModule(spectral_on="gradients")
    with pytest.raises(ValueError, match=">= 0"):
        QATCLIPModule(spectral_lambda=-1)
    with pytest.raises(ValueError, match="both be 0"):
        QATCLIPModule(contrastive_weight=0.0, distill_weight=0.0)


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_batchnorm_on_running_statistics(freeze_bn):
    module = QATCLIPModule(model="unused", quant=None, freeze_bn=freeze_bn)
    module.model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    stats = module.model[1].running_mean.clone()
    module.train()
    assert module.model[0].training and module.model[1].training is not freeze_bn
    module.model(torch.randn(8, 3, 6, 6) + 3.0)
    assert torch.equal(module.model[1].running_mean, stats) is freeze_bn
    module.eval()
    assert not module.model[1].training


def test_warmup_cosine_known_values():
    from qclip.train.schedule import warmup_cosine

    f = warmup_cosine(2, 10)
    assert [f(s) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0) and f(50) == pytest.approx(0.0)
    g = warmup_cosine(0, 4)  # no warm-up: the cosine starts at step 0
    assert [round(g(s), 6) for s in range(5)] == [1.0, 0.853553, 0.5, 0.146447, 0.0]
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(-1, 10)
