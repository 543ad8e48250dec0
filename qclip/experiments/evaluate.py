"""The `qclip eval` workflow as a library call: check the outputs, reuse a stored record, else run the reliability
suite on one model (and its quantized variant) and write the record. Writes `out` (JSON) and appends to `store`."""

from __future__ import annotations

import os
from typing import NamedTuple

from qclip.evals.suite import ReliabilitySuite, SuiteConfig
from qclip.io.errors import QclipInputError
from qclip.io.paths import check_output_file
from qclip.io.records import SuiteRecord
from qclip.io.results import versions, write_json
from qclip.io.store import ResultsStore

from .demo import ensure_demo

__all__ = ["EvalResult", "run_eval"]


class EvalResult(NamedTuple):
    """The record written, and whether it was copied from the results store instead of evaluated."""

    record: SuiteRecord
    from_store: bool


def run_eval(cfg: SuiteConfig, out: str, *, store: str | None = None, data_root: str | None = None,
             device: str = "cpu", compile: bool = False, progress: bool = True, **suite_kw) -> EvalResult:
    """Evaluate `cfg` and write its record to `out` (and append it to `store`); a record already in `store` (same
    config hash) is copied instead. `suite_kw` go to `ReliabilitySuite` (batch_size, num_workers, use_cache).

    Bad input (an export folder with a quant spec, unwritable outputs, --store equal to --out) is refused before
    any model or data is loaded."""
    if cfg.quant is not None:
        from qclip.io.export_dir import export_dir_of

        if export_dir_of(cfg.model) is not None:
            raise QclipInputError(f"--model {cfg.model} is an export folder (already quantized): drop --quant, or "
                                  "evaluate its source model with --quant")
    check_output_file(out, "--out")
    if store is not None:
        check_output_file(store, "--store")
        if os.path.abspath(store) == os.path.abspath(out):
            raise QclipInputError(f"--store {store} and --out are the same file: give them different paths")
    results = ResultsStore(store) if store else None
    if results is not None and (done := results.get(cfg.hash)) is not None:
        write_json(out, done)
        return EvalResult(done, True)
    suite = ReliabilitySuite(cfg, data_root=data_root, device=device, progress=progress, compile=compile, **suite_kw)
    ensure_demo(cfg.model, data_root, progress)
    record = suite.run()
    record["versions"] = versions()
    write_json(out, record)
    if results is not None:
        results.append(record)
    return EvalResult(record, False)
