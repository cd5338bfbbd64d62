"""Shared fixtures: the reference tables vendored under tests/data (see tests/data/README.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parent / "data"


def read_tsv(name: str) -> list[dict[str, str]]:
    with (REFERENCE / name).open() as fh:
        return list(csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _session_cache(tmp_path_factory, monkeypatch) -> None:
    """Tests never read or write the user's measurement cache; one shared cache per test session."""
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


# --- A throwaway PostgreSQL server (tests of multi-machine search) -------------------------------

def _postgres_bin() -> "Path | None":
    """The folder of PostgreSQL's initdb / pg_ctl: Debian's /usr/lib/postgresql/<version>/bin
    (newest first), else whatever is on PATH."""
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


@pytest.fixture(scope="session")
def postgres_server():
    """Start a PostgreSQL server on 127.0.0.1 (a free port, trust auth, its own temporary data
    folder) for the test session; stop it and remove its folder at teardown. As root, the server
    runs as the ``postgres`` user (initdb refuses root). Yields a function that creates a fresh
    database and returns its ``postgresql://`` URL."""
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg not installed; pip install -e '.[postgres]'")
    root = Path(tempfile.mkdtemp(prefix="mmlab-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True)
    created = []

    def new_database(name: str | None = None) -> str:
        name = name or f"t{len(created)}"
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's throwaway PostgreSQL server."""
    return postgres_server()


def randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and gains (seeded): at initialisation every block
    branch ends in a zero-gain BN, and a zero branch would test nothing. Returns the model."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model
