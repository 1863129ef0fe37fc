"""Versioned weight publication, shared by learners and inference replicas.

A learner publishes ``(version, state)`` for its task; the board puts the state into the Ray object store
once (the board owns that object, so it outlives a restarted learner worker), pushes the reference to
every replica of the task, and keeps the newest versions (``keep_versions`` of them) so a replica that
(re)starts loads the newest before serving, and so the gateway can ask every replica to *hold* older ones:
the stable version of a canary rollout, a version an operator rolled back to, one under evaluation
(``hold``). Weights travel as numpy arrays (zero-copy reads from the object store).

Ray restarts a dead board. Its state is rebuilt from what is still alive rather than from disk: replicas
carry names ``fleetrl-replica|<board id>|<task>|<index>|<nonce>`` (the board id is a constructor argument,
so a restarted board has it), which gives back the pools; the newest version is the highest one a live
replica serves, copied back from that replica into the object store.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

if TYPE_CHECKING:  # torch is imported by the processes that build tensors (replicas, learners), not here
    import torch

log = logging.getLogger(__name__)


def to_numpy_state(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def to_torch_state(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


REPLICA_PREFIX = "fleetrl-replica"


def replica_actor_name(board_id: str, task: str, index: int) -> str:
    """The Ray name of a task's replica ``index``: how a restarted board finds its pools again (the nonce
    keeps a re-created task's replicas apart from ones of its deleted namesake still being killed)."""
    return f"{REPLICA_PREFIX}|{board_id}|{task}|{index}|{uuid.uuid4().hex[:8]}"


def named_pools(board_id: str) -> dict[str, list[Any]]:
    """Every live replica named for ``board_id``, as ``{task: [replica by index]}``."""
    found: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for name in ray.util.list_named_actors():
        parts = name.split("|")
        if len(parts) != 5 or parts[0] != REPLICA_PREFIX or parts[1] != board_id:
            continue
        try:
            found[parts[2]].append((int(parts[3]), ray.get_actor(name)))
        except ValueError:
            continue  # killed since it was listed
    return {task: [h for _, h in sorted(members, key=lambda m: m[0])] for task, members in found.items()}


