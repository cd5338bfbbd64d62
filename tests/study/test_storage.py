"""Storages: PostgreSQL end to end (a real server from the ``postgres_url`` fixture), optuna-dashboard
reading a finished study, the study mutex, and bad storages / study files as one-line errors."""

import io
import json
import sqlite3
import threading
import time

import optuna
import pytest
from typer.testing import CliRunner

from mmlab.cli import app
from mmlab.study.search import finished
from mmlab.study.storage import load_study, open_storage, study_mutex

runner = CliRunner()


def one_error_line(output: str) -> str:
    """The output's single ``error:`` line (progress bars aside); no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def search_args(results, study="s", trials=4, *extra):
    return ["search", "--space", "tiny", "--study", study, "--trials", str(trials), "--budget-mflops", "0.9",
            "--signal", "params", "--timing-s", "0.05", "--threads", "1", "--results-dir", str(results), *extra]


def dashboard_studies(storage) -> list[dict]:
    """GET /api/studies of optuna-dashboard's WSGI app on ``storage`` (no server, no browser)."""
    from optuna_dashboard import wsgi

    app_ = wsgi(storage)
    status = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "QUERY_STRING": "", "SERVER_NAME": "test",
               "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
               "SERVER_PROTOCOL": "HTTP/1.1"}
    body = b"".join(app_(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status and status[0].startswith("200"), (status, body[:500])
    return json.loads(body)["study_summaries"]


def test_postgres_end_to_end_report_and_dashboard(tmp_path, postgres_url):
    result = runner.invoke(app, search_args(tmp_path, "pg", 4, "--storage", postgres_url))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "pg"
    meta = json.loads((folder / "study.json").read_text())
    assert meta["storage"] == postgres_url
    study, _ = load_study(folder)  # the report side reads it back from the server
    assert len(finished(study)) == 4
    assert not (folder / "study.db").exists()
    (folder / "trials.csv").unlink()
    assert runner.invoke(app, ["report", str(folder)]).exit_code == 0
    assert (folder / "trials.csv").is_file()
    # optuna-dashboard reads the same storage: the URL as a user would give it on the command line.
    from mmlab.study.storage import _postgres_url

    studies = dashboard_studies(_postgres_url(postgres_url))
    assert [s["study_name"] for s in studies] == ["pg"]
    assert studies[0]["directions"] == ["maximize", "minimize"]


def test_dashboard_reads_a_sqlite_study(tmp_path):
    assert runner.invoke(app, search_args(tmp_path, "dash", 3)).exit_code == 0
    studies = dashboard_studies(f"sqlite:///{tmp_path / 'dash' / 'study.db'}")
    assert [s["study_name"] for s in studies] == ["dash"]


def test_study_mutex_excludes_across_connections(tmp_path, postgres_url):
    for url in (f"sqlite:///{tmp_path / 'm.db'}", postgres_url):
        a, b = open_storage(url), open_storage(url)
        order = []

        def second():
            with study_mutex(b, url, "x"):
                order.append("b")

        with study_mutex(a, url, "x"):
            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.5)
            order.append("a")  # b is still waiting
        thread.join(10)
        assert order == ["a", "b"], url
        with study_mutex(a, url, "x"), study_mutex(b, url, "other"):  # another study: no wait
            pass


@pytest.mark.parametrize("url, message", [
    ("postgresql://nobody@127.0.0.1:1/none", "cannot be opened (OperationalError"),
    ("nosuchdb://x/y", "cannot be opened"),
])
def test_unreachable_storage_is_one_line(tmp_path, url, message):
    result = runner.invoke(app, search_args(tmp_path, "u", 2, "--storage", url))
    assert result.exit_code == 2
    assert message in one_error_line(result.output)


def test_corrupt_study_db_and_study_json_are_one_line(tmp_path):
    assert runner.invoke(app, search_args(tmp_path, "c", 2)).exit_code == 0
    folder = tmp_path / "c"
    db = folder / "study.db"
    good = db.read_bytes()
    db.write_bytes(b"this is not a database" * 100)
    for args in (search_args(tmp_path, "c", 3), ["report", str(folder)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "cannot be" in one_error_line(result.output)
    db.write_bytes(good)
    (folder / "study.json").write_text("{not json")
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2 and "study.json: corrupt" in result.output
    (folder / "study.json").write_text("[1, 2]")
    result = runner.invoke(app, ["export", str(folder), "--trial", "0"])
    assert result.exit_code == 2 and "study.json: corrupt" in result.output


def test_reading_never_creates_a_database(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"study": "r", "storage": "study.db"}))
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (folder / "study.db").exists()


def test_heartbeat_storage_retries_a_stale_trial_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    storage = open_storage(url, heartbeat=(1, 2))
    study = optuna.create_study(storage=storage, study_name="h")
    trial = study.ask()
    trial.suggest_int("x", 0, 9)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params
    with sqlite3.connect(tmp_path / "h.db") as conn:  # the file really is shared SQLite
        assert conn.execute("select count(*) from trials").fetchone()[0] == 2


def test_many_processes_opening_a_fresh_sqlite_file_at_once(tmp_path):
    """Optuna's schema creation races when several processes open a new database together (seen
    in CI: 'UNIQUE constraint failed: alembic_version'); open_storage retries that race."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = f"from mmlab.study.storage import open_storage; open_storage('sqlite:///{tmp_path}/fresh.db')"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
             for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e[-300:] for e in errors if e]


def test_open_retries_a_locked_database_wrapped_by_optuna_and_nothing_else(monkeypatch):
    """Seen in CI: a worker's open failed with Optuna's StorageInternalError ("An exception is raised
    during the commit") around SQLite's 'database is locked' while the other worker wrote. That is
    retried; an error that is not an open race is raised at once."""
    import sqlalchemy.exc

    import mmlab.study.storage as storage_module

    calls = []

    def locked_twice(url, **kwargs):
        calls.append(url)
        if len(calls) <= 2:
            try:
                raise sqlalchemy.exc.OperationalError("UPDATE version_info", {}, Exception("database is locked"))
            except sqlalchemy.exc.OperationalError as err:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from err
        return "storage"

    monkeypatch.setattr(storage_module.time, "sleep", lambda s: None)
    monkeypatch.setattr(storage_module.optuna.storages, "RDBStorage", locked_twice)
    assert storage_module._rdb("sqlite:///x.db") == "storage" and len(calls) == 3

    def broken(url, **kwargs):
        calls.append(url)
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")

    calls.clear()
    monkeypatch.setattr(storage_module.optuna.storages, "RDBStorage", broken)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage_module._rdb("sqlite:///x.db")
    assert len(calls) == 1
