"""The dataset registry: pinned public sources and build recipes of the wds datasets qclip uses, kept as data in
`qclip/io/registry/datasets.json` (sources, recipes, expected sha256 of every output file) and
`qclip/io/registry/text.json` (class names, templates, the ImageNet to CIFAR-10 mapping, READMEs).

`fetch_dataset` downloads a dataset's sources into the user cache (`<cache>/sources/`, kept for other datasets
built from the same archive; a copy that fails its check is replaced, see `qclip.io.sources`) and builds
`<root>/wds_NAME/` from them (see `qclip.io.build`). `QCLIP_DATA_BASE_URL`
replaces every public host (a mirror, or a loopback server in tests): a source's URL becomes `<base>/<path>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable

from filelock import FileLock

from .build import BuildResult
from .errors import DataError, QclipInputError
from .paths import cache_dir
from .sources import Source, build_from_sources
from .verify import VerifyResult, verify_dataset

__all__ = ["REGISTRY_DIR", "BASE_URL_ENV", "load_registry", "dataset_names", "canonical_name", "get_entry",
           "source_url", "offline", "fetch_command", "fetch_dataset", "ensure_dataset", "verify_root",
           "default_fetch_root"]

#: Folder holding the registry's JSON files (tests point it elsewhere).
REGISTRY_DIR = Path(__file__).with_name("registry")
#: Environment variable whose value replaces the public hosts of every source URL.
BASE_URL_ENV = "QCLIP_DATA_BASE_URL"


@lru_cache(maxsize=4)
def _load(folder: str) -> dict:
    try:
        data = json.loads(Path(folder, "datasets.json").read_text(encoding="utf-8"))
        data["text"] = json.loads(Path(folder, "text.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the dataset registry in {folder}: {exc}") from None
    if data.get("format") != 1:
        raise DataError(f"dataset registry {folder}/datasets.json has format {data.get('format')!r}, expected 1")
    return data


def load_registry() -> dict:
    """The registry: `{"format": 1, "sources": {...}, "datasets": {...}, "text": {...}}`."""
    return _load(str(REGISTRY_DIR))


def dataset_names() -> list[str]:
    """Registered dataset names (without the `wds/` prefix), sorted."""
    return sorted(load_registry()["datasets"])


def canonical_name(name: str) -> str | None:
    """The registered name for `NAME`, `wds/NAME` or `wds_NAME`, else None."""
    for prefix in ("wds/", "wds_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name if name in load_registry()["datasets"] else None


def get_entry(name: str) -> dict:
    """The registry entry of a dataset (with its `name`); `DataError` naming the known ones if unregistered."""
    short = canonical_name(name)
    if short is None:
        raise DataError(f"unknown dataset '{name}' (registered: {', '.join(dataset_names())})")
    return {"name": short, **load_registry()["datasets"][short]}


def source_url(source: dict) -> str:
    """A source's download URL: `<host>/<path>`, with `$QCLIP_DATA_BASE_URL` replacing the host when set."""
    base = os.environ.get(BASE_URL_ENV) or source["host"]
    return f"{base.rstrip('/')}/{source['path'].lstrip('/')}"


def offline() -> bool:
    """True when `QCLIP_OFFLINE` or `HF_HUB_OFFLINE` is set to a true value (no implicit downloads)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("QCLIP_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_command(name: str, root: str | os.PathLike | None = None) -> str:
    """The exact `qclip data fetch` command that builds dataset `name` (into `root` when given)."""
    short = canonical_name(name) or name
    return f"qclip data fetch {short}" + (f" --data-root {root}" if root is not None else "")


def default_fetch_root() -> Path:
    """Where `qclip data fetch` builds without `--data-root`: `$QCLIP_DATA_ROOT` if set, else `<cache>/data`."""
    env = os.environ.get("QCLIP_DATA_ROOT")
    return Path(env) if env else cache_dir("data")


def _lock(root: Path, name: str) -> FileLock:
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return FileLock(str(cache_dir("locks") / f"wds_{name}-{tag}.lock"))


def fetch_dataset(name: str, root: str | os.PathLike | None = None, *, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> tuple[Path, BuildResult | None]:
    """Build registered dataset `name` into `root` (default `default_fetch_root()`) unless `root/wds_NAME` exists;
    return its folder and the build result (None when it was already there)."""
    entry = get_entry(name)
    root = Path(root) if root is not None else default_fetch_root()
    final = root / f"wds_{entry['name']}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data root {root}: {exc.strerror}") from None
    with _lock(root, entry["name"]):
        if final.is_dir():
            return final, None
        reg = load_registry()
        sources = {role: Source(reg["sources"][sid], source_url(reg["sources"][sid]),
                                cache_dir("sources") / reg["sources"][sid]["file"])
                   for role, sid in entry["sources"].items()}
        result = build_from_sources(entry, reg["text"], sources, root, progress=progress,
                                    log=log if log and progress else None)
    return final, result


def ensure_dataset(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of registered dataset `name` under `root` (default the user cache), built there on first use after
    one line on stderr; in offline mode a missing dataset raises `QclipInputError` naming the fetch command."""
    entry = get_entry(name)
    root_path = Path(root) if root is not None else cache_dir("data")
    final = root_path / f"wds_{entry['name']}"
    if final.is_dir():
        return final
    command = fetch_command(entry["name"], root)
    if offline():
        raise QclipInputError(f"dataset wds/{entry['name']} is not in {root_path} and offline mode is on "
                              f"(QCLIP_OFFLINE / HF_HUB_OFFLINE); run: {command}")
    hosts = sorted({source_url(load_registry()["sources"][s]) for s in entry["sources"].values()})
    print(f"qclip: wds/{entry['name']} is not in {root_path}: building it there from {', '.join(hosts)} "
          f"(one time, about {entry.get('download_mb', '?')} MB to download)", file=sys.stderr)
    path, _ = fetch_dataset(entry["name"], root_path, progress=sys.stderr.isatty())
    return path


def verify_root(root: str | os.PathLike, names: list[str] | None = None, *, strict: bool = False) -> list[VerifyResult]:
    """Verify the named (default: all registered) datasets under `root`; a named one that is absent fails."""
    root = Path(root)
    results = []
    for name in names or dataset_names():
        entry = get_entry(name)
        result = verify_dataset(entry, root / f"wds_{entry['name']}", strict=strict)
        if names and result.status == "absent":
            result = VerifyResult(result.name, result.path, "FAILED", result.detail)
        results.append(result)
    return results
