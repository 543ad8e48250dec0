"""`qclip pretrain-demo`: pretrain the demo CLIP on CIFAR-10 (cached for `--model demo`)."""

from __future__ import annotations

import argparse

from .flags import add_data_root, add_progress, given, one_line_errors
from .values import check_outputs, positive_int, seed

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip pretrain-demo` and its flags."""
    pd = one_line_errors(sub.add_parser("pretrain-demo", help="pretrain the demo CLIP on CIFAR-10 (cached for "
                                        "--model demo)"))
    pd.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default 3)")
    pd.add_argument("--out", default=None, help="folder to write (default: the demo cache dir)")
    pd.add_argument("--seed", type=seed, default=None, help="training seed")
    pd.add_argument("--precision", default=None, choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
                    help="training precision (default auto: bf16-mixed where bfloat16 is native, else 32-true)")
    add_data_root(pd)
    add_progress(pd)


def run(args: argparse.Namespace) -> int:
    """Pretrain the demo model; return the exit status."""
    from qclip.train.demo import DemoRecipe, pretrain_demo

    check_outputs(dirs={"--out": args.out})  # before any data is read
    recipe = DemoRecipe(**given(args, "epochs", "seed", "precision"))
    meta = pretrain_demo(args.out, recipe, data_root=args.data_root, progress=not args.no_progress)
    print(f"demo model: {meta['steps']} steps in {meta['train_seconds']:.0f}s, zero-shot CIFAR-10 test acc1="
          f"{meta.get('test_acc1', float('nan')):.4f}")
    return 0
