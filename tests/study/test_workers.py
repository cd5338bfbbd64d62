"""Worker processes on one storage: exact trial counts, no repeats, kill -9, SIGINT, parent death.

Real processes and real signals; PostgreSQL from the ``postgres_url`` fixture (tests/conftest.py).
Each test runs a small study of the tiny space, so all of them together take a few minutes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict

import optuna
import pytest
import sqlalchemy.exc

from mmlab.study.search import SearchConfig
from mmlab.study.storage import open_storage

DRIVER = """
import json, sys
from mmlab.api import search
from mmlab.study.search import SearchConfig
result = search(SearchConfig.from_dict(json.loads(sys.argv[1])), workers=int(sys.argv[2]))
print("RESULT", result.finished, result.interrupted, json.dumps(result.problems))
"""


def config(tmp_path, study="w", trials=8, **kw):
    base = dict(study=study, trials=trials, space="tiny", budget_mflops=0.9, signal="params", timing_s=0.05,
                threads=1, results_dir=str(tmp_path), heartbeat_s=1, grace_s=3, timing_tries=1)
    return SearchConfig(**{**base, **kw})


def start(cfg, workers, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(asdict(cfg)), str(workers)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def trials_of(cfg):
    try:
        storage = open_storage(cfg.storage_url, create=False)
        return optuna.load_study(study_name=cfg.study, storage=storage).get_trials(deepcopy=False)
    except (KeyError, ValueError):  # not created yet
        return []


def wait_for_running(cfg, proc, timeout=120):
    """A RUNNING trial of ``cfg`` that a worker has stamped, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for t in trials_of(cfg):
            if t.state.name == "RUNNING" and "worker_pid" in t.user_attrs and t.number >= 1:
                return t
        time.sleep(0.1)
    raise AssertionError("no trial started")


def quick_reader(cfg):
    """``cfg``'s SQLite storage with a 1 s busy timeout instead of the workers' 60 s.

    A worker stopped inside a write holds the file's lock until it is continued: a reader with the
    workers' timeout would wait out a minute each time that happens.
    """
    return optuna.storages.RDBStorage(cfg.storage_url, engine_kwargs={"connect_args": {"timeout": 1}})


def stop_a_worker_mid_trial(cfg, proc, timeout=300):
    """SIGSTOP a worker while it holds a RUNNING trial; return its pid and that trial.

    Stopping before looking makes the trial it holds at its death certain: a trial read as RUNNING
    may finish before a signal lands, and a worker may be killed between two trials.
    """
    wait_for_running(cfg, proc)
    storage = quick_reader(cfg)  # opened while no worker is stopped

    locked = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)

    def running():  # stamped RUNNING trials; raises ``locked`` while a stopped worker holds the file
        trials = optuna.load_study(study_name=cfg.study, storage=storage).get_trials(deepcopy=False)
        return [t for t in trials if t.state.name == "RUNNING" and t.number >= 1 and "worker_pid" in t.user_attrs]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            candidates = running()
        except locked:
            candidates = []
        if not candidates:
            time.sleep(0.05)
            continue
        pid = candidates[0].user_attrs["worker_pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            held = [t for t in running() if t.user_attrs["worker_pid"] == pid]
        except locked:  # stopped inside a write: let it finish and look again
            held = []
        if held:
            return pid, held[0]
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("no worker could be stopped inside a trial")


def check_exact(cfg):
    """Exactly ``cfg.trials`` COMPLETE, none RUNNING or WAITING, no architecture twice."""
    trials = trials_of(cfg)
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] == cfg.trials, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    keys = [t.user_attrs["spec_key"] for t in trials if t.state.name == "COMPLETE"]
    assert len(set(keys)) == len(keys), Counter(keys).most_common(3)
    assert all({"worker_host", "worker_pid"} <= set(t.user_attrs) for t in trials)
    for t in trials:  # a repeat suggestion is stored PRUNED, naming the trial it repeats
        if t.state.name == "PRUNED":
            assert t.user_attrs["spec_key"] == trials[t.user_attrs["duplicate_of"]].user_attrs["spec_key"]
    return trials


