"""How the run writes the files other processes read while it runs (replicas.json,
placement.json, the API key file): whole or not at all, and secrets private from the first byte.

Owns: atomic replacement and owner-only creation. Does not know what the files contain.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Readers (operators, tests, `deploy.connect`) see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_secret(path: Path, text: str) -> None:
    """A file only its owner can read, from its first byte (no window between write and chmod)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
