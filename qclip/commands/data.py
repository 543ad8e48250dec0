"""`qclip data list | fetch NAME... | verify [NAME...]`: the dataset registry (see docs/data.md)."""

from __future__ import annotations

import argparse
import sys

from .flags import check_outputs, one_line_errors

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip data` and its flags."""
    da = one_line_errors(sub.add_parser("data", help="registered datasets: list them, fetch (download + build) "
                                        "them, verify a data root"))
    dsub = da.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="registered datasets, their sources and whether the data root holds them")
    dl.add_argument("--data-root", default=None, help="folder to look in (default $QCLIP_DATA_ROOT, else the cache)")
    df = dsub.add_parser("fetch", help="download the pinned sources of datasets and build them (wds layout)")
    df.add_argument("names", nargs="+", metavar="NAME", help="registered dataset (cifar10, wds/pacs_sketch, ...) "
                    "or 'all'")
    df.add_argument("--data-root", default=None, help="folder to build wds_NAME/ in (default $QCLIP_DATA_ROOT, "
                    "else the user cache)")
    df.add_argument("--no-progress", action="store_true", help="hide progress bars and messages")
    dv = dsub.add_parser("verify", help="re-hash datasets under a data root against the registry")
    dv.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: every registered one "
                    "present)")
    dv.add_argument("--data-root", default=None, help="folder holding wds_NAME/ (default $QCLIP_DATA_ROOT, else "
                    "the cache)")
    dv.add_argument("--strict", action="store_true", help="fail on any byte difference, also for re-encoded shards")
    for action in (dl, df, dv):
        one_line_errors(action)


def run(args: argparse.Namespace) -> int:
    """List, fetch or verify registered datasets; return the exit status."""
    from pathlib import Path

    from qclip.io import registry
    from qclip.io.errors import DataError

    root = Path(args.data_root) if args.data_root else registry.default_fetch_root()
    if args.data_command != "fetch" and args.data_root and not root.is_dir():
        raise DataError(f"--data-root {root} is not a folder")
    if args.data_command == "list":
        reg = registry.load_registry()
        print(f"{'name':26s} {'samples':>16s} {'MB':>6s}  {'source':48s} in {root}")
        for name in registry.dataset_names():
            entry = reg["datasets"][name]
            src = reg["sources"][next(iter(entry["sources"].values()))]
            samples = "+".join(str(n) for n in entry["samples"].values())
            print(f"{name:26s} {samples:>16s} {entry['bytes'] / 1e6:6.1f}  {src['repo'] + '@' + src['commit'][:8]:48s} "
                  f"{'yes' if (root / f'wds_{name}').is_dir() else '-'}")
        return 0
    if args.data_command == "fetch":
        names = registry.dataset_names() if "all" in args.names else [registry.get_entry(n)["name"] for n in args.names]
        check_outputs(dirs={"--data-root": str(root)})  # before anything is downloaded
        log = None if args.no_progress else (lambda msg: print(f"qclip: {msg}", file=sys.stderr))
        for name in names:
            path, result = registry.fetch_dataset(name, root, progress=not args.no_progress, log=log)
            if result is None:
                print(f"wds/{name}: already in {path} (check it with: qclip data verify --data-root {root} {name})")
                continue
            counts = ", ".join(f"{split} {n}" for split, n in result.samples.items())
            note = (f"; {len(result.reencoded)} re-encoded shard(s) differ in bytes from the registry (other Pillow/"
                    "libjpeg/zlib), content checked" if result.reencoded else "; every file matches the registry")
            print(f"wds/{name}: built {path} ({counts} samples{note})")
        return 0
    names = None if not args.names or "all" in args.names else args.names
    results = registry.verify_root(root, names, strict=args.strict)
    for result in results:
        print(result.line())
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "re-encoded", "absent", "FAILED")}
    print(f"{root}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    failed = [r for r in results if not r.passed]
    if failed:
        raise DataError(f"verify: {len(failed)} dataset(s) failed, first: {failed[0].name}: {failed[0].detail}")
    if not any(r.status != "absent" for r in results):
        raise DataError(f"verify: no registered dataset under {root}")
    return 0
