"""Claims: the project's one file lock between processes, on this machine or on others sharing the folder.

A process holds the claim on a path while `<path>.claim` exists and names it (host, pid, a token of its own); a
heartbeat keeps the file fresh. The file is created exclusively (O_EXCL), so of two processes only one gets it.
A claim whose holder is dead is taken over: on this host at once (its pid is gone), elsewhere once its heartbeat
is older than `CLAIM_STALE_S`. The run cache shares an evaluation's runs through them (`cache.share_work`: one
claim per record), promotion writes a study under one (`exclusive`), and workers of a search take trials from
one SQLite file under one (`search.loop.claim_lock`).

The claim file's format and place (`<record>.claim`, JSON with `host`, `pid`, `token`, `since`) are shared by every
process that runs the same evaluation, old and new: keep them as they are.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A claim's heartbeat, and the silence after which its holder counts as dead (a killed process on another host;
# on this host a claim whose process is gone is taken over at once).
CLAIM_HEARTBEAT_S = 30.0
CLAIM_STALE_S = 180.0
# How often a process that waits for runs held by others looks again.
CLAIM_POLL_S = 20.0


def claim_path(record: Path) -> Path:
    """The claim file of the run whose record is `record`."""
    return record.with_name(record.name + ".claim")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def claim_holder(record: Path, *, stale_s: float = CLAIM_STALE_S) -> str | None:
    """Who holds a live claim on the run of `record` ("pid 12 on host"), or None: no claim, or a dead one."""
    path = claim_path(record)
    try:
        if time.time() - path.stat().st_mtime > stale_s:
            return None
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # created but not written yet, this instant
        return "a process starting"
    host, pid = str(owner.get("host")), int(owner.get("pid", -1))
    if host == socket.gethostname() and not _pid_alive(pid):
        return None
    return f"pid {pid} on {host}"


class Claim:
    """This process's right to run one record, held by `<record>.claim` and a heartbeat until `release`."""

    def __init__(self, path: Path, token: str, heartbeat_s: float) -> None:
        self.path = path
        self._token = token
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True)
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:  # taken over or removed: the run still finishes, its record is the same
                return

    def _ours(self) -> bool:
        try:
            return json.loads(self.path.read_text(encoding="utf-8")).get("token") == self._token
        except (OSError, ValueError):
            return False

    def release(self) -> None:
        """Stop the heartbeat and remove the claim file if it is still this one."""
        self._stop.set()
        self._beat.join()
        if self._ours():
            self.path.unlink(missing_ok=True)


def try_claim(
    record: Path, *, stale_s: float = CLAIM_STALE_S, heartbeat_s: float = CLAIM_HEARTBEAT_S
) -> Claim | None:
    """Claim the run of `record` for this process; None when another live process holds it.

    The claim file is created exclusively (O_EXCL), so of two processes only one gets it. A dead holder's claim
    is moved aside first; two processes that break the same dead claim at the same instant could both run the
    job, which costs time but never a wrong record (runs are deterministic and records are written atomically).
    """
    path = claim_path(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if claim_holder(record, stale_s=stale_s) is not None:
                return None
            aside = path.with_name(f".{path.name}.{token}.dead")
            try:
                os.rename(path, aside)  # of several breakers only one moves it
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(owner, handle)
        return Claim(path, token, heartbeat_s)
    return None


@contextmanager
def exclusive(path: Path, *, poll_s: float | None = None) -> Iterator[None]:
    """Hold the claim on `path` for a block, waiting while another live process holds it: for a step that two
    processes side by side must not do at once (writing the same study)."""
    while (claim := try_claim(path)) is None:
        time.sleep(CLAIM_POLL_S if poll_s is None else poll_s)
    try:
        yield
    finally:
        claim.release()
