"""Command line: argument parsing only; the work happens in the layers below.

    groupo train [CONFIG.yaml] [--smoke] [key=value ...] [--resume RUN_DIR]
    groupo eval  --model NAME | --run RUN_DIR ...
    groupo config [CONFIG.yaml] [--smoke] [key=value ...]
    groupo presets [NAME]
    groupo plan [CONFIG.yaml] [--smoke] [key=value ...] [--completion-tokens N] [--json]
    groupo serve [CONFIG.yaml] [key=value ...] [--host H] [--port P] [--dry-run] [-- VLLM_ARGS ...]
    groupo report RUN_DIR [RUN_DIR ...] [--out FILE]
    groupo export RUN_DIR OUT [--adapter]
    groupo chat RUN_DIR|MODEL [--base]
"""

from __future__ import annotations

import argparse
import logging
import sys

from groupo.config import ConfigError

EPILOG = """examples:
  groupo train                                   # the quickstart (built-in model and task, LoRA)
  groupo train configs/gsm8k.yaml train.steps=200 algorithm.preset=dapo
  groupo train configs/dapo.yaml --smoke         # any recipe in seconds on a CPU (groupo/smoke.py)
  groupo train --resume runs/quickstart          # continue from the newest checkpoint
  groupo config algorithm.preset=gspo            # print the resolved configuration
  groupo plan configs/countdown.yaml             # predicted step time and peak memory, before launch
  groupo serve --port 8000                       # a vLLM server for rollout.vllm_url=http://127.0.0.1:8000
  groupo export runs/quickstart exported/        # a merged Hugging Face folder (transformers, vLLM)
  groupo chat runs/quickstart                    # talk to the trained policy
"""

