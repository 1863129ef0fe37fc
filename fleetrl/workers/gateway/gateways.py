"""Several gateways (``gateway.replicas`` N > 1) behind one handle-like object.

Each gateway is a whole gateway: its own ZeroMQ endpoint, robot table, scheduler and share of the tasks'
inference replicas (``GatewayConfig.replica_indices``). A robot belongs to one at a time: registration
assigns the least loaded (the registry's ``gateway`` column), and a gateway that welcomes a robot assigned
elsewhere (its own stopped answering, so the robot's SDK moved on to the next endpoint) takes it over.

``Gateways`` stands where the one gateway's actor handle stood (REST, the task manager, ``fleetrl run``),
so callers do not change: ``gateways.method.remote(...)`` returns an ObjectRef, and

* a call about one robot (``camera_frame``, ``request_reset``) goes to that robot's gateway;
* a call that changes what is served (``add_task``, ``remove_task``, ``revoke``, ``rollback``, ``stop``) goes
  to every gateway; one that is down is skipped (it reads tasks, robots and pins from the registry when Ray
  restarts it);
* a question (``stats``, ``served_tasks``, ``rollout_state``, ``running_evaluations``) is asked of every
  gateway and a small Ray task merges the answers of those that answer into one gateway's answer;
* ``evaluate`` runs on the gateway its robots are assigned to (named robots on several gateways: 409);
* ``live()`` (the router's own) names the gateways answering now, for registration.

With one gateway every call goes straight to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import ray

ANSWER_S = 2.0  # a gateway that does not answer a question within this is left out of the merged answer
BROADCAST = {"add_task", "remove_task", "revoke", "rollback", "stop"}
ASK_ALL = {"ready", "stats", "served_tasks", "rollout_state", "running_evaluations"}
BY_ROBOT = {"camera_frame", "request_reset"}
METHODS = BROADCAST | ASK_ALL | BY_ROBOT | {"evaluate", "live"}


class Gateways:
    """The platform's gateway actors behind one handle (see the module doc)."""

    def __init__(self, actors: Sequence[Any], registry: Any):
        self.actors, self.registry = list(actors), registry

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_") or method not in METHODS:
            raise AttributeError(f"Gateways routes no gateway method {method!r}")
        return _Method(self, method)


class _Method:
    def __init__(self, gateways: Gateways, name: str):
        self.gateways, self.name = gateways, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        actors = self.gateways.actors
        if self.name == "live":
            return ray.put([0]) if len(actors) == 1 else _live.remote(actors)
        if len(actors) == 1:
            return getattr(actors[0], self.name).remote(*args, **kwargs)
        if self.name in BY_ROBOT or self.name == "evaluate":
            return _routed.remote(self.name, actors, self.gateways.registry, args, kwargs)
        refs = [getattr(actor, self.name).remote(*args, **kwargs) for actor in actors]
        return _merge.remote(self.name, refs, args, kwargs)


def _answers(refs: list[Any], timeout: float = ANSWER_S) -> list[tuple[int, Any]]:
    """``(gateway index, answer)`` of the gateways that answered within ``timeout`` without failing."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    done = set(ready)
    out = []
    for k, ref in enumerate(refs):
        if ref not in done:
            continue
        try:
            out.append((k, ray.get(ref)))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            continue  # down or restarting: left out
    return out


@ray.remote(num_cpus=0)
def _live(actors: list[Any]) -> list[int]:
    """The indices of the gateways that answer ``ready`` now."""
    return [k for k, _ in _answers([a.ready.remote() for a in actors])]


@ray.remote(num_cpus=0)
def _merge(method: str, refs: list[Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """The answers of every gateway to ``method`` as one gateway's answer."""
    if method == "ready":  # every gateway must be up (``/healthz``): a failure is raised
        infos = ray.get(refs)
        return {**infos[0], "gateways": infos}
    if method in BROADCAST:  # a gateway that is down re-reads the registry at its restart
        answers = [a for _, a in _answers(refs, timeout=150 if method == "rollback" else 10)]
        if method in ("remove_task", "revoke"):
            return any(answers)
        if method == "rollback":
            return next((a for a in answers if not a.get("ok")), answers[0] if answers else _down())
        return None
    answers = _answers(refs)
    if not answers:
        if method == "rollout_state":
            return _down()
        raise RuntimeError("no gateway answers")
    if method == "served_tasks":
        return sorted(set.intersection(*(set(a) for _, a in answers)))
    if method == "running_evaluations":
        return [ev for _, a in answers for ev in a]
    if method == "rollout_state":
        first = answers[0][1]
        if kwargs.get("summary") or (len(args) > 1 and args[1]) or not first.get("ok"):
            return first
        robots = {r: v for _, a in answers for r, v in (a.get("robots") or {}).items()}
        return {**first, "robots": robots}
    return merge_stats(answers, len(refs))


