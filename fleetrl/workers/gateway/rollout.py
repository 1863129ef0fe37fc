"""Which weight version a robot's episode runs, and whether it is an evaluation episode: the gateway's
rollout part (gated rollout, rollback, evaluation).

Decided when a robot starts an episode (its first observation, step 0) and kept for the whole episode:

1. an evaluation that may use this robot and still needs episodes: its version, the policy's mode instead
   of a sample if asked, and the episode is stamped ``meta['evaluation']`` (stored, never learned from);
2. a version an operator pinned (``POST /v1/tasks/{task}/rollback``);
3. in canary mode, while a trial runs: its canary robots run the candidate, the others the stable version;
   with no trial, everyone runs the stable version;
4. otherwise the newest version the replicas hold (no pin).

A trial starts when a version newer than the stable one (and than the last one rolled back) is served:
the candidate is frozen for the trial, a ``canary_fraction`` of the online robots run it, and once both
sides have ``window_episodes`` finished episodes the candidate is promoted (it becomes the stable version)
unless its success rate is below the stable side's by more than ``tolerance``; then it is rolled back and
the next trial waits for a version published after it. A learner publishing every few steps is so gated
at trial granularity: between verdicts the fleet runs versions that have passed one.

A version is only assigned once every replica holds it (``held``, confirmed by the weight board), so a
robot never silently runs another one. Everything here runs on the gateway's loop; the gateway makes the
replicas hold what ``wanted`` lists and reports it back with ``confirm_held``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from fleetrl.workers.task import RolloutConfig

NEWEST = -1  # no pin: the newest version the replica holds
MAX_EVALUATION_ONLY = 4096  # robots of finished exclusive evaluations remembered (they leave within seconds)


@dataclass(frozen=True)
class Assignment:
    """What one episode runs. ``arm``: the side of a canary trial it counts for ("" for none)."""

    version: int = NEWEST
    deterministic: bool = False
    evaluation: str | None = None
    arm: str = ""
    trial: int = 0  # the trial's candidate version (0: none)

    def meta(self) -> dict[str, Any]:
        """What the gateway stamps on the stored episode (``Episode.meta``)."""
        stamp: dict[str, Any] = {}
        if self.evaluation:
            stamp.update(evaluation=self.evaluation, deterministic=self.deterministic)
        if self.arm:
            stamp.update(canary_arm=self.arm, canary_candidate=self.trial)
        return stamp


UNASSIGNED = Assignment()


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (sound at 0 %, 100 % and small n, unlike p +- z*se)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Evaluation:
    """Evaluation episodes of one version on chosen robots (None: any robot of the task)."""

    task: str
    version: int
    episodes: int
    deterministic: bool = True
    robots: frozenset[str] | None = None
    exclusive: bool = False  # its robots exist for it alone (sim robots it started): they never feed learning
    evaluation_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: float = field(default_factory=time.time)
    started: int = 0  # episodes handed out (an aborted one is handed out again)
    results: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    finished: float | None = None

    @property
    def extra_tag(self) -> str:
        """What an exclusive evaluation's robots stamp on the episodes they run once it has handed out all
        of its own: stored as evaluation episodes (never learned from), counted nowhere (counting them
        would favour the episodes that end first)."""
        return f"{self.evaluation_id}-extra"

    def keeps(self, robot_id: str) -> bool:
        """An exclusive evaluation keeps its robots off learning data until it is done."""
        return (
            self.exclusive
            and self.status == "running"
            and self.robots is not None
            and robot_id in self.robots
        )

    def wants(self, robot_id: str) -> bool:
        return (
            self.status == "running"
            and self.started < self.episodes
            and (self.robots is None or robot_id in self.robots)
        )

    def record(self, robot_id: str, outcome: str, total_reward: float) -> bool:
        """An evaluation episode ended; True once the evaluation is complete. An aborted episode (the robot
        left, an operator took over) says nothing about the policy: another one is run instead."""
        if outcome == "aborted":
            self.started -= 1
            return False
        self.results.append({"robot_id": robot_id, "outcome": outcome, "return": float(total_reward)})
        if len(self.results) >= self.episodes:
            self.status, self.finished = "done", time.time()
            return True
        return False

    def summary(self) -> dict[str, Any]:
        """The record ``GET /v1/tasks/{task}/evaluations`` shows: success rate with its Wilson 95 %
        interval, mean return with a normal 95 % interval, per-robot counts."""
        n = len(self.results)
        wins = sum(r["outcome"] == "success" for r in self.results)
        returns = [r["return"] for r in self.results]
        mean = sum(returns) / n if n else None
        half = None
        if n > 1:
            var = sum((x - mean) ** 2 for x in returns) / (n - 1)
            half = 1.96 * math.sqrt(var / n)
        per_robot: dict[str, dict[str, int]] = {}
        for r in self.results:
            row = per_robot.setdefault(r["robot_id"], {"episodes": 0, "successes": 0})
            row["episodes"] += 1
            row["successes"] += r["outcome"] == "success"
        lo, hi = wilson_interval(wins, n)
        return {
            "evaluation_id": self.evaluation_id,
            "task": self.task,
            "version": self.version,
            "deterministic": self.deterministic,
            "robots": sorted(self.robots) if self.robots is not None else None,
            "episodes": self.episodes,
            "episodes_done": n,
            "status": self.status,
            "success_rate": wins / n if n else None,
            "success_ci95": [lo, hi] if n else None,
            "return_mean": mean,
            "return_ci95": [mean - half, mean + half] if half is not None else None,
            "outcomes": {
                o: sum(r["outcome"] == o for r in self.results) for o in ("success", "failure", "timeout")
            },
            "per_robot": per_robot,
            "created": self.created,
            "finished": self.finished,
        }


@dataclass
class Trial:
    """A canary trial: ``candidate`` on ``canary_robots``, ``stable`` on the rest; [successes, episodes]."""

    candidate: int
    stable: int
    canary_robots: frozenset[str]
    started: float = field(default_factory=time.time)
    counts: dict[str, list[int]] = field(default_factory=lambda: {"canary": [0, 0], "stable": [0, 0]})

    def rates(self) -> dict[str, float | None]:
        return {arm: (s / n if n else None) for arm, (s, n) in self.counts.items()}


class TaskRollout:
    """One task's rollout state; see the module docstring for the rules."""

    def __init__(self, task: str, cfg: RolloutConfig):
        self.task, self.cfg = task, cfg
        self.newest = 0  # the newest version a replica reported serving
        self.stable: int | None = None  # canary mode: the version that passed its trial
        self.pinned: int | None = None  # an operator's rollback
        self.trial: Trial | None = None
        self.rejected = -1  # the last candidate rolled back
        self.held: tuple[int, ...] = ()  # versions every replica holds (confirmed by the weight board)
        self.verdicts: deque[dict[str, Any]] = deque(maxlen=50)
        self.evaluations: dict[str, Evaluation] = {}  # running ones (finished ones go to the registry)
        # robots of finished exclusive evaluations, until they leave: their episodes stay evaluation extras
        self.evaluation_only: OrderedDict[str, str] = OrderedDict()

    # -- what robots run --------------------------------------------------------------------------
    @property
    def pins_rows(self) -> bool:
        """Whether dispatch must send per-row versions (False: every row takes the newest, the fast path)."""
        return self.cfg.mode == "canary" or self.pinned is not None or bool(self.evaluations)

    def assign(self, robot_id: str, step: int) -> Assignment:
        """The version (and mode) of the episode a robot starts now; ``step`` > 0 means it is already under
        way (the robot reconnected, or the gateway restarted): it keeps running unpinned and counts nowhere."""
        if step > 0:
            return UNASSIGNED
        if robot_id in self.evaluation_only:  # the newest version, sampled: no pinned rows needed for it
            return Assignment(evaluation=self.evaluation_only[robot_id])
        for ev in self.evaluations.values():
            if ev.wants(robot_id) and ev.version in self.held:
                ev.started += 1
                return Assignment(ev.version, ev.deterministic, ev.evaluation_id)
            if ev.keeps(robot_id) and ev.version in self.held:
                return Assignment(ev.version, ev.deterministic, ev.extra_tag)
        if self.pinned is not None:
            return Assignment(self.pinned) if self.pinned in self.held else UNASSIGNED
        if self.cfg.mode != "canary" or self.stable is None or self.stable not in self.held:
            return UNASSIGNED
        trial = self.trial
        if trial is None:
            return Assignment(self.stable)
        arm = "canary" if robot_id in trial.canary_robots else "stable"
        return Assignment(
            trial.candidate if arm == "canary" else trial.stable, arm=arm, trial=trial.candidate
        )

    # -- what happened --------------------------------------------------------------------------------
    def saw_version(self, version: int) -> None:
        """A replica reported serving ``version`` as its newest."""
        self.newest = max(self.newest, version)
        if self.cfg.mode == "canary" and self.stable is None:
            self.stable = version  # what the fleet ran when the gateway started: the first stable version

    def ended(self, robot_id: str, a: Assignment, outcome: str, total_reward: float) -> dict[str, Any] | None:
        """An episode ended; returns an event when it completes an evaluation (``{"evaluation": summary}``)
        or brings a trial's verdict (``{"verdict": ...}``), else None."""
        if a.evaluation:
            ev = self.evaluations.get(a.evaluation)
            if ev is not None and ev.record(robot_id, outcome, total_reward):
                del self.evaluations[a.evaluation]
                if ev.exclusive and ev.robots:
                    self.evaluation_only.update(dict.fromkeys(ev.robots, ev.extra_tag))
                    while len(self.evaluation_only) > MAX_EVALUATION_ONLY:
                        self.evaluation_only.popitem(last=False)
                return {"evaluation": ev.summary()}
            return None
        trial = self.trial
        if not a.arm or trial is None or a.trial != trial.candidate or outcome == "aborted":
            return None
        side = trial.counts[a.arm]
        side[0] += outcome == "success"
        side[1] += 1
        if min(n for _, n in trial.counts.values()) < self.cfg.window_episodes:
            return None
        return {"verdict": self._verdict(trial)}

    def _verdict(self, trial: Trial) -> dict[str, Any]:
        rates = trial.rates()
        promote = rates["canary"] >= rates["stable"] - self.cfg.tolerance
        verdict = {
            "candidate": trial.candidate,
            "stable": trial.stable,
            "decision": "promoted" if promote else "rolled_back",
            "canary_success": rates["canary"],
            "stable_success": rates["stable"],
            "episodes": {arm: n for arm, (_, n) in trial.counts.items()},
            "canary_robots": sorted(trial.canary_robots),
            "started": trial.started,
            "decided": time.time(),
        }
        if promote:
            self.stable = trial.candidate
        else:
            self.rejected = trial.candidate
        self.trial = None
        self.verdicts.append(verdict)
        return verdict

    # -- trials, holds, pins ----------------------------------------------------------------------------
    def proposed_trial(self, online: list[str]) -> tuple[int, int] | None:
        """``(stable, candidate)`` if a trial should start now: canary mode, no trial or pin, a version newer
        than the stable one and the last rejected one, and at least two online robots (one per side)."""
        if self.cfg.mode != "canary" or self.trial is not None or self.pinned is not None:
            return None
        if self.stable is None or self.newest <= max(self.stable, self.rejected) or len(online) < 2:
            return None
        return self.stable, self.newest

    def start_trial(self, stable: int, candidate: int, online: list[str]) -> Trial:
        """Start the trial ``proposed_trial`` gave once the replicas hold both versions; the canary robots
        are the first ``canary_fraction`` of the online ones in a per-candidate shuffled order."""
        k = min(len(online) - 1, max(1, round(self.cfg.canary_fraction * len(online))))
        order = sorted(online, key=lambda r: uuid.uuid5(uuid.NAMESPACE_OID, f"{r}/{candidate}").hex)
        self.trial = Trial(candidate, stable, frozenset(order[:k]))
        return self.trial

    def wanted(self, proposal: tuple[int, int] | None = None) -> tuple[int, ...]:
        """The versions replicas must hold for what runs now (and for ``proposal``, a trial about to start)."""
        want = {ev.version for ev in self.evaluations.values()}
        if self.pinned is not None:
            want.add(self.pinned)
        if self.stable is not None and self.cfg.mode == "canary":
            want.add(self.stable)
        if self.trial is not None:
            want.update((self.trial.stable, self.trial.candidate))
        if proposal is not None:
            want.update(proposal)
        return tuple(sorted(want))

    def summary(self) -> dict[str, Any]:
        """One line's worth for ``GET /v1/tasks/{task}``, the console and the live view: mode, stable and
        pinned versions, the running trial with its counts, the last verdict, evaluations running."""
        trial = self.trial
        return {
            "mode": self.cfg.mode,
            "stable": self.stable,
            "pinned": self.pinned,
            "trial": None
            if trial is None
            else {
                "candidate": trial.candidate,
                "stable": trial.stable,
                "canary_robots": sorted(trial.canary_robots),
                "episodes": {arm: n for arm, (_, n) in trial.counts.items()},
                "counts": {arm: list(c) for arm, c in trial.counts.items()},
                "success": trial.rates(),
                "window_episodes": self.cfg.window_episodes,
                "started": trial.started,
            },
            "last_verdict": self.verdicts[-1] if self.verdicts else None,
            "evaluations_running": len(self.evaluations),
        }

    def state(self, robots: dict[str, int | None]) -> dict[str, Any]:
        """``GET /v1/tasks/{task}/rollout``: the summary with the newest, held and rejected versions, every
        recent verdict, the running evaluations and the version each robot runs (``robots``: robot id ->
        version of the last chunk sent to it)."""
        return {
            **self.summary(),
            "task": self.task,
            "newest": self.newest,
            "held": list(self.held),
            "rejected": self.rejected if self.rejected >= 0 else None,
            "verdicts": list(self.verdicts),
            "evaluations": [ev.summary() for ev in self.evaluations.values()],
            "robots": robots,
            "config": self.cfg.model_dump(),
        }
