"""Grid efficiency without changing a number: SVDs reused across truncation cells (bit-identical weights), the
FP spectra computed once per model for all seeds, and a run's records identical with and without the reuse."""

from __future__ import annotations

import copy

import torch
from qclip.quant import truncation
from qclip.quant.truncation import reuse_svds, truncate_weight


def test_reused_svd_gives_bit_identical_truncations():
    torch.manual_seed(0)
    w = torch.randn(48, 8, 3, 3)
    fresh = [truncate_weight(w, mode, value) for mode, value in (("energy", 0.9), ("fraction", 0.5), ("topk", 3))]
    with reuse_svds() as memo:
        again = [truncate_weight(w.clone(), mode, value)
                 for mode, value in (("energy", 0.9), ("fraction", 0.5), ("topk", 3))]
        assert (memo.misses, memo.hits) == (1, 2)  # one decomposition served three truncations of equal bytes
        truncate_weight(w + 1e-7, "topk", 3)  # one changed bit is another matrix
        assert memo.misses == 2
    for (wa, ka, sa), (wb, kb, sb) in zip(fresh, again):
        assert torch.equal(wa, wb) and (ka, sa) == (kb, sb)
    assert truncation._MEMO is None  # the block's memo is gone after it


def test_memo_respects_its_byte_budget():
    torch.manual_seed(0)
    mats = [torch.randn(32, 32) for _ in range(4)]
    one = sum(t.numel() * t.element_size() for t in torch.linalg.svd(mats[0], full_matrices=False))
    with reuse_svds(max_bytes=2 * one) as memo:
        for m in mats:
            truncate_weight(m, "topk", 4)
        assert len(memo.entries) == 2 and memo.bytes <= 2 * one
        truncate_weight(mats[0], "topk", 4)  # evicted (least recently used): decomposed again
        assert memo.misses == 5


def test_grid_decomposes_each_fp_weight_once_and_shares_fp_spectra_across_seeds(micro_dir, wds_root, tmp_path,
                                                                                 monkeypatch):
    """Two truncation cells and a matched truncation over two seeds: every FP map is decomposed once (the other
    truncations hit the memo), FpWeights is built once for both seeds, and the records equal a run without reuse."""
    from qclip.experiments import ablate
    from qclip.experiments.grid import load_grid

    monkeypatch.setenv("QCLIP_DATA_ROOT", str(wds_root))
    grid = tmp_path / "g.yaml"
    grid.write_text("\n".join([
        "name: eff", f"models: [{{name: 'local-dir:{micro_dir}'}}]", "methods: [rtn]", "bits: [w4a8]",
        "scopes: [vision]", "match_truncation: [w4a8]", "truncation: [rank-f0.5, rank-e0.9]", "seeds: [0, 1]",
        "dataset: wds/cifar10", "limit: 64", "bootstrap: 0", "bands: 0-4,4-16,16-", "batch_size: 32"]) + "\n")
    cfg = load_grid(grid)
    built, memos = [], []
    real_fp, real_reuse = ablate.FpWeights, truncation.reuse_svds

    def counting_fp(model, **kw):
        built.append(1)
        return real_fp(model, **kw)

    def keeping_reuse(*a, **kw):
        cm = real_reuse(*a, **kw)
        memo = cm.__enter__()
        memos.append(memo)

        class _Ctx:
            def __enter__(self):
                return memo

            def __exit__(self, *exc):
                return cm.__exit__(*exc)
        return _Ctx()

    monkeypatch.setattr(ablate, "FpWeights", counting_fp)
    monkeypatch.setattr(truncation, "reuse_svds", keeping_reuse)
    ablate.run_grid(cfg, tmp_path / "reuse", progress=False, report=False, num_workers=0)
    assert len(built) == 1
    (memo,) = memos
    from qclip.quant.surgery import attention_surgery_, list_linear_maps

    from qclip.io.models import load_model

    vision = [m for m in list_linear_maps(attention_surgery_(copy.deepcopy(load_model(f"local-dir:{micro_dir}").model)))
              if m.tower == "vision"]
    # 3 truncation cells x 2 seeds = 6 truncations of each vision map; only the first decomposes it
    assert memo.misses == len(vision) and memo.hits == 5 * len(vision)

    monkeypatch.setattr(truncation, "reuse_svds", lambda *a, **kw: _no_reuse())
    ablate.run_grid(cfg, tmp_path / "plain", progress=False, report=False, num_workers=0)
    strip = ("seconds", "timings", "written_at", "versions", "spectral")
    runs = [ablate.merge_results(cfg, tmp_path / name)[0] for name in ("reuse", "plain")]
    # every metric, delta and paired interval identical; the spectral summaries to float rounding (the batched
    # threaded LAPACK svdvals behind them is not bitwise reproducible from run to run, reuse or not)
    assert [{k: v for k, v in r.items() if k not in strip} for r in runs[0]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in runs[1]]
    for ra, rb in zip(*runs):
        _close(ra["spectral"], rb["spectral"])


def _close(a, b, path: str = "spectral") -> None:
    """Nested records equal, floats to 1e-6 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


class _no_reuse:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