class WeightBoard:
    """Ray actor: ``register(task, replicas, keep)``, ``join(task, member)``, ``unregister(task)``, ``pools()``,
    ``publish(task, version, state)``, ``latest(task)``, ``versions(task)``, ``hold(task, versions)``,
    ``held(task)``."""

    def __init__(self, board_id: str = "") -> None:
        self.board_id = board_id  # "": replicas are not named, a restart forgets the pools
        self.replicas: dict[str, list[Any]] = {}
        # task -> {version: (ref, published_at)} in publication order; the last one is the newest
        self.history: dict[str, OrderedDict[int, tuple[ray.ObjectRef, float]]] = defaultdict(OrderedDict)
        self.keep: dict[str, int] = {}  # task -> published versions kept besides held ones
        self.holders: dict[str, dict[str, list[int]]] = {}  # task -> gateway -> the versions it needs
        if board_id and ray.get_runtime_context().was_current_actor_reconstructed:
            self._recover()

    def ready(self) -> bool:
        return True

    def identity(self) -> str:
        """The id replicas are named with (``replica_actor_name``)."""
        return self.board_id

    def _recover(self, timeout: float = 5.0) -> None:
        """After a restart: the pools from the replicas' names, each task's newest version from the replica
        serving the highest one (a replica restarting meanwhile is left out; version 0 needs nothing)."""
        self.replicas = named_pools(self.board_id)
        for task, pool in self.replicas.items():
            refs = {replica.served_version.remote(): replica for replica in pool}
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
            served = []
            for ref in ready:
                try:
                    served.append((ray.get(ref), refs[ref]))
                except ray.exceptions.RayError:
                    continue
            if not served or max(v for v, _ in served) == 0:
                continue
            version, replica = max(served, key=lambda s: s[0])
            try:
                state = ray.get(replica.served_state.remote(), timeout=timeout * 6)
            except ray.exceptions.RayError as exc:
                log.warning(
                    "weights: %s version %d could not be read back from its replica: %s", task, version, exc
                )
                continue
            self.history[task][version] = (ray.put(state), time.time())  # older ones went with the old board
        log.warning(
            "weight board restarted: pools %s, versions %s",
            {t: len(p) for t, p in self.replicas.items()},
            {t: next(reversed(kept)) for t, kept in self.history.items() if kept},
        )

    def register(self, task: str, replicas: list[Any], keep: int = 8) -> None:
        self.replicas[task] = list(replicas)
        self.keep[task] = keep

    def join(self, task: str, member: Any) -> tuple[Any, dict] | None:
        """Add a gateway's inline copy of ``task``'s policy to its pool (``gateway/inline.py``), replacing the
        member with the same ``key`` (that gateway before a restart). Returns ``(latest, held)`` for the
        copy to load what it lacks, or None when the task is not registered (deleted)."""
        pool = self.replicas.get(task)
        if pool is None:
            return None
        pool[:] = [m for m in pool if getattr(m, "key", None) != member.key] + [member]
        return self.latest(task), self.held(task)

    def pools(self) -> dict[str, list[Any]]:
        """Every task's replicas (a restarted gateway finds the pools of tasks created since boot here)."""
        return self.replicas

    def unregister(self, task: str) -> None:
        """A deleted task: forget its replicas and weights (a task created again under the name may have
        another architecture; its learner publishes anew)."""
        self.replicas.pop(task, None)
        self.history.pop(task, None)
        self.holders.pop(task, None)

    def publish(self, task: str, version: int, state: dict[str, np.ndarray]) -> int:
        """Keep ``version`` as the task's newest and push it to the task's replicas (not waiting for them)."""
        current = self.latest(task)
        if current is not None and version <= current[0]:
            log.warning("weights: %s version %d not newer than %d; ignored", task, version, current[0])
            return current[0]
        ref = ray.put(state)
        published_at = time.time()
        self._remember(task, version, ref, published_at)
        for replica in self.replicas.get(task, []):
            replica.load_weights.remote(ref, version, published_at)
        return version

    def _remember(self, task: str, version: int, ref: ray.ObjectRef, published_at: float) -> None:
        """Keep ``version`` (the newest now) for rollback and evaluation; the oldest versions nobody holds go
        first (the newest never: ``keep`` >= 1)."""
        kept = self.history[task]
        kept[version] = (ref, published_at)
        spare = [v for v in kept if v not in self.holding(task)]
        for v in spare[: max(0, len(spare) - self.keep.get(task, 8))]:
            del kept[v]

    def versions(self, task: str) -> list[int]:
        """Versions that can be held (rolled back to, evaluated): 0 (the initial weights every replica
        builds) and the published ones kept."""
        return [0, *sorted(self.history.get(task, {}))]

    def hold(
        self, task: str, versions: list[int], timeout: float = 60.0, holder: str = "gateway"
    ) -> list[int]:
        """Make every replica of ``task`` keep serving ``versions`` besides the newest (``holder``'s previous
        hold is released; replicas hold what any holder, i.e. any gateway, needs), loading what a replica
        lacks; returns once every live replica holds them. KeyError names the versions that are not kept
        (any more)."""
        versions = sorted(set(int(v) for v in versions))
        missing = [v for v in versions if v != 0 and v not in self.history.get(task, {})]
        if missing:
            raise KeyError(f"versions {missing} of task {task!r} are not kept; kept: {self.versions(task)}")
        self.holders.setdefault(task, {})[holder] = versions
        calls = [replica.hold.remote(self.held(task)) for replica in self.replicas.get(task, [])]
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=timeout)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                continue  # restarting: it loads the held versions (``held``) before it serves again
        if len(ready) < len(calls):
            raise TimeoutError(
                f"{len(calls) - len(ready)} replicas of {task!r} did not load {versions} in {timeout} s"
            )
        return versions

    def holding(self, task: str) -> list[int]:
        """The versions every replica of ``task`` must keep serving: what any gateway holds."""
        return sorted({v for held in self.holders.get(task, {}).values() for v in held})

    def held(self, task: str) -> dict[int, list[ray.ObjectRef] | None]:
        """What every replica must hold besides the newest (``hold``; a replica that restarts asks here):
        ``{version: [ref]}``, None for version 0 (the replica's own initial weights)."""
        kept = self.history.get(task, {})
        return {v: None if v == 0 else [kept[v][0]] for v in self.holding(task) if v == 0 or v in kept}

    def serving(self, task: str, timeout: float = 5.0) -> int | None:
        """The oldest version any live replica of ``task`` serves (None: no replica answered). A replica
        that is restarting is left out; it loads the newest version before it serves again."""
        refs = [replica.served_version.remote() for replica in self.replicas.get(task, [])]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        versions = []
        for ref in ready:
            try:
                versions.append(ray.get(ref))
            except ray.exceptions.RayError:
                continue
        return min(versions) if versions else None

    def latest(self, task: str) -> tuple[int, list[ray.ObjectRef], float] | None:
        """``(version, [ref], published_at)`` of the newest version (the ref wrapped so Ray passes it on)."""
        kept = self.history.get(task)
        if not kept:
            return None
        version = next(reversed(kept))
        ref, published_at = kept[version]
        return version, [ref], published_at

    def stop(self) -> None:
        self.history.clear()
