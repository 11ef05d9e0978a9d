"""Command line: a table of subcommands; each lives in groupo/commands/<name>.py with its arguments
(`add_arguments`) and its work (`run`), and resolves its configuration with
groupo.commands.resolve.resolve_config.

    groupo train [CONFIG.yaml] [--smoke] [key=value ...] [--resume RUN_DIR]
    groupo eval  --model NAME | --run RUN_DIR ...
    groupo config [CONFIG.yaml | RUN_DIR] [--smoke] [key=value ...]
    groupo presets [NAME]
    groupo plan [CONFIG.yaml] [--smoke] [key=value ...] [--completion-tokens N] [--json]
    groupo serve [CONFIG.yaml] [key=value ...] [--host H] [--port P] [--dry-run] [-- VLLM_ARGS ...]
    groupo report RUN_DIR [RUN_DIR ...] [--out FILE]
    groupo export RUN_DIR OUT [--adapter]
    groupo chat RUN_DIR|MODEL [--base]
"""

from __future__ import annotations

import argparse
import importlib
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
  groupo serve --port 8000                       # a vLLM server for rollout.vllm.url=http://127.0.0.1:8000
  groupo export runs/quickstart exported/        # a merged Hugging Face folder (transformers, vLLM)
  groupo chat runs/quickstart                    # talk to the trained policy
"""

# name -> module under groupo.commands; each module is light to import (its heavy imports are in `run`).
COMMANDS = ("train", "config", "presets", "plan", "serve", "report", "export", "chat", "eval")
RAW = ("train", "export", "chat")  # descriptions with line breaks of their own


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input or machine (config, data, model path, a reward function):
    printed as one clear message, without a traceback."""
    from groupo.engines.base import EngineError
    from groupo.models.builtin import FetchError
    from groupo.models.load import ModelNotFoundError
    from groupo.report.alarms import TrainingStopped
    from groupo.rewards.base import RewardError
    from groupo.trainer.checkpoint import CheckpointError

    return ConfigError, FetchError, ModelNotFoundError, RewardError, EngineError, TrainingStopped, CheckpointError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groupo", description="Group-relative RL fine-tuning (GRPO, Dr.GRPO, DAPO, GSPO, CISPO).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"groupo.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                           epilog=EPILOG if name == "train" else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter if name in RAW
                           else argparse.HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message comes (a plain StreamHandler keeps
    the stream it was made with, which in-process callers such as tests may have closed since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


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
    # peft imports bitsandbytes wherever it is installed, and two of its messages say nothing to act
    # on (groupo.models.quantization.quiet_bitsandbytes says which; named here, as that module loads torch)
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # groupo's own INFO messages (e.g. which sandbox protections this machine allows) are shown.
    log = logging.getLogger("groupo")
    if not log.handlers:
        handler = _Stderr()
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
    from groupo.versions import VersionError, check_versions

    try:  # a dependency outside its supported range: one line, before any deep traceback
        check_versions()
    except VersionError as e:
        print(f"groupo: error: {e}", file=sys.stderr)
        return 2
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
