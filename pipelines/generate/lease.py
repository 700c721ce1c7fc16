"""The writer's lease on an output: one generation job writes to an output at a time.

`<output>/_LEASE` is a small JSON record (owner, host, pid, expiry). A job takes it with a
create-if-absent write before it changes anything under the output, renews it from a background
thread while it works, checks it is still the holder right before its commit, and deletes it at the
end. A second job finds it and stops at once with a one-line error naming the holder.

A lease whose holder died (SIGKILL, a lost machine) is stale: on the same machine as soon as its
process is gone, elsewhere when it has not been renewed for `LEASE_SECONDS`. The next job takes a
stale lease over with a compare-and-swap, so of two jobs finding the same stale lease one wins.
A holder that finds its lease taken (it stalled for longer than the expiry) stops before
committing. All writes go through `pipelines.generate.conditional` (exact on local disk and S3).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from fsspec import AbstractFileSystem

from pipelines.dataset_format import LEASE
from pipelines.errors import StorageError
from pipelines.generate.conditional import delete_if, read_tagged, write_if
from pipelines.procfs import read_stat
from pipelines.storage import join

log = logging.getLogger(__name__)

#: A lease not renewed for this long is stale (its holder is presumed dead).
LEASE_SECONDS = 120.0
#: How often the holder renews it.
RENEW_SECONDS = 20.0


def _process_start(pid: int) -> str:
    """Start time of `pid` in clock ticks since boot (Linux), "" elsewhere: tells a reused pid apart."""
    stat = read_stat(pid)
    return "" if stat is None else str(stat.start)


def _pid_alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    now = _process_start(pid)
    return not started or not now or now == started


@dataclass(frozen=True)
class LeaseRecord:
    """The content of `_LEASE`.

    Args:
        owner: a random id of the holding job.
        host: its machine's name.
        pid: its process id there.
        pid_started: the process's start time (tells a reused pid apart), "" when unknown.
        acquired_at: when it took the lease (UTC, ISO 8601).
        expires_at: Unix time after which the lease is stale unless renewed.
    """

    owner: str
    host: str
    pid: int
    pid_started: str
    acquired_at: str
    expires_at: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> LeaseRecord | None:
        """Parse a lease file; None when it is not one (treated as stale)."""
        try:
            d = json.loads(blob)
            return cls(str(d["owner"]), str(d["host"]), int(d["pid"]), str(d.get("pid_started", "")),
                       str(d["acquired_at"]), float(d["expires_at"]))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def alive(self, now: float) -> bool:
        """Whether the holder may still be working: not expired, and its process exists when it is
        on this machine (a dead local holder frees the output at once)."""
        if now >= self.expires_at:
            return False
        return self.host != socket.gethostname() or _pid_alive(self.pid, self.pid_started)

    def describe(self) -> str:
        since = self.acquired_at.replace("+00:00", "Z")
        until = (
            datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        return f"pid {self.pid} on {self.host}, since {since}, lease renewed until {until}"


def _fresh_record(owner: str, acquired_at: str) -> LeaseRecord:
    pid = os.getpid()
    return LeaseRecord(owner, socket.gethostname(), pid, _process_start(pid), acquired_at,
                       time.time() + LEASE_SECONDS)  # fmt: skip


def busy_error(shown_url: str, holder: LeaseRecord) -> StorageError:
    """The one-line error for an output another job is writing."""
    return StorageError(
        f"generate.output {shown_url!r} is being written by another job ({holder.describe()}): wait for it "
        f"to finish, or choose another generate.output (a lease whose job died frees itself: at once on the "
        f"same machine, else {LEASE_SECONDS:.0f} s after its last renewal)"
    )


def current_holder(fs: AbstractFileSystem, root: str) -> LeaseRecord | None:
    """The live holder of `root`'s lease, or None when it is free or stale."""
    blob, _ = read_tagged(fs, join(root, LEASE))
    record = LeaseRecord.from_json(blob) if blob is not None else None
    return record if record is not None and record.alive(time.time()) else None


class Lease:
    """A held lease on an output (use `Lease.acquire` as a context manager)."""

    def __init__(self, fs: AbstractFileSystem, root: str, shown_url: str, record: LeaseRecord, tag: str):
        self.fs, self.path, self.shown = fs, join(root, LEASE), shown_url
        self.record, self._tag = record, tag
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._renew_loop, name="vaeaug-lease", daemon=True)

    @classmethod
    def acquire(cls, fs: AbstractFileSystem, root: str, shown_url: str) -> Lease:
        """Take the lease of the output at `root` (`shown_url`: its redacted URL for messages).

        Raises:
            StorageError: another job holds a live lease, or the lease cannot be written.
        """
        owner = uuid.uuid4().hex
        acquired_at = datetime.now(UTC).isoformat(timespec="seconds")
        path = join(root, LEASE)
        try:
            for _ in range(5):  # each pass either wins or sees a newer lease
                blob, tag = read_tagged(fs, path)
                holder = LeaseRecord.from_json(blob) if blob is not None else None
                if holder is not None and holder.alive(time.time()):
                    raise busy_error(shown_url, holder)
                record = _fresh_record(owner, acquired_at)
                if write_if(fs, path, record.to_json(), tag):
                    if blob is not None:
                        log.warning("took over a stale lease on %s (%s)", shown_url,
                                    holder.describe() if holder else "unreadable")  # fmt: skip
                    lease = cls(fs, root, shown_url, record, read_tagged(fs, path)[1] or "")
                    lease._thread.start()
                    return lease
        except OSError as exc:
            raise StorageError(
                f"cannot take the writer's lease {LEASE} in {shown_url!r} ({type(exc).__name__}: {exc}): "
                "check permissions and credentials"
            ) from None
        raise StorageError(
            f"could not take the writer's lease on {shown_url!r}: other jobs keep taking it; retry"
        )

    def _renew(self) -> None:
        with self._lock:
            if self._lost is not None:
                return
            record = LeaseRecord(**{**asdict(self.record), "expires_at": time.time() + LEASE_SECONDS})
            if write_if(self.fs, self.path, record.to_json(), self._tag):
                self.record, self._tag = record, read_tagged(self.fs, self.path)[1] or ""
            else:
                blob, _ = read_tagged(self.fs, self.path)
                other = LeaseRecord.from_json(blob) if blob else None
                if other is None or other.owner != self.record.owner:
                    self._lost = f"taken by {other.describe()}" if other else "removed"

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self._renew()
            except OSError as exc:  # a network blip: the next renewal may pass; expiry is far away
                log.warning("could not renew the lease on %s: %s", self.shown, exc)

    def check(self) -> None:
        """Raise unless this job still holds the lease (called right before the commit).

        Raises:
            StorageError: the lease was taken over or removed: this job must not commit.
        """
        self._renew()
        if self._lost is not None:
            raise StorageError(
                f"this job lost its lease on {self.shown!r} ({self._lost}) after stalling for over "
                f"{LEASE_SECONDS:.0f} s: nothing committed; re-run when the other job is done"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            if self._lost is None:
                try:
                    delete_if(self.fs, self.path, self._tag)
                except OSError as exc:  # it will expire
                    log.warning("could not remove the lease on %s: %s", self.shown, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LEASE_SECONDS", "Lease", "LeaseRecord", "busy_error", "current_holder"]
