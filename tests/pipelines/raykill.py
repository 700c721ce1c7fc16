"""Helpers of the kill-and-resume tests: find the session Ray's actors of a class, record a kill."""

from __future__ import annotations

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
