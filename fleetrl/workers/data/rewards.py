"""Reward assignment from outcome labels, applied when episodes enter the replay (pure numpy).

Real robots rarely have a dense reward; the label at the end of the episode is what we trust. Schemes:

* ``env``: keep the stored per-step rewards (simulators, or a critic server already scored the steps).
* ``sparse`` (LWD §III): 1 on the last step of a successful episode, 0 everywhere else.
* ``aloe`` (ALOE eq. 14): −1 per step; on the last step 0 for a success and −C_fail for a failure.
  ALOE counts running past the episode-length limit as a failure, so ``timeout`` gets −C_fail too;
  ``aborted`` carries no task label (operator stop, disconnect) and keeps −1 on its last step.
  ALOE sets C_fail to the task's average episode length.

The label schemes also end the episode for learning where the label says the task is over: a success
(``sparse`` and ``aloe``: the goal ends the task, whether the robot or a human later labelled it) and, under
``aloe``, a failure or timeout, whose −C_fail is the value of the failure: the last chunk must not bootstrap
past it (ALOE eq. 14's episodes terminate on failure; a timeout that bootstrapped from its final state would
add the value of a continuation the label says did not succeed). ``aborted`` and ``env`` keep
``terminated``/``truncated`` as the episode says.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fleetrl.robots.episode import Episode

REWARD_SCHEMES = ("env", "sparse", "aloe")
FAILURE_OUTCOMES = ("failure", "timeout")
TERMINAL_LABELS = {"sparse": ("success",), "aloe": ("success", *FAILURE_OUTCOMES)}  # outcomes that end it


def assign_rewards(episode: Episode, scheme: str = "env", c_fail: float = 100.0) -> np.ndarray:
    """Per-step rewards [T] (float32) of ``episode`` under ``scheme``."""
    n = len(episode)
    if scheme == "env":
        return episode.columns["reward"].astype(np.float32, copy=True)
    if scheme == "sparse":
        r = np.zeros(n, np.float32)
        if n and episode.outcome == "success":
            r[-1] = 1.0
        return r
    if scheme == "aloe":
        r = np.full(n, -1.0, np.float32)
        if n and episode.outcome == "success":
            r[-1] = 0.0
        elif n and episode.outcome in FAILURE_OUTCOMES:
            r[-1] = -float(c_fail)
        return r
    raise ValueError(f"unknown reward scheme {scheme!r}; choose one of {REWARD_SCHEMES}")


def with_rewards(episode: Episode, scheme: str = "env", c_fail: float = 100.0) -> Episode:
    """A shallow copy of ``episode`` whose reward column and terminal flag follow ``scheme`` (the input is
    not changed)."""
    if scheme == "env":
        return episode
    columns = dict(episode.columns)
    columns["reward"] = assign_rewards(episode, scheme, c_fail)
    if len(episode) and episode.outcome in TERMINAL_LABELS[scheme]:
        return dataclasses.replace(episode, columns=columns, terminated=True, truncated=False)
    return dataclasses.replace(episode, columns=columns)
