"""Critic servers: a Ray actor that scores episodes and observation pairs with a task's reward source.

Sources are per task: ``env`` keeps what the robot reported (a simulator's reward and success), and
``progress`` is a learned pairwise progress critic with a done head (VLAC §3.1.1, trained by
``fleetrl critic train``): the reward of step t is the predicted progress from o_t to o_{t+1}. Human
labels arrive through REST (``POST /v1/episodes/{id}/label``) and are applied by the data server.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field

from fleetrl.models.progress_critic import ProgressCritic
from fleetrl.robots.episode import Episode
from fleetrl.scoring.progress import ProgressRewarder, predict_deltas, predict_done
from fleetrl.workers.metrics_server import RemoteLogHandler
from fleetrl.workers.placement import ActorResources

log = logging.getLogger(__name__)


class RewardSourceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    source: Literal["env", "progress"] = Field("env", description="Where a task's rewards come from.")
    checkpoint: str | None = Field(None, description="Progress-critic checkpoint (required for 'progress').")
    done_threshold: float = Field(0.5, gt=0, lt=1, description="Done probability that counts as done.")
    done_patience: int = Field(3, ge=1, description="Consecutive frames above the threshold for done.")


class CriticConfig(ActorResources):
    """The critic server: reward sources per task, and its Ray resources."""

    tasks: dict[str, RewardSourceConfig] = Field(
        default_factory=dict, description="Reward source per task name (tasks not listed: 'env')."
    )

    def learned(self) -> dict[str, RewardSourceConfig]:
        return {name: src for name, src in self.tasks.items() if src.source != "env"}


def load_critic(path: str) -> ProgressCritic:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable progress-critic checkpoint ({exc})") from None
    return ProgressCritic.from_checkpoint(ckpt)


class CriticServer:
    """Ray actor: ``ready``, ``score`` (a whole episode), ``progress`` / ``done`` (batched), ``stop``."""

    def __init__(self, config: CriticConfig, metrics: Any | None = None):
        if metrics is not None:
            RemoteLogHandler.install(metrics, "critic")
        torch.set_num_threads(1)
        self.cfg = config
        self.rewarders: dict[str, ProgressRewarder] = {}
        for task, src in config.learned().items():
            if src.checkpoint is None:
                raise ValueError(f"critic.tasks.{task}: source 'progress' needs a checkpoint")
            model = load_critic(src.checkpoint)
            model.task_index(task)  # the checkpoint must know this task by name
            self.rewarders[task] = ProgressRewarder(model, src.done_threshold, src.done_patience)
            log.info("critic: task %s scored by the progress critic %s", task, src.checkpoint)

    def node_id(self) -> str:
        """The Ray node this critic server runs on (where placement put it)."""
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> list[str]:
        return sorted(self.rewarders)

    def score(self, episode: Episode) -> Episode:
        """The episode with its rewards from the task's source (unchanged for 'env'); the robot's own
        reward total and the critic's done step go to ``meta``."""
        rewarder = self.rewarders.get(episode.task)
        if rewarder is None:
            return episode
        scored = rewarder.score_episode(episode)
        columns = {**episode.columns, "reward": scored["reward"].astype(np.float32)}
        done_step = scored["done_step"]
        meta = {
            **episode.meta,
            "env_total_reward": float(episode.columns["reward"].sum()),
            "critic": {"source": "progress", "done_step": None if done_step is None else int(done_step)},
        }
        return dataclasses.replace(episode, columns=columns, meta=meta)

    def progress(self, task: str, obs_i: np.ndarray, obs_j: np.ndarray) -> np.ndarray:
        """Progress delta in [-1, 1] for a batch of observation pairs [B, D] (across robots)."""
        return predict_deltas(self._model(task), obs_i, obs_j, task)

    def done(self, task: str, obs: np.ndarray) -> np.ndarray:
        """Done probability for a batch of observations [B, D]."""
        return predict_done(self._model(task), obs, task)

    def _model(self, task: str) -> ProgressCritic:
        rewarder = self.rewarders.get(task)
        if rewarder is None:
            raise KeyError(f"task {task!r} has no learned critic; its rewards come from the robot")
        return rewarder.model

    def stop(self) -> None:
        pass
