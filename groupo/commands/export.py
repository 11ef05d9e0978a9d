"""`groupo export RUN_DIR OUT [--adapter] [--dtype D]` (the work: groupo.export)"""

from __future__ import annotations

import argparse

from groupo import export
from groupo.config import ConfigError
from groupo.export import DTYPE_NAMES, export_adapter, export_merged

HELP = "write a run's policy as a Hugging Face model folder"
DESCRIPTION = "\n\n".join(export.__doc__.split("\n\n")[:2])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a training run (or its final/ folder)")
    p.add_argument("out", metavar="OUT", help="folder to write (must not exist, or be empty)")
    p.add_argument("--adapter", action="store_true", help="write the LoRA adapter alone, not merged weights")
    p.add_argument("--dtype", choices=DTYPE_NAMES, help="weights' dtype (default: the run's model.dtype)")


def run(args: argparse.Namespace) -> int:
    if args.adapter:
        if args.dtype:
            raise ConfigError("--dtype applies to merged exports; the adapter keeps its trained float32 weights")
        out = export_adapter(args.run, args.out)
        print(f"adapter written to {out} (load with PeftModel.from_pretrained(base, {str(out)!r}))")
    else:
        out = export_merged(args.run, args.out, args.dtype)
        print(f"merged model written to {out} (load with AutoModelForCausalLM.from_pretrained({str(out)!r}) "
              f"or `vllm serve {out}`)")
    return 0
