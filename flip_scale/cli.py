"""`flip-scale` subcommands. Each only parses and dispatches; the work lives in the modules."""
from __future__ import annotations

import argparse
import sys


def _error(msg: str) -> int:
    print(f"flip-scale: error: {msg}", file=sys.stderr)
    return 2


def _one_line(e: BaseException) -> str:
    """The line that names the problem. An error raised in a DataLoader worker arrives wrapped
    ("Caught ValueError in DataLoader worker process 0. Original Traceback ..."): its last line
    holds the original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else repr(e)


def cmd_train(args) -> int:
    from .config import ConfigError, dump_config, load_recipe
    from .distributed.env import detect_env

    denv = detect_env()
    try:
        cfg = load_recipe(args.recipe, args.overrides, world_size=denv.world_size)
    except ConfigError as e:
        # Every rank reads the same recipe and fails the same way: one line, from rank 0.
        return _error(str(e)) if denv.is_main else 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from .fileio import STORAGE_ERRNOS, STORAGE_EXIT_CODE, StorageError
    from .run_lock import RunLocked
    from .train.preemption import PREEMPTED_EXIT_CODE, Preempted
    from .train.trainer import NonFiniteLoss, run_training

    try:
        run_training(cfg)
    except Preempted:
        return PREEMPTED_EXIT_CODE
    except RunLocked as e:
        # Another run holds out_dir: retrying (a requeue) cannot help while it runs. Every rank
        # raises rank 0's line; rank 0 prints it.
        return _error(str(e)) if denv.is_main else 2
    except StorageError as e:
        # Disk full / read-only: STORAGE_EXIT_CODE, which slurm/common.sh does not requeue.
        _error(str(e))
        return STORAGE_EXIT_CODE
    except NonFiniteLoss as e:
        return _error(str(e)) if denv.is_main else 2
    except (ConfigError, ValueError, FileNotFoundError) as e:
        # Bad input found while building or reading (tokenizer, shards, init_from): one line.
        return _error(_one_line(e))
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        # A full or read-only disk under metrics.jsonl, TensorBoard or summary.json (checkpoint
        # saves say more, above): the same status, not requeued.
        _error(f"{e.filename or cfg.train.out_dir}: {STORAGE_ERRNOS[e.errno]}")
        return STORAGE_EXIT_CODE
    except RuntimeError as e:
        if "a collective failed" in str(e):
            # Not a configuration error: exit 1 (not 2), so slurm/common.sh requeues the job.
            _error(str(e).splitlines()[0])
            return 1
        raise
    return 0


def cmd_demo(args) -> int:
    if args.quick:
        from .demo import run_demo

        return run_demo(args.output, steps=300 if args.steps is None else args.steps)
    if args.steps is not None:
        return _error("demo: --steps goes with --quick (the full demo's length is fixed)")
    from .demo_pipeline import FULL, TINY, run_full_demo

    return run_full_demo(args.output, TINY if args.tiny else FULL)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flip-scale", description="Train FLIP (CLIP with image masking) at scale.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train or resume a recipe")
    t.add_argument("recipe", help="recipe YAML")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="the whole job in miniature: download, tokenizer, FSDP runs at mask 0/50/75%%, "
                                    "report (CPU, under 10 minutes); --quick: one tiny run (a minute)")
    d.add_argument("--output", default="runs/demo", help="demo directory (replaced if an earlier demo made it)")
    d.add_argument("--quick", action="store_true", help="only train the tiny model on in-memory synthetic data "
                                                        "and classify held-out images zero-shot")
    d.add_argument("--steps", type=int, default=None, help="optimizer steps of --quick (default 300)")
    # Same stages at a few seconds each, for the test suite.
    d.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    d.set_defaults(func=cmd_demo)

    for name, (_, _, text) in DELEGATED.items():
        sub.add_parser(name, help=f"{text} (see `flip-scale {name} -h`)", add_help=False)
    return p


# Subcommands that parse their own arguments: name -> (module, function, one-line help).
DELEGATED = {
    "prep": ("flip_scale.data.prep_cli", "main_prep", "data preparation: download | tokenizer | synthetic | evalset"),
    "eval": ("flip_scale.eval.cli", "main_eval", "zero-shot classification / retrieval of a run or checkpoint"),
    "report": ("flip_scale.report.cli", "main_report", "scaling-curve report (plots, tables, index.html) from runs"),
    "plan": ("flip_scale.plan", "main_plan", "compute / memory / wall-clock plan of a recipe on a cluster"),
    "export": ("flip_scale.export", "main_export", "export a run to OpenCLIP format"),
    "launch": ("flip_scale.launch", "main_launch", "submit a recipe (or a study) to Slurm with a template"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        module, func, _ = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), func)(argv[1:])
    parser = build_parser()
    # Overrides may also follow the flags (`train R --print-config a.b=c`): argparse stops filling
    # a positional list at the first option, so collect the key=value leftovers ourselves.
    args, rest = parser.parse_known_args(argv)
    late = [a for a in rest if "=" in a and not a.startswith("-")]
    if rest != late or (late and args.command != "train"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args.func(args)
