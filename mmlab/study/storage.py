"""Where a study lives: Optuna storage URLs, the results folder that records which one, and the
study-wide mutex that lets workers on many machines share one storage without overshooting.

Storages: SQLite (``sqlite:///PATH``, one machine), PostgreSQL (``postgresql://user@host/db``, any
number of machines; needs the ``postgres`` extra: ``pip install -e ".[postgres]"``), or an Optuna
journal file (``journal:PATH``). RDB storages (SQLite, PostgreSQL) get Optuna's heartbeat, so a
trial whose worker was killed is failed after the grace period and retried once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna

STUDY_FILE = "study.json"
DEFAULT_DB = "study.db"
MAX_RETRIES = 1
"""Times a trial whose worker died (heartbeat gone stale) is retried."""


def _postgres_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed (psycopg 3 from the ``postgres`` extra, or
    psycopg2); an explicit ``postgresql+driver://`` is kept."""
    scheme, rest = url.split("://", 1)
    if scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    if importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    raise ValueError(f"storage: {url!r} needs a PostgreSQL driver; install it with pip install -e \".[postgres]\"")


_OPEN_RACES = ("alembic_version", "already exists", "database is locked")
"""What two processes opening one database at once can see, and what is retried: the race on
Optuna's schema creation (``UNIQUE constraint failed: alembic_version``, ``already exists``), and
SQLite's ``database is locked``, which skips the busy timeout when a read transaction must become
a write one (Optuna's version-info check), wrapped by Optuna as ``StorageInternalError``."""


