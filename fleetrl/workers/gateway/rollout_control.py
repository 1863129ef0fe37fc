"""The gateway's side of gated rollout that needs other actors: replicas told (through the weight board)
to hold the versions a task's rollout assigns, canary trials started once they do, verdicts and finished
evaluations recorded in the registry, and the operator's requests (rollback, evaluation). The decisions
themselves are ``rollout.py``'s; this runs them on the gateway's loop."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fleetrl.workers.gateway.rollout import Evaluation, TaskRollout
from fleetrl.workers.metrics_server import MetricsBuffer

if TYPE_CHECKING:
    from fleetrl.workers.gateway.assembly import EpisodeAssembly
    from fleetrl.workers.gateway.session import RobotState

log = logging.getLogger(__name__)
SYNC_EVERY_S = 0.5


class Refused(Exception):
    """An operator's request that cannot be done: ``code`` is the HTTP status the API answers with."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class RolloutControl:
    def __init__(
        self,
        rollouts: dict[str, TaskRollout],
        robots: dict[str, RobotState],
        weights: Any | None,
        registry: Any,
        metrics: MetricsBuffer,
        loop: asyncio.AbstractEventLoop,
        holder: str = "gateway",
    ):
        """``weights``: the weight board (None: replicas are trusted to hold every version, as in tests of
        the gateway alone); ``rollouts`` is the dispatch's table, shared; ``holder``: this gateway's name
        at the board (replicas hold what any gateway needs)."""
        self.holder = holder
        self.rollouts, self.robots = rollouts, robots
        self.weights, self.registry, self.metrics, self.loop = weights, registry, metrics, loop
        self.saved: dict[str, dict[str, Any]] = {}  # task -> the persisted part of its rollout, as restored
        self._locks: dict[str, asyncio.Lock] = {}
        self._failing: dict[str, str] = {}  # task -> the sync error last logged

    # -- restart --------------------------------------------------------------------------------------
    def restore(self, saved: dict[str, dict[str, Any]]) -> None:
        """A (re)started gateway: pins, stable versions, rejected candidates and verdicts from the registry
        (``registry.rollouts()``), applied to each task as it is served (``adopt``)."""
        self.saved = dict(saved)
        for name in self.rollouts:
            self.adopt(name)

    def adopt(self, task: str) -> None:
        state, rollout = self.saved.get(task), self.rollouts.get(task)
        if not state or rollout is None:
            return
        rollout.pinned, rollout.stable = state.get("pinned"), state.get("stable")
        rollout.rejected = state.get("rejected", -1)
        rollout.verdicts.extend(state.get("verdicts", []))

    def _persist(self, task: str) -> None:
        """Write the task's pin, stable version, rejected candidate and verdicts to the registry if changed."""
        r = self.rollouts.get(task)
        if r is None:
            return
        state = {"pinned": r.pinned, "stable": r.stable, "rejected": r.rejected, "verdicts": list(r.verdicts)}
        if state != self.saved.get(task):
            self.saved[task] = state
            self.registry.save_rollout.remote(task, state)

    # -- the loop -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Every ``SYNC_EVERY_S``: make replicas hold what each task's rollout wants, start proposed trials."""
        while True:
            await asyncio.sleep(SYNC_EVERY_S)
            for task in list(self.rollouts):
                try:
                    await self.sync(task)
                    self._failing.pop(task, None)
                except Exception as exc:  # noqa: BLE001 - a failing board call must not stop the loop
                    if self._failing.get(task) != str(exc):  # said once, not every half second
                        self._failing[task] = str(exc)
                        log.warning("gateway: rollout of %s not synced: %s", task, exc)

    async def sync(self, task: str) -> None:
        rollout = self.rollouts.get(task)
        if rollout is None:
            return
        async with self._lock(task):
            proposal = rollout.proposed_trial(self._online(task))
            await self._hold(task, rollout.wanted(proposal))
            if proposal is not None and set(proposal) <= set(rollout.held):
                trial = rollout.start_trial(*proposal, self._online(task))
                log.warning("gateway: canary trial of %s version %d on %s (stable %d)", task,
                            trial.candidate, sorted(trial.canary_robots), trial.stable)  # fmt: skip
            self._persist(task)

    async def _hold(self, task: str, versions: tuple[int, ...]) -> None:
        rollout = self.rollouts[task]
        if versions == rollout.held:
            return
        if self.weights is not None:
            try:
                await self.weights.hold.remote(task, list(versions), holder=self.holder)
            except Exception as exc:  # a RayTaskError wraps the board's KeyError / a replica's ValueError
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, KeyError):
                    raise Refused(404, str(cause.args[0] if cause.args else cause)) from None
                raise Refused(409, str(cause)[:500]) from None
        if task in self.rollouts:  # not deleted meanwhile
            rollout.held = versions

    def _lock(self, task: str) -> asyncio.Lock:
        return self._locks.setdefault(task, asyncio.Lock())

    def _online(self, task: str) -> list[str]:
        return sorted(r for r, s in self.robots.items() if s.online and s.task.name == task)

    # -- episodes -----------------------------------------------------------------------------------------
    def episode_ended(
        self, state: RobotState, asm: EpisodeAssembly, outcome: str, total_reward: float
    ) -> None:
        """The intake's ``ended`` hook: feed the task's trial and evaluations; record what they conclude."""
        rollout = self.rollouts.get(state.task.name)
        if rollout is None:
            return
        event = rollout.ended(state.robot_id, asm.assignment, outcome, total_reward)
        if event is None:
            return
        task = state.task.name
        if "evaluation" in event:
            summary = event["evaluation"]
            self.registry.save_evaluation.remote({**summary, "gateway": self.holder})
            log.warning("gateway: evaluation %s of %s version %d done: success %.2f over %d episodes", summary["evaluation_id"],
                        task, summary["version"], summary["success_rate"], summary["episodes_done"])  # fmt: skip
        if "verdict" in event:
            verdict = event["verdict"]
            self.metrics.inc("canary_verdicts_total", (task, verdict["decision"]))
            log.warning("gateway: %s version %d %s (canary success %.2f vs stable %.2f on version %d)", task,
                        verdict["candidate"], verdict["decision"].replace("_", " "), verdict["canary_success"],
                        verdict["stable_success"], verdict["stable"])  # fmt: skip
            self._persist(task)

    # -- operators ------------------------------------------------------------------------------------------
    async def rollback(self, task: str, version: int | None) -> dict[str, Any]:
        """Pin every new episode of ``task`` to ``version`` once all replicas hold it (None: release the
        pin); a running trial is dropped (its verdict could not be trusted with the fleet pinned)."""
        rollout = self._rollout(task)
        async with self._lock(task):
            if version is not None:
                await self._hold(task, tuple(sorted({*rollout.wanted(), version})))
                rollout.trial = None
            rollout.pinned = version
            self._persist(task)
        log.warning(
            "gateway: %s %s", task, f"pinned to version {version}" if version is not None else "unpinned"
        )
        return self.state(task)

    async def evaluate(
        self, task: str, version: int | None, robots: list[str] | None, episodes: int, deterministic: bool,
        exclusive: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """Start an evaluation (its version held by every replica first); returns its record. ``version``
        None: the version the fleet runs (pinned, else stable, else newest). ``exclusive``: ``robots`` exist
        for it alone; the episodes they run beyond its own are stored as evaluation episodes too."""
        rollout = self._rollout(task)
        if version is None:
            version = next(v for v in (rollout.pinned, rollout.stable, rollout.newest) if v is not None)
        chosen = frozenset(robots) if robots else None
        evaluation = Evaluation(
            task, version, episodes, deterministic, chosen, exclusive=exclusive and bool(robots)
        )
        async with self._lock(task):
            await self._hold(task, tuple(sorted({*rollout.wanted(), version})))
            rollout.evaluations[evaluation.evaluation_id] = evaluation
        summary = {**evaluation.summary(), "gateway": self.holder}
        self.registry.save_evaluation.remote(summary)
        return summary

    def state(self, task: str) -> dict[str, Any]:
        """``GET /v1/tasks/{task}/rollout``: the rollout state with the version each robot runs."""
        rollout = self._rollout(task)
        robots = {r: s.policy_version for r, s in self.robots.items() if s.task.name == task}
        return rollout.state(robots)

    def rollouts_summary(self, task: str) -> dict[str, Any] | None:
        rollout = self.rollouts.get(task)
        return None if rollout is None else rollout.summary()

    def running_evaluations(self, task: str) -> list[dict[str, Any]]:
        return [ev.summary() for ev in self._rollout(task).evaluations.values()]

    def _rollout(self, task: str) -> TaskRollout:
        rollout = self.rollouts.get(task)
        if rollout is None:
            raise Refused(404, f"task {task!r} is not served")
        return rollout
