"""Segments of running episodes, for on-policy learners (``LearnerConfig.segment_steps``).

PPO trains on what its current policy did. A learner that waits for whole episodes trains, on long
episodes, on rows several versions old: HalfCheetah-v5's 1,000-step episodes on 8 robots outlive about four
updates of 2,048 steps, so its rows older than ``max_version_lag`` were left out of the loss
(``partly_stale_episodes``: 122-142 per seed in benchmarks/results/learning.json before this) and the rest
trained off-policy. With segments the gateway hands the data server each running episode in pieces of at
least ``segment_steps`` rows as they arrive, as CleanRL's vectorised rollouts cut every environment after a
fixed number of steps: a piece ends where a chunk starts, so it ends with a state to bootstrap from
(``truncated``, ``final_observation`` = the observation of the row it was cut at), and the last piece
carries the episode's own end. Segments are neither durable nor part of the
replay: the whole episode is still committed and acked as before.

A chunk conditioned on an observation taken before the cut (asynchronous execution: ``obs_step`` < its
first row) needs that observation and the actions in between (its pending actions): those rows come with
the segment as *context*, with no policy version, log-prob or reward, so no learner counts them twice.
"""

from __future__ import annotations

import numpy as np

from fleetrl.robots.episode import Episode


def chunk_starts(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Rows where a policy chunk begins: a behaviour log-prob, a policy version, not a hold."""
    return np.isfinite(columns["log_prob"]) & (columns["policy_version"] >= 0) & ~columns["held"].astype(bool)


def next_cut(columns: dict[str, np.ndarray], start: int, min_rows: int) -> int | None:
    """The first row ``b >= start + min_rows`` where a chunk starts (the segment ``[start, b)`` ends there),
    or None while the rows that arrived have none."""
    starts = np.flatnonzero(chunk_starts(columns)[start + min_rows :])
    return start + min_rows + int(starts[0]) if starts.size else None


def segment(
    episode_id: str,
    task: str,
    robot_id: str,
    observations: dict[str, np.ndarray],
    actions: np.ndarray,
    columns: dict[str, np.ndarray],
    start: int,
    end: int,
    final: Episode | None = None,
) -> Episode:
    """Rows ``[start, end)`` of an episode as an ``Episode`` (see module doc): cut at ``end`` (bootstrap
    from ``observations[end]``), or, with ``final`` (the whole episode), its last piece with its end."""
    own = columns["obs_step"][start:end]
    conditioned = own[own >= 0]
    first = min(start, int(conditioned.min())) if conditioned.size else start  # context rows from here
    cols = {name: col[first:end].copy() for name, col in columns.items()}
    context = slice(0, start - first)
    cols["policy_version"][context] = -1
    cols["obs_step"][context] = -1
    cols["log_prob"][context] = np.nan
    cols["reward"][context] = 0.0
    shifted = cols["obs_step"] >= 0
    cols["obs_step"][shifted] -= first
    meta = {"segment_of": episode_id, "first_row": start, "context_rows": start - first}
    if final is not None:
        ends = {
            "outcome": final.outcome,
            "final_observation": final.final_observation,
            "terminated": final.terminated,
            "truncated": final.truncated,
        }
        meta["episode_return"] = float(final.columns["reward"].sum())
    else:
        ends = {
            "outcome": "aborted",  # no label yet: reward schemes keep their per-step rewards on its last row
            "final_observation": {k: v[end].copy() for k, v in observations.items()},
            "terminated": False,
            "truncated": True,
        }
    piece = Episode(
        episode_id=episode_id,
        task=task,
        robot_id=robot_id,
        observations={k: v[first:end] for k, v in observations.items()},
        actions=actions[first:end],
        columns=cols,
        labelled_by="gateway",
        meta=meta,
        **ends,
    )
    piece.validate()
    return piece
