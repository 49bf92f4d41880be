"""A PostgreSQL restart during a trial (issue 11, item 6): the worker rides it out; a server that stays away ends
the worker with one line, and the next run fails the abandoned trial with a reason and retries it.

Each test starts a throwaway server of its own (initdb under a temporary folder, as .ci/run does), because it
restarts and stops it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from optuna.trial import TrialState
from search_fakes import (
    FAKE,
    FAKE_PROBE,
    fake_env,
    start_fake_run,
    trials_of,
    wait_for_running_trial,
    write_study,
)

from search.records import counts_toward_budget
from search.studies import load_study_def
from search.workers import run_study

pytestmark = pytest.mark.postgres


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Server:
    """A private PostgreSQL server: its URL and pg_ctl."""

    bin: Path
    data: Path
    sock: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        opts = f"-k {self.sock} -h 127.0.0.1 -p {self.port}"
        cmd = [
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.sock / "log"),
            *args,
        ]
        as_postgres(cmd)


def as_postgres(cmd: list[str]) -> None:
    """Run a server command, as the postgres user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() == 0:
        cmd = ["su", "postgres", "-s", "/bin/sh", "-c", subprocess.list2cmdline(cmd)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.fixture
def server() -> Iterator[Server]:
    pg = _pg_bin()
    if pg is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    root = Path(tempfile.mkdtemp(prefix="search-pg-"))  # not under pytest's tmp: the postgres user needs it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = Server(pg, root / "data", root, port)
    try:
        as_postgres([str(pg / "initdb"), "-D", str(srv.data), "-U", "postgres", "--auth=trust"])
        srv.pg_ctl("-w", "start")
        yield srv
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            srv.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_a_server_restart_during_a_trial_does_not_end_the_worker(tmp_path: Path, server: Server) -> None:
    path = write_study(tmp_path, n_trials=3)
    proc = start_fake_run(path, server.url, 1, fake_env(step_s=0.5, steps=8))
    try:
        [running] = wait_for_running_trial("fake", server.url, proc)
        # Down for 3 s, several report intervals: the worker's storage calls must meet the outage (a bare
        # restart can fall between two calls, and then there is nothing to retry).
        server.pg_ctl("-m", "fast", "-w", "stop")
        time.sleep(3.0)
        server.pg_ctl("-w", "start")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert "unreachable" in out and "reachable again after" in out, out
    trials = trials_of("fake", server.url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, out
    assert trials[running.number].state == TrialState.COMPLETE  # the trial that ran through the restart
    assert len(trials[running.number].intermediate_values) == 8


def test_a_server_that_stays_away_ends_the_worker_in_one_line(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_study(tmp_path, n_trials=3)
    env = fake_env(step_s=0.5, steps=8, SEARCH_STORAGE_RETRY_S="4")
    proc = start_fake_run(path, server.url, 1, env)
    try:
        [running] = wait_for_running_trial("fake", server.url, proc)
        server.pg_ctl("-m", "fast", "-w", "stop")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: storage {server.url} unreachable for "), out
    assert f"trial {running.number}" in out and "stays RUNNING" in out

    # The server is back: the next run fails the abandoned trial with a reason, retries it and finishes.
    server.pg_ctl("-w", "start")
    assert trials_of("fake", server.url)[running.number].state == TrialState.RUNNING
    time.sleep(3.5)  # the study's grace period
    monkeypatch.setenv("FAKE_STEP_S", "0")
    assert run_study(load_study_def(path), server.url, objective=FAKE, probe=FAKE_PROBE) == 0
    trials = trials_of("fake", server.url)
    abandoned = trials[running.number]
    assert abandoned.state == TrialState.FAIL
    assert abandoned.user_attrs["fail_reason"].startswith("its worker stopped beating for over 3 s")
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == running.number]
    assert retry.state == TrialState.COMPLETE and retry.params == abandoned.params
    assert sum(map(counts_toward_budget, trials)) == 3
