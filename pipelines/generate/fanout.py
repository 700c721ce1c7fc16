"""Fan-out: the shards of a plan written by a pool of Ray actors, or in this process.

At most `IN_FLIGHT_PER_ACTOR` shard specs are queued per actor and actors return only small stats,
so the driver's memory does not grow with the number of rows. A shard that fails is retried on any
actor (a dead actor is replaced); a retry rewrites the same bytes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from pipelines.config import GenerateConfig
from pipelines.errors import PipelineError, StorageError
from pipelines.generate.actors import ShardWriter
from pipelines.generate.commit import OutputTarget
from pipelines.generate.plan import GenerationPlan, SourceImages
from pipelines.generate.shard import SamplingSpec, ShardStats
from pipelines.storage import last_line

if TYPE_CHECKING:
    from pipelines.raycluster import ClusterInfo

log = logging.getLogger(__name__)

#: Attempts per shard before the job fails (a retry rewrites the same file).
MAX_ATTEMPTS = 3
#: Shards queued per actor: one running, one waiting, so an actor never idles on a round trip.
IN_FLIGHT_PER_ACTOR = 2


def run_local(plan: GenerationPlan, writer: ShardWriter, bar: tqdm) -> list[ShardStats]:
    """Write every shard in this process, in order (the baseline; same bytes as on Ray)."""
    stats = []
    for spec in plan.shards:
        s = writer.write(spec)
        stats.append(s)
        bar.update(s.rows)
    return stats


def actor_count(gen: GenerateConfig, num_cpus: float, num_gpus: float, num_shards: int) -> int:
    """`generate.num_actors`, or one per GPU / per `cpus_per_actor` CPUs; never more than shards."""
    auto = int(num_gpus) if num_gpus >= 1 else int(num_cpus // gen.cpus_per_actor)
    return max(1, min(gen.num_actors or max(1, auto), num_shards))


@dataclass
class RayFanout:
    """What `run_on_ray` needs: the work, the cluster, and what each writer actor is started with.

    Args:
        gen: the `generate` settings (`num_actors`, `cpus_per_actor`).
        cluster: the connected cluster's resources.
        plan: the shards.
        sampling: the shared settings every actor gets.
        target: the output.
        model_dir: where actors load the model from.
        model_opts: fsspec options for `model_dir`.
        sources: the real images (variants, interpolations), or None.
    """

    gen: GenerateConfig
    cluster: ClusterInfo
    plan: GenerationPlan
    sampling: SamplingSpec
    target: OutputTarget
    model_dir: str
    model_opts: dict[str, Any] = field(repr=False)
    sources: SourceImages | None = field(default=None, repr=False)


@dataclass
class _Pool:
    """The started writer actors, and how to start a replacement."""

    actors: list[Any]
    actor_class: Any  # the Ray actor class, resources set
    args: tuple[Any, ...]  # its constructor's arguments
    generation: list[int]  # per slot: bumped when a dead actor is replaced


def _start_pool(fanout: RayFanout) -> _Pool:
    """Start the writer actors (fractional resources never exceed the cluster, so asking for more
    actors than CPUs/GPUs cannot hang) and wait until each has loaded the model.

    Raises:
        PipelineError: an actor failed to start (its cause's last 500 characters).
    """
    import ray
    from ray.exceptions import RayActorError

    from pipelines.generate import actors as writer_actors  # looked up at call time (tests replace it)

    g, info = fanout.gen, fanout.cluster
    n = actor_count(g, info.num_cpus, info.num_gpus, len(fanout.plan.shards))
    use_gpu = info.num_gpus >= 1
    cpus = min(float(g.cpus_per_actor), max(info.num_cpus, 1.0) / n)
    gpus = min(1.0, info.num_gpus / n) if use_gpu else 0.0
    sources_ref = ray.put(fanout.sources) if fanout.sources is not None else None
    cls = writer_actors.remote_writer_class().options(
        num_cpus=cpus, num_gpus=gpus, scheduling_strategy="SPREAD"
    )
    target = fanout.target
    args = (
        fanout.model_dir,
        fanout.model_opts,
        fanout.sampling,
        target.url,
        target.storage_options,
        sources_ref,
    )
    args += (g.cpus_per_actor, use_gpu)
    actors = [cls.remote(*args) for _ in range(n)]
    try:
        ray.get([a.ready.remote() for a in actors])  # started, model loaded
    except RayActorError as exc:
        for actor in actors:
            ray.kill(actor)
        cause = getattr(exc, "cause", None) or exc
        raise PipelineError(f"the writer actors failed to start: {str(cause).strip()[-500:]}") from None
    return _Pool(actors, cls, args, [0] * n)


def run_on_ray(fanout: RayFanout, bar: tqdm) -> tuple[list[ShardStats], int, float]:
    """Write every shard with a pool of Ray actors (bounded in-flight work, retries).

    Args:
        fanout: the work, the cluster and the actors' start-up arguments.
        bar: progress bar (reset once the actors are up).

    Returns:
        (stats in shard order, actors used, seconds spent connecting and starting the actors).

    Raises:
        PipelineError: the actors failed to start, or a shard raised a user-facing error;
            `StorageError`: a shard failed `MAX_ATTEMPTS` times. Nothing is committed then.
    """
    import ray

    t_start = time.perf_counter()
    pool = _start_pool(fanout)
    startup = time.perf_counter() - t_start
    bar.reset()  # rates count from here (actor start-up is reported separately)
    plan = fanout.plan
    log.info(
        "generating %d rows in %d shards with %d actor(s)",
        plan.total_rows,
        len(plan.shards),
        len(pool.actors),
    )
    try:
        done = _drain(pool, plan, bar)
    finally:
        for actor in pool.actors:
            ray.kill(actor)
    return [done[i] for i in sorted(done)], len(pool.actors), startup


def _drain(pool: _Pool, plan: GenerationPlan, bar: tqdm) -> dict[int, ShardStats]:
    """Feed every shard to the actors, `IN_FLIGHT_PER_ACTOR` at a time each, retrying failures."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    queue = deque((spec, 1) for spec in plan.shards)
    pending: dict[Any, tuple[int, int, Any, int]] = {}  # ref -> (slot, generation, spec, attempt)
    done: dict[int, ShardStats] = {}

    def submit(slot: int) -> None:
        while queue and sum(1 for v in pending.values() if v[0] == slot) < IN_FLIGHT_PER_ACTOR:
            spec, attempt = queue.popleft()
            pending[pool.actors[slot].write.remote(spec)] = (slot, pool.generation[slot], spec, attempt)

    for slot in range(len(pool.actors)):
        submit(slot)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        slot, gen, spec, attempt = pending.pop(ready[0])
        try:
            s = ray.get(ready[0])
        except (RayTaskError, RayActorError) as exc:
            _check_retry(exc, spec.index, attempt)
            log.warning("shard %d failed (attempt %d), retrying", spec.index, attempt)
            if isinstance(exc, RayActorError) and gen == pool.generation[slot]:
                ray.kill(pool.actors[slot])  # replace a dead worker once, whatever its queued tasks say
                pool.actors[slot] = pool.actor_class.remote(*pool.args)
                pool.generation[slot] += 1
            queue.appendleft((spec, attempt + 1))
        else:
            done[s.index] = s
            bar.update(s.rows)
        submit(slot)
    return done


def _check_retry(exc: BaseException, index: int, attempt: int) -> None:
    """Raise when shard `index`'s failure must not be retried: a user-facing problem (retrying will
    not help), or its last attempt."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, PipelineError):
        raise type(cause)(f"shard {index}: {cause}; nothing committed") from None
    if attempt >= MAX_ATTEMPTS:
        raise StorageError(
            f"shard {index} failed after {attempt} attempts: {last_line(cause)}; nothing committed"
        ) from None


__all__ = ["IN_FLIGHT_PER_ACTOR", "MAX_ATTEMPTS", "RayFanout", "actor_count", "run_local", "run_on_ray"]
