"""A content-addressed disk cache for work that many runs repeat (tokenising the same splits).

An entry is a folder named by the SHA-256 of a JSON description of everything its content
depends on, format version included, so a stale or incompatible entry is never found, only
rebuilt. Writers build the folder under a private temporary name and rename it into place; if
another process got there first, its entry wins and ours is dropped. Readers only ever see
complete folders, so any number of sweep workers can share one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence, TypeVar

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
T = TypeVar("T")


def cache_key(description: dict) -> str:
    payload = json.dumps({"cache_format": CACHE_FORMAT, **description}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """Identity of a tokenizer's behaviour: its full serialised form, added tokens included."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        digest = hashlib.sha256()
        for path in sorted(Path(folder).iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
        return digest.hexdigest()


class DiskCache:
    def __init__(self, root: Path | None) -> None:
        self.root = root  # None: caching off, every call builds

    def load_or_build(self, kind: str, description: dict, build: Callable[[Path], None],
                      load: Callable[[Path], T]) -> T:
        """`load(folder)` of the entry for `description`, first built by `build(folder)` if missing."""
        if self.root is None:
            with tempfile.TemporaryDirectory(prefix=f"{kind}-") as folder:
                build(Path(folder))
                return load(Path(folder))
        entry = self.root / kind / cache_key(description)
        if entry.is_dir():
            log.info("cache hit: %s %s", kind, entry.name[:12])
            return load(entry)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name[:12]}-", dir=entry.parent))
        try:
            build(tmp)
            (tmp / "description.json").write_text(json.dumps(description, indent=1, ensure_ascii=False))
            os.rename(tmp, entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not entry.is_dir():
                raise
            # another process finished the same entry first: use theirs
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return load(entry)
