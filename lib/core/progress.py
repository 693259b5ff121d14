"""tqdm bars that stay quiet when output is not a terminal or the user asked for --quiet."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def progress_bar(total: int, desc: str, enabled: bool, **kwargs) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False, **kwargs)
