"""The `bora-diffusion` command: thin subcommands over the library.

Every user mistake surfaces as one line `error: ...` on stderr and exit status 2; anything else is a bug and keeps
its traceback. One module per concern:
- `parser`: every subcommand, its flags and help; `flags`: flags derived from the settings schema and the
  method registry; `runtime`: process rank, device, guidance;
- the run_* functions by group of commands: `training` (train), `composing` (compose, generate), `evaluating`
  (evaluate, compare), `files` (inspect, export, import, base, slots), `methods` (the self-check table and its
  pass rule) and `app`.
"""

from __future__ import annotations

import os
import sys
import time

# Offline by default: never hang on a model hub this machine cannot reach. A user with network access can
# export HF_HUB_OFFLINE=0. Set before the submodules import anything that reads them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ..errors import BoraError
from .app import run_app
from .flags import TRAIN_FLAGS, adapter_flag_names
from .parser import build_parser
from .runtime import device as _device
from .runtime import process_rank

__all__ = ["TRAIN_FLAGS", "_device", "adapter_flag_names", "build_parser", "main", "process_rank"]

# How long a process other than the main one waits before it reports an error itself (see `main`).
ERROR_GRACE_SECONDS = 10.0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["app"]:
        return run_app(argv[1:])
    try:
        # A flag's value is checked by its setting while parsing: a bad one is a user's mistake, like any below.
        args = build_parser().parse_args(argv)
        args.argv = list(argv)  # to repeat the command line in hints, such as how to resume
        return args.run(args)
    except BoraError as error:
        rank = process_rank()
        if rank:
            # Under a multi-process launch a user's mistake reaches every process; the main one says it. The
            # launcher ends the others once it exits, so this one speaks only if the mistake was its alone.
            time.sleep(ERROR_GRACE_SECONDS)
            print(f"error: (process {rank}) {error}", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
