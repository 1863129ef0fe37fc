"""Whole episodes -> PPO decisions, the rows PPO's maths runs over.

A PPO *decision* is one action chunk. In an ``Episode`` it starts at a row with a finite ``log_prob`` and
``policy_version >= 0`` and spans the following rows with the same (``policy_version``, ``obs_step``) and
no ``log_prob`` of their own, at most ``chunk_len`` executed rows. Its state is
``observations[obs_step]`` (with asynchronous execution that observation may predate the chunk's first
row; the robot's actions in between are the chunk's *pending actions*, ``fleetrl.robots.pending``, under
``PENDING_KEY`` in ``obs`` and ``next_obs``), its action the executed rows (a chunk cut short by the
episode's end or an operator gets ``mask = 0`` on its unexecuted tail, padded by repeating its last
executed action).

Held rows (``held``: the robot's ``hold()`` ran because no chunk was ready, or the link was lost) are
environment dynamics, not policy actions: they never enter a decision's actions or log-prob, but their
time and rewards belong to the decision that was executing before them. A decision's *span* is its
executed rows plus the held rows right after them (and, where the link was lost mid-chunk, the held rows
inside it, after which the same chunk resumes). Its reward is ``sum_k gamma^k r_{t+k}`` over the ``h``
rows of its span (held ones included), and its discount to the next decision is ``gamma^h``. GAE runs
over decisions with that per-decision discount and one ``lambda`` per decision.

Chains: a decision whose span ends where the next decision starts bootstraps from the next decision's
state and GAE flows through it (holds between two chunks do not break the chain). Rows that are neither
decisions nor holds (operator interventions, the resumed tail of a chunk an operator interrupted) *break
the chain*: their rewards are not credited to the policy, and the decision before them bootstraps from
``V(observations[t + h])`` like a time limit. At the end of an episode a ``terminated`` one has no
bootstrap; any other bootstraps from ``V(final_observation)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.robots.episode import Episode
from fleetrl.robots.pending import PENDING_KEY, encode_pending, episode_pending


@dataclass
class Decisions:
    """Decision tensors, episodes in order and decisions in time order within each (see module doc)."""

    obs: dict[str, torch.Tensor]  # key -> [N, *shape]: observations[obs_step], and PENDING_KEY (see below)
    actions: torch.Tensor  # [N, H, *action_shape], padded by repeating the last executed action
    mask: torch.Tensor  # [N, H] bool: executed
    reward: torch.Tensor  # [N] sum_{k<h} gamma^k r_{t+k}
    discount: torch.Tensor  # [N] gamma^h
    next_obs: dict[str, torch.Tensor]  # key -> [N, *shape]: the bootstrap state
    done: torch.Tensor  # [N] bool: the episode terminated after this decision (no bootstrap)
    chain_end: torch.Tensor  # [N] bool: the next decision does not follow this one directly
    reported_logp: torch.Tensor  # [N] the inference server's log-prob of the chunk
    version: torch.Tensor  # [N] int64 policy version that produced the chunk

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def select(self, idx: torch.Tensor) -> Decisions:
        def pick(x):
            return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]

        return Decisions(**{f: pick(getattr(self, f)) for f in self.__dataclass_fields__})


def decision_spans(ep: Episode, chunk_len: int) -> list[tuple[list[int], int]]:
    """Each decision of ``ep`` as (its executed rows, the end of its span): the span is
    ``[rows[0], end)``, the executed rows plus the held rows inside and right after them."""
    cols, n = ep.columns, len(ep)
    version, obs_step, logp = cols["policy_version"], cols["obs_step"], cols["log_prob"]
    held = cols["held"] if "held" in cols else np.zeros(n, dtype=bool)
    t, spans = 0, []
    while t < n:
        if held[t] or version[t] < 0 or not np.isfinite(logp[t]):
            t += 1
            continue
        rows, end = [t], t + 1
        while len(rows) < chunk_len:
            j = end
            while j < n and held[j]:
                j += 1
            if not (
                j < n and version[j] == version[t] and obs_step[j] == obs_step[t] and not np.isfinite(logp[j])
            ):
                break
            rows.append(j)
            end = j + 1
        while end < n and held[end]:
            end += 1
        spans.append((rows, end))
        t = end
    return spans


def _episode_decisions(ep: Episode, chunk_len: int, gamma: float, out: dict[str, list]) -> None:
    n, reward, size = len(ep), ep.columns["reward"], int(np.prod(ep.actions.shape[1:]))
    obs_step, logp, version = ep.columns["obs_step"], ep.columns["log_prob"], ep.columns["policy_version"]
    spans = decision_spans(ep, chunk_len)
    for i, (rows, end) in enumerate(spans):
        t, h = rows[0], end - rows[0]
        nxt = spans[i + 1][0][0] if i + 1 < len(spans) else None
        at_end, chained = end == n, nxt == end
        out["obs"].append((ep.observations, int(obs_step[t])))
        out["pending"].append(
            encode_pending(episode_pending(ep, int(obs_step[t]), t, chunk_len), chunk_len, size)
        )
        if chained:
            out["next_obs"].append((ep.observations, int(obs_step[end])))
        elif at_end:
            out["next_obs"].append((ep.final_observation, None))
        else:
            out["next_obs"].append((ep.observations, end))
        # only a chained bootstrap state is a chunk request with pending actions; the others have none
        nxt_pending = episode_pending(ep, int(obs_step[end]), end, chunk_len) if chained else None
        out["next_pending"].append(encode_pending(nxt_pending, chunk_len, size))
        executed = ep.actions[rows]
        pad = np.concatenate([executed, np.repeat(executed[-1:], chunk_len - len(rows), 0)])
        out["actions"].append(pad)
        out["mask"].append(np.arange(chunk_len) < len(rows))
        out["reward"].append(float(np.sum(reward[t:end] * gamma ** np.arange(h))))
        out["discount"].append(gamma**h)
        out["done"].append(at_end and ep.terminated)
        out["chain_end"].append(not chained)
        out["reported_logp"].append(float(logp[t]))
        out["version"].append(int(version[t]))


def episode_decisions(
    episodes: EpisodeBatch | list[Episode], chunk_len: int, gamma: float, device: torch.device | str = "cpu"
) -> Decisions:
    """Turn whole episodes into PPO decisions (one per executed policy chunk; see module doc)."""
    episodes = episodes.episodes if isinstance(episodes, EpisodeBatch) else episodes
    rows: dict[str, list] = {k: [] for k in (*Decisions.__dataclass_fields__, "pending", "next_pending")}
    for ep in episodes:
        _episode_decisions(ep, chunk_len, gamma, rows)
    first = episodes[0] if episodes else None
    obs_shapes = {k: v.shape[1:] for k, v in first.observations.items()} if first else {}
    act_shape = first.actions.shape[1:] if first else ()

    def stack(items: list, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        arr = np.stack(items) if items else np.zeros((0, *shape))
        return torch.as_tensor(arr, dtype=dtype, device=device)

    def gather(refs: list) -> dict[str, torch.Tensor]:
        return {
            k: stack([src[k] if i is None else src[k][i] for src, i in refs], shape, torch.float32)
            for k, shape in obs_shapes.items()
        }

    def column(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(rows[name]), dtype=dtype, device=device)

    size = int(np.prod(act_shape))
    pending_shape = (chunk_len, size + 1)
    return Decisions(
        obs={**gather(rows["obs"]), PENDING_KEY: stack(rows["pending"], pending_shape, torch.float32)},
        actions=stack(rows["actions"], (chunk_len, *act_shape), torch.float32),
        mask=stack(rows["mask"], (chunk_len,), torch.bool),
        reward=column("reward", torch.float32),
        discount=column("discount", torch.float32),
        next_obs={
            **gather(rows["next_obs"]),
            PENDING_KEY: stack(rows["next_pending"], pending_shape, torch.float32),
        },
        done=column("done", torch.bool),
        chain_end=column("chain_end", torch.bool),
        reported_logp=column("reported_logp", torch.float32),
        version=column("version", torch.int64),
    )