def _error_chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from, outermost first (Optuna wraps driver errors)."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _rdb(url: str, attempts: int = 8, **kwargs: Any) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried (``attempts`` times, backing off) while another process is
    opening the same database (:data:`_OPEN_RACES`); any other error is raised at once."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:  # noqa: BLE001 - only the races are retried
            text = "\n".join(str(e) for e in _error_chain(err))
            if attempt == attempts - 1 or not any(race in text for race in _OPEN_RACES):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str, *, create: bool = True, heartbeat: tuple[int, int] | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (``sqlite:///PATH``, ``postgresql://...``, ``journal:PATH``).

    ``create=False`` refuses a SQLite / journal file that does not exist instead of making an
    empty one (reading a study must never create a database). ``heartbeat`` = (interval, grace
    period) in seconds turns on Optuna's heartbeat for RDB storages, with a retry of each stale
    trial (:data:`MAX_RETRIES`). Every failure is a ``ValueError`` in one line.
    """
    beat: dict[str, Any] = {}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat: stable in use
    if heartbeat is not None:
        beat = {"heartbeat_interval": int(heartbeat[0]), "grace_period": int(heartbeat[1]),
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)}
    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if not create and not path.is_file():
                raise ValueError(f"storage: {url!r} does not exist")
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            # Several workers share the file: wait for locks instead of failing.
            storage = _rdb(url, engine_kwargs={"connect_args": {"timeout": 60}}, **beat)
            storage.get_all_studies()  # a file that is not a database fails here, not in a worker
            return storage
        if url.startswith(("journal:", "file:")) or url.endswith((".log", ".journal")):
            path = Path(url.split(":", 1)[1] if ":" in url else url)
            if not create and not path.is_file():
                raise ValueError(f"storage: {url!r} does not exist")
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        if url.split("://", 1)[0] in ("postgresql", "postgres"):
            # Fail in seconds on an unreachable server; check pooled connections before use.
            return _rdb(_postgres_url(url), engine_kwargs={
                "connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}, **beat)
        return _rdb(url, **beat)
    except ValueError as err:
        if str(err).startswith("storage:"):
            raise
        raise ValueError(f"storage: {url!r} cannot be opened ({type(err).__name__}: {_first_line(err)})") from None
    except Exception as err:  # any driver / URL problem: one line for the user
        raise ValueError(f"storage: {url!r} cannot be opened ({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    """The first line of ``err``, and of the error it wraps at the bottom (Optuna's messages hide the driver's)."""
    root = _error_chain(err)[-1]
    first = (str(err).strip().splitlines() or [""])[0][:300]
    if root is err:
        return first
    return first + f" <- {type(root).__name__}: " + (str(root).strip().splitlines() or [""])[0][:200]


def storage_path(url: str) -> Path | None:
    """The local file behind a SQLite or journal URL, else None."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith(("journal:", "file:")) or url.endswith((".log", ".journal")):
        return Path(url.split(":", 1)[1] if ":" in url else url)
    return None


@contextmanager
def study_mutex(storage: optuna.storages.BaseStorage, url: str, study: str) -> Iterator[None]:
    """One holder at a time, across every process and machine working on ``study``.

    PostgreSQL: a session advisory lock on the study's server (released by the server if the
    holder dies). SQLite / journal: an flock on a file next to the storage (these live on one
    machine). Other storages: an flock in the user's cache folder, which holds on one machine only.
    """
    digest = hashlib.sha256(f"mmlab-study:{study}".encode()).digest()
    if isinstance(storage, optuna.storages.RDBStorage) and storage.engine.dialect.name == "postgresql":
        import sqlalchemy  # inline: only an RDB storage needs it, and optuna brings it

        key = int.from_bytes(digest[:8], "big", signed=True)
        with storage.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
        return
    path = storage_path(url)
    if path is not None:
        lock = path.with_name(f".{path.name}.{digest[:6].hex()}.lock")
    else:
        from mmlab.meter.cache import default_cache_dir

        lock = default_cache_dir() / f".study-{digest[:6].hex()}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def folder_storage_url(folder: Path, storage: str | None) -> str:
    """The URL of a study's storage: the given one, or SQLite inside its results folder."""
    return storage or f"sqlite:///{(folder / DEFAULT_DB).as_posix()}"


def check_folder_writable(folder: Path) -> None:
    """``ValueError`` in one line unless ``folder`` is (or can be made as) a writable folder;
    creates nothing."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == folder else f"is under {probe}, which is a file"
        raise ValueError(f"results_dir: {folder} {where}, not a folder; give another --results-dir")
    if probe == folder:
        import tempfile

        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ValueError(f"results_dir: {folder} is not writable ({type(err).__name__}: {err.strerror}); "
                             f"give another --results-dir") from None
    else:
        import os

        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"results_dir: {folder} cannot be created ({probe} is not writable); "
                             f"give another --results-dir")


def write_study_file(folder: Path, meta: dict[str, Any]) -> None:
    """Record how to reopen the study; a default SQLite storage is stored relative to the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STUDY_FILE).write_text(json.dumps(meta, indent=2))


def read_study_file(folder: Path) -> dict[str, Any]:
    """The folder's study.json; ``ValueError`` in one line when it is missing or corrupt."""
    path = folder / STUDY_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: no {STUDY_FILE} here; give a folder written by `mmlab search`")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("study"), str) \
                or not isinstance(meta.get("storage", DEFAULT_DB), str):
            raise ValueError("not a study record")
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt ({_first_line(err)})") from None
    return meta


def study_url(folder: Path, meta: dict[str, Any]) -> str:
    """The storage URL a study.json names, a relative file resolved against its folder."""
    storage = meta.get("storage") or DEFAULT_DB
    if "://" in storage or storage.startswith("journal:"):
        return storage
    return f"sqlite:///{(folder / storage).as_posix()}"


def load_study(folder: Path) -> tuple[optuna.Study, dict[str, Any]]:
    """The Optuna study behind ``results/<study>``, from any working directory; never creates one."""
    meta = read_study_file(folder)
    url = study_url(folder, meta)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=meta["study"], storage=open_storage(url, create=False))
    except KeyError:
        raise ValueError(f"{folder}: study {meta['study']!r} is not in its storage {url!r}") from None
    except ValueError:
        raise
    except Exception as err:  # a corrupt database file
        raise ValueError(f"{folder}: storage {url!r} cannot be read ({type(err).__name__})") from None
    return study, meta
