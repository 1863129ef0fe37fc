"""The algorithms a learner trains its one policy with: the current one, and every one it ran before.

An algorithm switch keeps the policy and builds the new algorithm around it; one the learner ran before
gets its critics, targets and optimizers back, so switching back resumes it. After a restart the states
saved in the checkpoint wait here until their algorithm is activated again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fleetrl.algorithms.base import Algorithm, PolicySpec, build_algorithm, parse_config


class AlgorithmSet:
    """``activate(name, config, version)`` makes ``name`` the ``current`` algorithm; the others are kept."""

    def __init__(self, policy: nn.Module, spec: PolicySpec, family: str, device: torch.device):
        self.policy, self.spec, self.family, self.device = policy, spec, family, device
        self.kept: dict[str, Algorithm] = {}
        self._saved: dict[str, Any] = {}  # algorithm states from a checkpoint, until activated
        self._current: Algorithm | None = None

    @property
    def current(self) -> Algorithm:
        if self._current is None:
            raise RuntimeError("no algorithm activated yet")
        return self._current

    def activate(self, name: str, config: dict[str, Any], version: int) -> Algorithm:
        """Make ``name`` the current algorithm, told the policy is at ``version``. One it ran before (or
        one saved in the restored checkpoint) keeps its critics and optimizers."""
        parsed = parse_config(name, config)
        previous = self.kept.get(name)
        saved = self._saved.pop(name, None)
        algorithm = build_algorithm(name, parsed, self.policy, self.spec, self.family, str(self.device))
        if previous is not None:
            algorithm.load_state_dict(previous.state_dict())
        elif saved is not None:
            algorithm.load_state_dict(saved["state"])
        algorithm.published(version)
        self.kept[name] = algorithm
        self._current = algorithm
        return algorithm

    def published(self, version: int) -> None:
        """Tell every algorithm the fleet got the policy as ``version`` (a kept one may be switched back to)."""
        for algorithm in self.kept.values():
            algorithm.published(version)

    def names(self) -> list[str]:
        return sorted(self.kept)

    def checkpoint_entries(self) -> dict[str, Any]:
        """The checkpoint's ``algorithm``, ``algorithm_config`` and ``algorithms`` (each one's config and
        state) entries."""
        return {
            "algorithm": self.current.name,
            "algorithm_config": self.current.config.model_dump(),
            "algorithms": {
                name: {"config": a.config.model_dump(), "state": a.state_dict()}
                for name, a in self.kept.items()
            },
        }

    def load_states(self, algorithms: dict[str, Any]) -> None:
        """Load the states of ``algorithms`` (a checkpoint's entry) now into those kept; keep the others'
        for when they are activated."""
        for name, entry in algorithms.items():
            if name in self.kept:
                self.kept[name].load_state_dict(entry["state"])
            else:
                self._saved[name] = entry

    def restore(self, saved_algorithms: dict[str, Any]) -> None:
        """Keep a checkpoint's ``algorithms`` entry; each state is loaded when its algorithm is activated."""
        self._saved = dict(saved_algorithms)
