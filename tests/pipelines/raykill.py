"""Helpers of the kill-and-resume tests: find the session Ray's actors of a class, record a kill."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


def actors_of(class_name: str) -> dict[str, dict]:
    """Every actor of `class_name` the session's GCS knows (alive or dead), by actor id.

    The session Ray runs without a dashboard, so `ray.util.state` (served by it) is unavailable; the
    GCS's own table has the same facts (class, state, pid).
    """
    import ray._private.state

    return {k: v for k, v in ray._private.state.actors().items() if v["ActorClassName"] == class_name}


@dataclass
class Killed:
    """What a killer thread did: the pid it killed, or None if the job ended first."""

    pid: int | None = None


def kill_one_actor_when(
    ready: Callable[[], bool], class_name: str, before: set[str], stop: threading.Event, poll_s: float
) -> Killed:
    """Start a thread that SIGKILLs one live actor of `class_name` as soon as `ready()` is true.

    Args:
        ready: when the kill should happen (e.g. a first output file exists).
        class_name: the actors' class ("ShardWriter", "RayTrainWorker").
        before: ids of the actors of that class that existed before the job (earlier jobs' actors).
        stop: set when the job is over; the thread then gives up.
        poll_s: seconds between looks.

    Returns:
        `Killed`, filled in by the thread.
    """
    killed = Killed()

    def run() -> None:
        while not stop.is_set():
            if ready():
                alive = [
                    a for k, a in actors_of(class_name).items() if k not in before and a["State"] == "ALIVE"
                ]
                if alive:
                    killed.pid = int(alive[0]["Pid"])
                    os.kill(killed.pid, signal.SIGKILL)
                    return
            time.sleep(poll_s)

    threading.Thread(target=run, name="killer", daemon=True).start()
    return killed
