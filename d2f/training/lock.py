"""The run folder's lock: one ``d2f train`` at a time per ``--output``.

``d2f.lock`` in the run folder holds the pid and host of the process that trains there (JSON). It appears
complete or not at all: the content is written to a temporary file that is then hard-linked into place, and
the link fails if a lock exists. A second run on the folder, resumed, overwriting or new, gets a one-line
error naming the holder.

A lock whose process is gone (same host, pid not running or a zombie: the run was killed) is stale: the next
run takes it over and says so. A lock from another host cannot be checked from here and is never taken
over; the error says to delete it if no run is live there. Under several processes (torchrun, accelerate
launch) only the main process takes the lock (``d2f.training.setup``).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from d2f.errors import UserError
from d2f.pipeline.run_folder import LOCK_FILE


class RunLock:
    """A held lock (or, with ``path`` None, the no-op lock of a process that does not hold one). Released
    on leaving a ``with`` block; releasing never removes a lock that another process has taken since."""

    def __init__(self, path: Path | None = None, owner: dict | None = None):
        self.path, self.owner = path, owner

    def release(self) -> None:
        if self.path is not None and _read(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        self.path = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def take_lock(folder: Path) -> tuple[RunLock, dict | None]:
    """Take ``folder``'s lock (making the folder). Returns the lock and the stale lock it replaced (None if
    there was none); ``UserError`` if a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "token": uuid.uuid4().hex}
    tmp = folder / f".{LOCK_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(owner))
    stale = None
    try:
        for _ in range(3):  # a retry after each stale lock moved aside
            try:
                _link(tmp, path)
                return RunLock(path, owner), stale
            except FileExistsError:
                holder = _read(path)
                if holder is None:  # released in the meantime: try again
                    continue
                if _alive(holder):
                    raise UserError(_in_use(folder, path, holder)) from None
                stale = holder
                _move_aside(path, holder)
        raise UserError(_in_use(folder, path, _read(path) or {}))
    finally:
        tmp.unlink(missing_ok=True)


def _link(tmp: Path, path: Path) -> None:
    """Create ``path`` with ``tmp``'s content, failing with FileExistsError if it exists."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: exclusive create (a reader may see it half-written)
        with open(path, "x") as f:
            f.write(tmp.read_text())


def _read(path: Path) -> dict | None:
    """The lock's content; None if it is gone; {} if it cannot be read (garbage: treated as stale)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict) -> bool:
    """Whether the process of a lock may still run. Another host's process cannot be checked: alive."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _move_aside(path: Path, seen: dict) -> None:
    """Remove the stale lock ``seen`` from ``path``; if another process replaced it with a fresh lock in
    the meantime, put that one back (the retry then reports it as in use)."""
    aside = path.with_name(f".{LOCK_FILE}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != seen:
        try:
            os.link(aside, path)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def _in_use(folder: Path, path: Path, holder: dict) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder["since"])) if "since" in holder else "?"
    return (
        f"{folder} is in use by another d2f train (pid {pid} on host {host}, since {since}); wait for it to "
        f"end or choose another --output (if no run is live there, delete {path})"
    )
