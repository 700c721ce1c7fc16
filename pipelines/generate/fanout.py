"""Fan-out: the shards of a plan written by a pool of Ray actors, or in this process.

At most `IN_FLIGHT_PER_ACTOR` shard specs are queued per actor and actors return only small stats,
so the driver's memory does not grow with the number of rows. A shard that fails is retried on any
actor (a dead actor is replaced); a retry rewrites the same bytes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError, StorageError
from pipelines.generate.actors import ShardWriter
from pipelines.generate.commit import OutputTarget
from pipelines.generate.plan import JobPlan
from pipelines.generate.shard import JobSpec, ShardStats

if TYPE_CHECKING:
    from pipelines.raycluster import ClusterInfo

log = logging.getLogger(__name__)

#: Attempts per shard before the job fails (a retry rewrites the same file).
MAX_ATTEMPTS = 3
#: Shards queued per actor: one running, one waiting, so an actor never idles on a round trip.
IN_FLIGHT_PER_ACTOR = 2


def run_local(plan: JobPlan, writer: ShardWriter, bar: tqdm) -> list[ShardStats]:
    """Write every shard in this process, in order (the baseline; same bytes as on Ray)."""
    stats = []
    for spec in plan.shards:
        s = writer.write(spec)
        stats.append(s)
        bar.update(s.rows)
    return stats


def actor_count(cfg: PipelineConfig, num_cpus: float, num_gpus: float, num_shards: int) -> int:
    """`generate.num_actors`, or one per GPU / per `cpus_per_actor` CPUs; never more than shards."""
    g = cfg.generate
    auto = int(num_gpus) if num_gpus >= 1 else int(num_cpus // g.cpus_per_actor)
    return max(1, min(g.num_actors or max(1, auto), num_shards))


def run_on_ray(
    cfg: PipelineConfig,
    info: ClusterInfo,
    plan: JobPlan,
    job: JobSpec,
    target: OutputTarget,
    model_dir: str,
    model_opts: dict[str, Any],
    sources: Any,
    bar: tqdm,
) -> tuple[list[ShardStats], int, float]:
    """Write every shard with a pool of Ray actors (bounded in-flight work, retries).

    Args:
        cfg: the pipeline config (`generate.num_actors`, `cpus_per_actor`).
        info: the connected cluster's resources.
        plan: the shards.
        job: the shared settings every actor gets.
        target: the output.
        model_dir: where actors load the model from.
        model_opts: fsspec options for `model_dir`.
        sources: the real images, or None.
        bar: progress bar (reset once the actors are up).

    Returns:
        (stats in shard order, actors used, seconds spent connecting and starting the actors).
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from pipelines.generate.actors import remote_writer_class

    t_start = time.perf_counter()
    g = cfg.generate
    n = actor_count(cfg, info.num_cpus, info.num_gpus, len(plan.shards))
    use_gpu = info.num_gpus >= 1
    # Fractional requests never exceed the cluster, so asking for more actors than CPUs/GPUs cannot hang.
    cpus = min(float(g.cpus_per_actor), max(info.num_cpus, 1.0) / n)
    gpus = min(1.0, info.num_gpus / n) if use_gpu else 0.0
    sources_ref = ray.put(sources) if sources is not None else None
    cls = remote_writer_class().options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy="SPREAD")
    args = (model_dir, model_opts, job, target.url, target.storage_options, sources_ref)
    args += (g.cpus_per_actor, use_gpu)
    actors = [cls.remote(*args) for _ in range(n)]
    try:
        ray.get([a.ready.remote() for a in actors])  # started, model loaded
    except RayActorError as exc:
        for actor in actors:
            ray.kill(actor)
        cause = getattr(exc, "cause", None) or exc
        raise PipelineError(f"the writer actors failed to start: {str(cause).strip()[-500:]}") from None
    startup = time.perf_counter() - t_start
    bar.reset()  # rates count from here (actor start-up is reported separately)
    generation = [0] * n  # bumped when a dead actor is replaced
    log.info("generating %d rows in %d shards with %d actor(s)", plan.total_rows, len(plan.shards), n)
    queue = deque((spec, 1) for spec in plan.shards)
    pending: dict[Any, tuple[int, int, Any, int]] = {}  # ref -> (slot, generation, spec, attempt)
    done: dict[int, ShardStats] = {}

    def submit(slot: int) -> None:
        while queue and sum(1 for v in pending.values() if v[0] == slot) < IN_FLIGHT_PER_ACTOR:
            spec, attempt = queue.popleft()
            pending[actors[slot].write.remote(spec)] = (slot, generation[slot], spec, attempt)

    try:
        for slot in range(n):
            submit(slot)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            slot, gen, spec, attempt = pending.pop(ready[0])
            try:
                s = ray.get(ready[0])
            except (RayTaskError, RayActorError) as exc:
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, PipelineError):  # a user-facing problem: retrying will not help
                    raise type(cause)(f"shard {spec.index}: {cause}; nothing committed") from None
                if attempt >= MAX_ATTEMPTS:
                    text = str(cause).strip()
                    msg = text.splitlines()[-1] if text else type(cause).__name__
                    raise StorageError(
                        f"shard {spec.index} failed after {attempt} attempts: {msg}; nothing committed"
                    ) from None
                log.warning("shard %d failed (attempt %d), retrying", spec.index, attempt)
                if isinstance(exc, RayActorError) and gen == generation[slot]:
                    ray.kill(actors[slot])  # replace a dead worker once, whatever its queued tasks say
                    actors[slot] = cls.remote(*args)
                    generation[slot] += 1
                queue.appendleft((spec, attempt + 1))
            else:
                done[s.index] = s
                bar.update(s.rows)
            submit(slot)
    finally:
        for actor in actors:
            ray.kill(actor)
    return [done[i] for i in sorted(done)], n, startup


__all__ = ["IN_FLIGHT_PER_ACTOR", "MAX_ATTEMPTS", "actor_count", "run_local", "run_on_ray"]