def _down() -> dict[str, Any]:
    return {"ok": False, "code": 503, "error": "no gateway answers"}


def merge_stats(answers: list[tuple[int, dict[str, Any]]], count: int) -> dict[str, Any]:
    """Several gateways' ``stats()`` as one: robots listed together, counters summed, pools summed, and
    ``gateways``: each one's index, endpoint, robots online and whether it answered."""
    by_index = dict(answers)
    pools: dict[str, Counter] = {}
    for _, a in answers:
        for pool, row in a["pools"].items():
            pools.setdefault(pool, Counter()).update(row)
    rollouts: dict[str, Any] = {}
    for _, a in answers:
        for task, summary in a["rollouts"].items():
            rollouts.setdefault(task, summary)
    refused: Counter = Counter()
    for _, a in answers:
        refused.update(a["refused"])
    first = answers[0][1]
    return {
        "endpoint": first["endpoint"],
        "robots": [r for _, a in answers for r in a["robots"]],
        "refused": dict(refused),
        "zap_denied": sum(a["zap_denied"] for _, a in answers),
        "episodes_committed": sum(a["episodes_committed"] for _, a in answers),
        "rollouts": rollouts,
        "pools": {pool: dict(row) for pool, row in pools.items()},
        "gateways": [
            {
                "index": k,
                "up": k in by_index,
                "endpoint": by_index[k]["endpoint"] if k in by_index else None,
                "robots_online": sum(r["online"] for r in by_index[k]["robots"]) if k in by_index else 0,
            }
            for k in range(count)
        ],
    }


def robot_gateway(stored: int | None, count: int) -> int:
    """The gateway a robot belongs to from the registry's ``gateway`` column: 0 before any gateway welcomed
    it, and for an index beyond the ``count`` configured (the platform was restarted with fewer)."""
    return stored if stored is not None and 0 <= stored < count else 0


@ray.remote(num_cpus=0)
def _routed(method: str, actors: list[Any], registry: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """A call about robots, on the gateway they are assigned to."""

    def actor(k: int | None) -> Any:
        return actors[robot_gateway(k, len(actors))]

    if method in BY_ROBOT:  # (robot_id, ...): its gateway
        k = ray.get(registry.robot_gateways.remote([args[0]])).get(args[0])
        return ray.get(getattr(actor(k), method).remote(*args, **kwargs))
    task, robots = args[0], args[2] if len(args) > 2 else kwargs.get("robots")
    if robots:
        where = set(ray.get(registry.robot_gateways.remote(list(robots))).values())
        if len(where) > 1:
            return {
                "ok": False,
                "code": 409,
                "error": f"the robots are on {len(where)} gateways ("
                f"{sorted(k for k in where if k is not None)}): evaluate each gateway's robots separately",
            }
        k = where.pop() if where else 0
    else:  # any robot of the task: the gateway with the most of them
        stats = _answers([a.stats.remote() for a in actors])
        count = Counter(
            r["gateway"] for _, s in stats for r in s["robots"] if r["task"] == task and r["online"]
        )
        k = count.most_common(1)[0][0] if count else (stats[0][0] if stats else 0)
    return ray.get(actor(k).evaluate.remote(*args, **kwargs))
