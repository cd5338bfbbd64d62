"""On-disk cache of measurements: one JSON file per (spec, environment, setting) key.

Files are written atomically (temp file + rename), so several worker processes can share one
cache directory. Location: ``$MMLAB_CACHE_DIR`` or ``~/.cache/mmlab/measurements``, or any
directory passed explicitly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    env = os.environ.get("MMLAB_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmlab" / "measurements"


@functools.lru_cache(maxsize=None)
def code_digest(*packages: str) -> str:
    """SHA-256 (12 hex) of the source of ``packages`` (default: the spec, model and meter code), with
    the torch and fvcore versions: part of every cached figure's key, so a change of code or of
    those libraries never serves a stale figure."""
    import importlib.metadata

    root = Path(__file__).resolve().parents[1]  # the mmlab package
    digest = hashlib.sha256()
    for package in packages or ("spec", "model", "meter"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    for dist in ("torch", "fvcore"):
        try:
            digest.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist}=none".encode())
    return digest.hexdigest()[:12]


def cache_key(parts: dict[str, Any]) -> str:
    """Hash of a flat dict of key parts (order-independent)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class MeasurementCache:
    """A directory of JSON records keyed by :func:`cache_key`."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, sort_keys=True)
        os.replace(tmp, path)
