"""What every entry script shares: logging set-up and turning UserError into one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm
from transformers.utils import logging as hf_logging

from lib.core.distributed import leave_process_group
from lib.core.errors import UserError

log = logging.getLogger(__name__)


class CliParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a UserError (one line, exit status 2) instead of usage text,
    and reads underscores in a flag's name as dashes: a W&B agent writes `--learning_rate=3e-5`."""

    def error(self, message: str) -> None:
        raise UserError(message)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        return super().parse_known_args(dashed_flags(sys.argv[1:] if args is None else args), namespace)


def dashed_flags(argv: Sequence[str]) -> list[str]:
    """`--a_b=c_d` as `--a-b=c_d`: only a flag's name changes, never a value, and nothing after a bare `--`."""
    dashed: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return dashed + list(argv[i:])
        if arg.startswith("--"):
            name, equals, value = arg.partition("=")
            arg = name.replace("_", "-") + equals + value
        dashed.append(arg)
    return dashed


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; bad input prints `error: ...` on stderr and returns 2, without a traceback.
    Under torchrun the process group is left before the script exits."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Under torchrun every process runs the script: only rank 0 speaks below warnings.
    logging.getLogger("lib").setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    for noisy in ("transformers", "huggingface_hub", "tokenizers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # our own bars only; HF's "Loading weights" bars are noise here
    try:
        with logging_redirect_tqdm():
            return main(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        leave_process_group()
