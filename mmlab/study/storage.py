"""Where a study lives: Optuna storage URLs, and the results folder that records which one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

STUDY_FILE = "study.json"
DEFAULT_DB = "study.db"


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (``sqlite:///PATH``, ``postgresql://...``, ``journal:PATH``).

    ``create=False`` refuses a SQLite / journal file that does not exist instead of making an
    empty one (reading a study must never create a database).
    """
    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if not create and not path.is_file():
                raise ValueError(f"storage: {url!r} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
            # Several workers share the file: wait for locks instead of failing.
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        if url.startswith(("journal:", "file:")) or url.endswith((".log", ".journal")):
            path = Path(url.split(":", 1)[1] if ":" in url else url)
            if not create and not path.is_file():
                raise ValueError(f"storage: {url!r} does not exist")
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(url)
    except ValueError as err:
        if str(err).startswith("storage:"):
            raise
        raise ValueError(f"storage: {url!r} cannot be opened ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    except Exception as err:  # any driver / URL problem: one line for the user
        first = (str(err).splitlines() or [""])[0]
        raise ValueError(f"storage: {url!r} cannot be opened ({type(err).__name__}: {first})") from None


def folder_storage_url(folder: Path, storage: str | None) -> str:
    """The URL of a study's storage: the given one, or SQLite inside its results folder."""
    return storage or f"sqlite:///{(folder / DEFAULT_DB).as_posix()}"


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
        if not isinstance(meta, dict) or not isinstance(meta.get("study"), str):
            raise ValueError("not a study record")
    except ValueError as err:
        raise ValueError(f"{path}: corrupt ({err})") from None
    return meta


def load_study(folder: Path) -> tuple[optuna.Study, dict[str, Any]]:
    """The Optuna study behind ``results/<study>``, from any working directory; never creates one."""
    meta = read_study_file(folder)
    storage = meta.get("storage") or DEFAULT_DB
    url = storage if "://" in storage or storage.startswith("journal:") else f"sqlite:///{(folder / storage).as_posix()}"
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
