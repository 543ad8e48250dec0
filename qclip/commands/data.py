"""`qclip data list | fetch NAME... | verify [NAME...]`: the dataset registry (see docs/data.md)."""

from __future__ import annotations

import argparse
import sys

from .flags import add_data_root, add_progress, one_line_errors
from .values import check_outputs

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip data` and its flags."""
    da = one_line_errors(sub.add_parser("data", help="registered datasets: list them, fetch (download + build) "
                                        "them, verify a data root"))
    dsub = da.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="registered datasets, their sources and whether the data root holds them")
    add_data_root(dl, "folder to look in (default $QCLIP_DATA_ROOT, else the cache)")
    df = dsub.add_parser("fetch", help="download the pinned sources of datasets and build them (wds layout)")
    df.add_argument("names", nargs="+", metavar="NAME", help="registered dataset (cifar10, wds/pacs_sketch, ...) "
                    "or 'all'")
    add_data_root(df, "folder to build wds_NAME/ in (default $QCLIP_DATA_ROOT, else the user cache)")
    add_progress(df, "hide progress bars and messages")
    dv = dsub.add_parser("verify", help="re-hash datasets under a data root against the registry")
    dv.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: every registered one "
                    "present)")
    add_data_root(dv, "folder holding wds_NAME/ (default $QCLIP_DATA_ROOT, else the cache)")
    dv.add_argument("--strict", action="store_true", help="fail on any byte difference, also for re-encoded shards")
    for action in (dl, df, dv):
        one_line_errors(action)


def run(args: argparse.Namespace) -> int:
    """List, fetch or verify registered datasets; return the exit status."""
    from qclip.io.catalog import data_root_of, fetch_lines, fetch_names, list_lines, verify_lines

    root = data_root_of(args.data_root, must_exist=args.data_command != "fetch")
    if args.data_command == "list":
        lines = list_lines(root)
    elif args.data_command == "fetch":
        names = fetch_names(args.names)
        check_outputs(dirs={"--data-root": str(root)})  # before anything is downloaded
        log = None if args.no_progress else (lambda msg: print(f"qclip: {msg}", file=sys.stderr))
        lines = fetch_lines(names, root, progress=not args.no_progress, log=log)
    else:
        lines = verify_lines(root, args.names, strict=args.strict)
    for line in lines:
        print(line)
    return 0
