"""The dataset registry as `qclip data` shows it: the listing table, fetching with one outcome line per dataset,
and verifying a data root with a verdict. Writes datasets under the root it is given (fetch only)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from . import registry
from .errors import DataError

__all__ = ["data_root_of", "list_lines", "fetch_names", "fetch_lines", "verify_lines"]


def data_root_of(data_root: str | None, *, must_exist: bool) -> Path:
    """`--data-root`, else the default fetch root; a given root that must exist and is not a folder is refused."""
    root = Path(data_root) if data_root else registry.default_fetch_root()
    if must_exist and data_root and not root.is_dir():
        raise DataError(f"--data-root {root} is not a folder")
    return root


def list_lines(root: Path) -> Iterator[str]:
    """The header and one line per registered dataset: samples per split, MB, source, whether `root` holds it."""
    reg = registry.load_registry()
    yield f"{'name':26s} {'samples':>16s} {'MB':>6s}  {'source':48s} in {root}"
    for name in registry.dataset_names():
        entry = reg["datasets"][name]
        src = reg["sources"][next(iter(entry["sources"].values()))]
        samples = "+".join(str(n) for n in entry["samples"].values())
        yield (f"{name:26s} {samples:>16s} {entry['bytes'] / 1e6:6.1f}  {src['repo'] + '@' + src['commit'][:8]:48s} "
               f"{'yes' if (root / f'wds_{name}').is_dir() else '-'}")


def fetch_names(names: list[str]) -> list[str]:
    """Registered dataset names of a user's list (`all`: every one); an unknown name is a user error."""
    return registry.dataset_names() if "all" in names else [registry.get_entry(n)["name"] for n in names]


def fetch_lines(names: list[str], root: Path, *, progress: bool = True,
                log: Callable[[str], None] | None = None) -> Iterator[str]:
    """Fetch and build each dataset under `root`, yielding one outcome line per dataset as it is done."""
    for name in names:
        path, result = registry.fetch_dataset(name, root, progress=progress, log=log)
        if result is None:
            yield f"wds/{name}: already in {path} (check it with: qclip data verify --data-root {root} {name})"
            continue
        counts = ", ".join(f"{split} {n}" for split, n in result.samples.items())
        note = (f"; {len(result.reencoded)} re-encoded shard(s) differ in bytes from the registry (other Pillow/"
                "libjpeg/zlib), content checked" if result.reencoded else "; every file matches the registry")
        yield f"wds/{name}: built {path} ({counts} samples{note})"


def verify_lines(root: Path, names: list[str], *, strict: bool = False) -> Iterator[str]:
    """Re-hash the datasets (all present when `names` is empty) under `root`: one line each and a count line, then a
    `DataError` when one failed or none was there."""
    results = registry.verify_root(root, None if not names or "all" in names else names, strict=strict)
    for result in results:
        yield result.line()
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "re-encoded", "absent", "FAILED")}
    yield f"{root}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    failed = [r for r in results if not r.passed]
    if failed:
        raise DataError(f"verify: {len(failed)} dataset(s) failed, first: {failed[0].name}: {failed[0].detail}")
    if not any(r.status != "absent" for r in results):
        raise DataError(f"verify: no registered dataset under {root}")