SMOKE_HELP = ("shrink the recipe to a run of seconds on a CPU: the built-in model, 2 steps, tiny groups and "
              "lengths, bundled sample data (groupo/smoke.py); applied before the key=value overrides")


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml] key=value ... -> (config path or None, overrides)."""
    path, overrides = None, []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            path = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: expected section.key=value "
                              "(only the first argument may be a config file)")
    return path, overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from groupo.trainer.run import train_from_cli

    path, overrides = _split_args(args.items)
    if args.smoke:
        from groupo.smoke import announce, smoke_overrides

        if args.resume:
            raise ConfigError("--resume continues the run as configured; --smoke applies to new runs only")
        smoke = smoke_overrides(path)
        announce(path, smoke, overrides)
        overrides = smoke + overrides
    return train_from_cli(path, overrides, resume=args.resume)


def _cmd_config(args: argparse.Namespace) -> int:
    from groupo.config import dump_yaml, load_config

    path, overrides = _split_args(args.items)
    if args.smoke:
        from groupo.smoke import smoke_overrides

        overrides = smoke_overrides(path) + overrides
    print(dump_yaml(load_config(path, overrides)), end="")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from groupo.config import load_config
    from groupo.rollout.serve import run_serve

    path, overrides = _split_args(args.items)
    return run_serve(load_config(path, overrides), host=args.host, port=args.port, extra=args.vllm_args,
                     dry_run=args.dry_run)


def _cmd_presets(args: argparse.Namespace) -> int:
    from groupo.algorithms.presets import PRESETS
    from groupo.report.tables import print_preset, print_presets

    if args.name is None:
        print_presets()
    elif args.name in PRESETS:
        print_preset(args.name)
    else:
        raise ConfigError(f"unknown preset {args.name!r}; valid presets: {', '.join(PRESETS)}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from groupo.plan.cli import run

    return run(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from groupo.report.cli import run

    return run(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from groupo.export import run

    return run(args)


def _cmd_chat(args: argparse.Namespace) -> int:
    from groupo.chat import run

    return run(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from groupo.eval.cli import run

    return run(args)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input or machine (config, data, model path, a reward function):
    printed as one clear message, without a traceback."""
    from groupo.models.builtin import FetchError
    from groupo.models.load import ModelNotFoundError
    from groupo.report.alarms import TrainingStopped
    from groupo.rewards.base import RewardError
    from groupo.rollout.base import EngineError

    return ConfigError, FetchError, ModelNotFoundError, RewardError, EngineError, TrainingStopped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groupo", description="Group-relative RL fine-tuning (GRPO, Dr.GRPO, DAPO, GSPO, CISPO).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a policy (no arguments: the CPU quickstart)",
                       description="Train with the given YAML config and key=value overrides. Without a "
                       "config this runs the quickstart: the built-in SmolLM2-135M-Instruct with LoRA on "
                       "the built-in arithmetic task.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="optional YAML config, then dotted overrides such as train.steps=100")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest complete checkpoint")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("config", help="print the resolved configuration",
                       description="Load defaults, the YAML file and overrides, validate them, and print "
                       "the resolved config (what `train` would save to the run directory).")
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value")
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("presets", help="list the algorithm presets, or every setting of one",
                       description="Every preset (a row per paper) and the settings it changes; with NAME, "
                       "every setting of that preset.")
    p.add_argument("name", nargs="?", metavar="NAME", help="a preset: grpo, dr_grpo, dapo, gspo, gspo_token, cispo")
    p.set_defaults(func=_cmd_presets)

    from groupo.plan import cli as plan_cli  # light: the planner's imports happen in its command

    p = sub.add_parser("plan", help="predict a config's step time and peak memory on this machine",
                       description=plan_cli.__doc__.split("\n\n")[0] + ". The passes run on fake tensors "
                       "(no weights loaded); this machine's op costs are measured in a few seconds. Exit "
                       "status 1 when the run would not fit, with the settings that would.")
    plan_cli.add_arguments(p)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("serve", help="start a vLLM server for rollout.vllm_url (vLLM's OpenAI-compatible API)",
                       description="Start vLLM's OpenAI-compatible server for the config's model, with runtime "
                       "LoRA loading and the log-prob settings the trainer needs; arguments after `--` go to "
                       "vLLM unchanged (e.g. -- --tensor-parallel-size 2).")
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--dry-run", action="store_true", help="print the command line and exit")
    p.set_defaults(func=_cmd_serve, vllm_args=[])

    p = sub.add_parser("report", help="write the interactive HTML report of one run, or several overlaid",
                       description="One self-contained report.html (opens offline): curves, alarms, evaluations, "
                       "samples and config. Several runs are overlaid on the same plots.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE",
                   help="default: RUN_DIR/report.html for one run, report.html here for several")
    p.set_defaults(func=_cmd_report)
    from groupo import chat, export  # light: heavy imports happen inside their commands

    p = sub.add_parser("export", help="write a run's policy as a Hugging Face model folder",
                       description="\n\n".join(export.__doc__.split("\n\n")[:2]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_arguments(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("chat", help="talk to a trained policy (or any model) in the terminal",
                       description="\n\n".join(chat.__doc__.split("\n\n")[:2]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    chat.add_arguments(p)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("eval", help="evaluate a model, an adapter or a training run on a task",
                       description="Greedy accuracy, pass@k and maj@k of a model or a run's final weights.")
    try:
        from groupo.eval.cli import add_arguments
    except ImportError:  # the evaluation layer is optional for the other commands
        add_arguments = None
    if add_arguments is not None:
        add_arguments(p)
    p.set_defaults(func=_cmd_eval)
    return parser


def _quiet_libraries() -> None:
    """Our own progress display replaces the libraries' per-load bars and deprecation chatter;
    and the CPU thread pool waits passively."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # OpenMP's default busy-waiting collapses when cores are shared (a 2-thread matmul ran at a
    # tenth of 1-thread speed on a loaded 2-core machine); passive waiting costs ~10% when idle.
    # Must be set before torch loads its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # groupo's own INFO messages (e.g. which sandbox protections this machine allows) are shown.
    log = logging.getLogger("groupo")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but `key=value` items may also follow an option (`train RECIPE --smoke a.b=1`):
    argparse alone stops collecting a nargs="*" positional at the first option."""
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or not hasattr(args, "items")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.items = [*args.items, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # `groupo serve ... -- VLLM_ARGS`: vLLM's, unparsed
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = _parse(parser, argv)
    if passthrough:
        args.vllm_args = passthrough
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"groupo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("groupo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
