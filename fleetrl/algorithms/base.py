"""The algorithm plug-in interface and its registry.

An algorithm owns everything a learner trains *except* the policy network: its critics, target networks,
reference policies and optimizers. The learner owns the policy (so a live switch keeps the policy weights)
and the loop (sample -> ``update`` -> publish -> checkpoint). An algorithm says what it needs:

* ``data``: ``"episodes"`` (whole fresh on-policy episodes with behaviour log-probs, ``EpisodeBatch``) or
  ``"chunks"`` (chunked off-policy replay, ``ChunkBatch``);
* ``policy_families``: the policy families it can train (a switch to an algorithm that cannot train the
  task's policy is refused);
* ``config_cls``: its pydantic config (batch size, learning rates, ...);
* ``optimizers()``: the optimizers it steps, by name. The one named ``"policy"`` covers all of the policy's
  trainable parameters; a plug-in that trains the policy declares it there.

With ``learner.demo_replay`` on, the learner also calls ``imitation_step`` on demonstration batches (VLAC
eq. 6); its default steps the ``"policy"`` optimizer, so a plug-in that declares it gets demo replay for
free (one without gets an Adam of the demo step's own).

Algorithms are found by name in ``registry()``: the built-ins plus whatever third-party packages declare
in the ``fleetrl.algorithms`` entry-point group (``name = "package.module:AlgorithmClass"``).
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from fleetrl.algorithms.batch import ChunkBatch, EpisodeBatch
from fleetrl.algorithms.data_parallel import average_gradients
from fleetrl.algorithms.demo_replay import DemoReplayConfig, imitation_loss
from fleetrl.robots.protocol import ArraySpec

ENTRY_POINT_GROUP = "fleetrl.algorithms"
POLICY_OPTIMIZER = "policy"  # the key of ``Algorithm.optimizers()`` that names the policy's optimizer
BUILTINS = {
    "ppo": "fleetrl.algorithms.ppo:PPO",
    "awr": "fleetrl.algorithms.awr:AWR",
    "qam": "fleetrl.algorithms.qam:QAM",
    "bc": "fleetrl.algorithms.bc:BC",
    "residual": "fleetrl.algorithms.residual:ResidualAdaptation",
    "rlpd": "fleetrl.algorithms.rlpd:RLPD",
}


@dataclass(frozen=True)
class PolicySpec:
    """What an algorithm knows of its task: the policy's inputs and outputs and the replay's discount."""

    observation_spec: dict[str, ArraySpec]
    action_spec: ArraySpec
    chunk_len: int
    gamma: float = 0.99


@dataclass(frozen=True)
class BatchRequest:
    """``chunks``: a ``ChunkBatch`` of ``size`` chunks from replay. ``episodes``: fresh online episodes
    holding at least ``size`` steps of policy versions at most ``max_version_lag`` behind the learner's
    current one; an episode with no such step is dropped and counted, one that started on an older version
    comes whole (its older steps are the algorithm's to leave out, not importance-corrected).
    ``wait_for_fleet``: the learner takes no new batch until every inference replica serves its newest
    version, so it never runs ahead of the robots (fewer episodes go stale when weight loads are slow)."""

    kind: Literal["episodes", "chunks"]
    size: int
    max_version_lag: int | None = None
    wait_for_fleet: bool = False


class AlgorithmConfig(BaseModel):
    """Fields every algorithm has; subclasses add their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_size: int = Field(256, ge=1, description="Chunks per update (off-policy) or minibatch (PPO).")
    seed: int = Field(0, description="Seed for the algorithm's own networks and sampling.")


class Algorithm(ABC):
    """One learning rule. ``update`` is one learner step; it returns scalar metrics (losses, stats)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    data: ClassVar[Literal["episodes", "chunks"]]
    policy_families: ClassVar[frozenset[str]]

    def __init__(self, config: AlgorithmConfig, policy: nn.Module, spec: PolicySpec, device: str = "cpu"):
        self.config, self.policy, self.spec, self.device = config, policy, spec, torch.device(device)
        self._imitation_optim: torch.optim.Optimizer | None = None

    @abstractmethod
    def update(self, batch: ChunkBatch | EpisodeBatch) -> dict[str, float]:
        """One learner step on ``batch``; returns metrics such as losses (floats)."""

    def state_dict(self) -> dict[str, Any]:
        """The algorithm's own state (critics, targets, optimizers); not the policy."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (a checkpoint, or the state kept from before a switch)."""
        return None

    def published(self, version: int) -> None:
        """Called after the learner published the policy's current weights as ``version``."""
        return None

    def batch_request(self) -> BatchRequest:
        """What the learner samples for the next step."""
        return BatchRequest(self.data, self.config.batch_size)

    def ready_to_update(self, batch: ChunkBatch | EpisodeBatch) -> bool:
        """Whether ``batch`` is enough for a step (on-policy learners wait for enough fresh steps)."""
        return len(batch) > 0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers this algorithm steps, by name (``"policy"``, ``"critic"``, ...). The one named
        ``"policy"`` (``POLICY_OPTIMIZER``) must cover all of the policy's trainable parameters: the
        learner's demo-replay step (``imitation_step``) steps it too. Default: none, for a plug-in that
        trains no networks of its own; the demo step then keeps an Adam of its own."""
        return {}

    def policy_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer ``optimizers()`` declares under ``"policy"``; without one, the demo step's own Adam
        once ``imitation_step`` made it (None before)."""
        return self.optimizers().get(POLICY_OPTIMIZER, self._imitation_optim)

    def imitation_step(
        self, batch: ChunkBatch | None, family: str, cfg: DemoReplayConfig
    ) -> dict[str, float]:
        """One optimizer step of ``cfg.weight * L_demo`` on the policy, ``batch`` being demonstrations: the
        learner's demo replay (VLAC eq. 6, ``demo_replay.py``). Returns ``demo_loss`` (unweighted) and more.

        It steps the optimizer that already trains the policy (``policy_optimizer``), because VLAC adds eq. 6
        to the training of the same model: one set of Adam moments means ``weight`` weighs the demo gradient
        against the RL gradients (a separate Adam would normalise the scale away), the optimizer state is
        checkpointed and kept across switches with the algorithm's, and only the parameters the algorithm
        trains move (a residual policy's adapter, never its frozen base). Override to do otherwise."""
        optim = self.policy_optimizer()
        if optim is None:  # a plug-in without an optimizer over the policy: an Adam of its own (not saved)
            trainable = [p for p in self.policy.parameters() if p.requires_grad]
            optim = self._imitation_optim = torch.optim.Adam(trainable, lr=cfg.lr)
        params = [p for group in optim.param_groups for p in group["params"]]
        if batch is None:  # no demonstrations here this time: take part in other workers' step (idle_step)
            idle_step(optim, params, cfg.max_grad_norm)
            self.policy.zero_grad(set_to_none=True)
            return {}
        loss = imitation_loss(self.policy, family, batch, self.device)
        self.policy.zero_grad(set_to_none=True)
        grad_norm = clipped_step(cfg.weight * loss, optim, params, cfg.max_grad_norm)
        self.policy.zero_grad(set_to_none=True)
        return {"demo_loss": loss.item(), "demo_grad_norm": grad_norm, "demo_rows": float(len(batch))}


def clipped_step(
    loss: torch.Tensor, optim: torch.optim.Optimizer, params: Iterable[nn.Parameter], max_norm: float
) -> float:
    """One step of ``optim`` on ``loss`` with the global gradient norm of ``params`` clipped to
    ``max_norm``, the step every algorithm here takes; returns the norm before clipping. In a multi-worker
    learner the gradients are first averaged across the workers (``data_parallel``)."""
    params = list(params)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(params, contributes=True)
    norm = nn.utils.clip_grad_norm_(params, max_norm)
    optim.step()
    return float(norm)


def idle_step(optim: torch.optim.Optimizer, params: Iterable[nn.Parameter], max_norm: float) -> bool:
    """Where an algorithm skips a step because its batch has nothing for it (no rows to clone): in a
    multi-worker learner this worker still takes the step the others take, with their averaged gradient,
    so the weights stay identical. Returns whether a step was taken (alone: never)."""
    params = list(params)
    optim.zero_grad(set_to_none=True)
    if not params or not average_gradients(params, contributes=False):
        return False
    nn.utils.clip_grad_norm_(params, max_norm)
    optim.step()
    return True


def registry() -> dict[str, str]:
    """Algorithm name -> ``module:Class``: the built-ins, then the ``fleetrl.algorithms`` entry points."""
    names = dict(BUILTINS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        names[ep.name] = ep.value
    return names


def algorithm_class(name: str) -> type[Algorithm]:
    """Import the class registered under ``name`` (KeyError with the known names if there is none)."""
    where = registry().get(name)
    if where is None:
        raise KeyError(f"unknown algorithm {name!r}; registered: {', '.join(sorted(registry()))}")
    module, _, attr = where.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"{where} (algorithm {name!r}) is not a fleetrl.algorithms.base.Algorithm")
    return cls


def parse_config(name: str, config: dict[str, Any] | AlgorithmConfig | None) -> AlgorithmConfig:
    """Validate an algorithm's config dict; ValueError says what is wrong, field by field."""
    cls = algorithm_class(name).config_cls
    if isinstance(config, cls):
        return config
    try:
        return cls.model_validate(config or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<config>'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"algorithm {name!r} config: {problems}") from None


def incompatibility(name: str, policy_family: str) -> str | None:
    """Why algorithm ``name`` cannot train a ``policy_family`` policy, or None if it can."""
    cls = algorithm_class(name)
    if policy_family in cls.policy_families:
        return None
    return (
        f"algorithm {name!r} trains policy families {sorted(cls.policy_families)}, "
        f"but this task's policy is {policy_family!r}"
    )


def build_algorithm(
    name: str,
    config: dict[str, Any] | AlgorithmConfig | None,
    policy: nn.Module,
    spec: PolicySpec,
    policy_family: str,
    device: str = "cpu",
) -> Algorithm:
    problem = incompatibility(name, policy_family)
    if problem:
        raise ValueError(problem)
    return algorithm_class(name)(parse_config(name, config), policy, spec, device)