def test_four_workers_on_postgres_finish_exactly(tmp_path, postgres_url):
    cfg = config(tmp_path, "pg", trials=8, storage=postgres_url)
    proc = start(cfg, 4)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert out.split()[:3] == ["RESULT", "8", "False"]
    trials = check_exact(cfg)
    assert len({t.user_attrs["worker_pid"] for t in trials}) >= 2  # the work was shared
    assert (tmp_path / "pg" / "report.md").is_file()


def test_two_workers_on_sqlite_finish_exactly_and_a_resume_repeats_nothing(tmp_path):
    cfg = config(tmp_path, "sq", trials=8)
    proc = start(cfg, 2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    check_exact(cfg)
    more = config(tmp_path, "sq", trials=12)
    proc = start(more, 2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    check_exact(more)


def test_kill_9_of_a_worker_then_resume(tmp_path):
    cfg = config(tmp_path, "k", trials=6)
    proc = start(cfg, 2)
    pid, victim = stop_a_worker_mid_trial(cfg, proc)
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    # The other worker fails the stale trial after the grace period, retries it and finishes.
    assert proc.returncode == 0, err[-3000:]
    assert "killed by SIGKILL" in err and "Traceback" not in err
    trials = check_exact(cfg)
    killed = trials[victim.number]
    assert killed.state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    # Retried once, with whatever it had suggested before the kill (the rest is suggested anew).
    assert len(retries) == 1 and killed.params.items() <= retries[0].params.items()
    # A resume of the finished study adds nothing and leaves nothing running.
    proc = start(cfg, 1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert out.split()[:2] == ["RESULT", "6"]
    check_exact(cfg)


def test_sigint_to_the_process_group_then_resume(tmp_path):
    cfg = config(tmp_path, "int", trials=6, seed=7)  # a seed of its own: nothing of it is cached yet
    cmd = [sys.executable, "-m", "mmlab", "search", "--space", "tiny", "--study", "int", "--trials", "6", "--seed", "7",
           "--budget-mflops", "0.9", "--signal", "params", "--timing-s", "0.05", "--threads", "1",
           "--results-dir", str(tmp_path), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    running = wait_for_running(cfg, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "resume with" in out and "Traceback" not in err
    trials = trials_of(cfg)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert trials[running.number].state.name in ("FAIL", "COMPLETE")
    for pid in {t.user_attrs["worker_pid"] for t in trials if "worker_pid" in t.user_attrs}:
        assert not _alive(pid)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_exact(cfg)


def test_workers_stop_when_their_parent_dies(tmp_path):
    cfg = config(tmp_path, "orphan", trials=30, grace_s=30, seed=11)
    proc = start(cfg, 2)
    running = wait_for_running(cfg, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    pid = running.user_attrs["worker_pid"]
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "a worker outlived its parent"
    trial = trials_of(cfg)[running.number]
    assert trial.state.name in ("FAIL", "COMPLETE")  # it failed its own trial on the way out
    if trial.state.name == "FAIL":
        assert trial.user_attrs["fail_reason"].startswith("interrupted")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


@pytest.fixture
def int_handler():
    """SIGINT raising KeyboardInterrupt (Python's default), restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_inside_the_deferred_region_waits_for_its_end(int_handler):
    # A thread that does not block signals is where the kernel sends a process-directed signal
    # when the main thread masks it; a signal mask (the old design) let Python raise
    # KeyboardInterrupt inside the region from there. The region must run to its end.
    from mmlab.study.search import signals_deferred

    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(200):  # bytecodes and sleeps: every chance for a pending signal to act
                    time.sleep(0.001)
                reached.append("end")
    finally:
        stop.set()
    assert reached == ["end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_deferred_signals_reach_their_own_handlers_once_each(int_handler):
    from mmlab.study.search import signals_deferred

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            assert seen == []
        assert seen == [signal.SIGTERM]
        with signals_deferred():  # nothing caught: nothing raised
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
