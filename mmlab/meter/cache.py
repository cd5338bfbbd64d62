"""On-disk cache of measurements: one JSON file per (spec, environment, setting) key.

Files are written atomically (temp file + rename), so several worker processes can share one
cache directory. Location: ``$MMLAB_CACHE_DIR`` or ``~/.cache/mmlab/measurements``, or any
directory passed explicitly.

An entry is served only if it is a JSON object with the fields its kind needs (:data:`ENTRY_FIELDS`,
the kind is part of the key): anything else (a list, a number, ``null``, a truncated file, a
missing or non-numeric field) counts as a miss, so the figure is measured again and the fresh
entry replaces the malformed one; a malformed value is never returned, hence never written on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import math
import tempfile
from pathlib import Path
from typing import Any

ENTRY_FIELDS: dict[str, tuple[str, ...]] = {
    "counts": ("params", "params_trainable", "macs", "macs_paper"),
    "timing": ("latency_ms", "latency_p10_ms", "latency_p90_ms"),
    "signal": ("signal",),
}
"""Per kind of key, the fields an entry must hold as finite numbers to be served."""


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
    """Hash of a flat dict of key parts (order-independent), prefixed by ``parts["kind"]`` when given
    (``timing-3fa2...``), so that an entry can be checked against what its kind needs."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    kind = parts.get("kind")
    return f"{kind}-{digest}" if isinstance(kind, str) and kind.isidentifier() else digest


def well_formed(key: str, entry: Any) -> bool:
    """Whether ``entry`` can be served for ``key``: a JSON object with string keys holding, for the
    key's kind, every needed field as a finite number (booleans are not numbers here)."""
    if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
        return False
    kind = key.split("-", 1)[0] if "-" in key else ""
    for name in ENTRY_FIELDS.get(kind, ()):
        value = entry.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
    return True


def check_cache_dir(directory: str | Path) -> Path:
    """``directory`` as a usable cache folder, checked before any work: ``ValueError`` in one line
    when it (or a folder above it) is a file, or when it cannot be written."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == directory else f"is under {probe}, which is a file"
        raise ValueError(f"cache: {directory} {where}, not a folder; point MMLAB_CACHE_DIR (or --cache-dir of mmlab measure) at a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cache: {directory} is not writable ({probe} is read-only for this user); "
                         f"point MMLAB_CACHE_DIR (or --cache-dir of mmlab measure) at a writable folder")
    return directory


class MeasurementCache:
    """A directory of JSON records keyed by :func:`cache_key`."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.malformed = 0  # entries found but not served (see :func:`well_formed`)

    def check(self) -> "MeasurementCache":
        """Refuse a cache folder that is a file or read-only (see :func:`check_cache_dir`)."""
        check_cache_dir(self.directory)
        return self

    def _path(self, key: str) -> Path:
        return self.directory / key[-2:] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key``, or None when there is none or it is malformed."""
        try:
            record = json.loads(self._path(key).read_text())
        except OSError:
            self.misses += 1
            return None
        except ValueError:  # truncated or not JSON: measured again, then replaced
            record = None
        if not well_formed(key, record):
            self.malformed += 1
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
