"""`qclip pretrain-demo`: pretrain the demo CLIP on CIFAR-10 (cached for `--model demo`)."""

from __future__ import annotations

import argparse

from .flags import check_outputs, non_negative_int, one_line_errors, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register `qclip pretrain-demo` and its flags."""
    pd = one_line_errors(sub.add_parser("pretrain-demo", help="pretrain the demo CLIP on CIFAR-10 (cached for "
                                        "--model demo)"))
    pd.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default 3)")
    pd.add_argument("--out", default=None, help="folder to write (default: the demo cache dir)")
    pd.add_argument("--seed", type=non_negative_int, default=0)
    pd.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
                    help="training precision (default auto: bf16-mixed where bfloat16 is native, else 32-true)")
    pd.add_argument("--data-root", default=None)
    pd.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Pretrain the demo model; return the exit status."""
    from qclip.train.demo import DemoRecipe, pretrain_demo

    check_outputs(dirs={"--out": args.out})  # before any data is read
    kw = {"seed": args.seed, "precision": args.precision}
    recipe = DemoRecipe(**kw) if args.epochs is None else DemoRecipe(epochs=args.epochs, **kw)
    meta = pretrain_demo(args.out, recipe, data_root=args.data_root, progress=not args.no_progress)
    print(f"demo model: {meta['steps']} steps in {meta['train_seconds']:.0f}s, zero-shot CIFAR-10 test acc1="
          f"{meta.get('test_acc1', float('nan')):.4f}")
    return 0
