"""Whether a model id can be loaded here: a local folder, the Hugging Face cache, or a reachable hub.

`from_pretrained` on an unreachable hub retries for about a minute before it fails; asking first
turns an offline mistake into a one-line error within seconds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def hub_endpoint() -> str:
    """The host `from_pretrained` would fetch from (HF_ENDPOINT, else huggingface.co)."""
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "the hub"


def loadable(name_or_path: str) -> bool:
    """True for a local path, a cached hub id, or any id while the hub answers (within 3 s)."""
    if Path(name_or_path).exists() or _in_hub_cache(name_or_path):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    port = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).port or 443
    try:
        socket.create_connection((hub_endpoint(), port), timeout=3).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
