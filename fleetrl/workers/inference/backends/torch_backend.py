"""Torch backends. ``torch`` (fp32) is the reference numerics that learners recompute log-probs with;
``torch-fast`` runs the same policy on a cheaper numeric path a deployment takes for speed: bfloat16
autocast, or int8 dynamically quantised linear layers (``fast_numerics``); its reported log-probs differ
from fp32 the way a vLLM engine's do (VLAC §3.2.1): slightly under bf16, by tens of percent under int8.

In fp32 a version's sampling forward pass runs as a TorchScript trace of the policy's ``act`` where the
family allows it (``traced_act.py``: the same kernels, the same numbers, half the time for a small MLP).

Both keep the newest few weight versions, so that in episode-boundary reload mode a robot's episode
keeps the version that started it while new episodes get the newest one, plus the versions the gateway
asks them to hold (a canary's stable version, a rolled-back one, one under evaluation: ``hold``).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.inference.backends.traced_act import TracedAct, trace_act
from fleetrl.workers.weights import to_numpy_state

Prepared = tuple[int, torch.nn.Module, TracedAct | None]  # a version built off the replica's lock


class TorchBackend:
    def __init__(
        self,
        policy: GaussianMLPConfig | FlowChunkConfig,
        observation_spec: dict[str, ArraySpec],
        action_spec: ArraySpec,
        chunk_len: int,
        threads: int = 1,
        seed: int = 0,
        keep_versions: int = 2,
        precision: str = "fp32",
    ):
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'int8', got {precision!r}")
        torch.set_num_threads(threads)
        self.device = torch.device(
            "cuda" if torch.cuda.is_available() else "cpu"
        )  # a GPU only if Ray gave one
        self.precision = precision
        self.keep_versions = keep_versions
        self._build = lambda: (  # version 0: the same initial weights in every replica of the pool
            build_policy(policy, observation_spec, action_spec, chunk_len).eval().to(self.device)
        )
        self._specs = (observation_spec, action_spec, chunk_len)
        self.policies: dict[int, torch.nn.Module] = {}
        self.traced: dict[int, TracedAct | None] = {}  # per kept version: its traced sampling act, if any
        self.held: set[int] = set()
        self.install(self._built(0, self._build()))
        self._int8: dict[int, torch.nn.Module] = {}  # int8 copies of the kept versions (precision int8)
        torch.manual_seed(seed)  # replicas of a pool share weights but not their sampling noise

    @property
    def version(self) -> int:
        """The newest version held (what an unpinned row gets)."""
        return max(self.policies)

    def _numerics(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _served(self, version: int) -> torch.nn.Module:
        if self.precision != "int8":
            return self.policies[version]
        if version not in self._int8:
            self._int8 = {v: m for v, m in self._int8.items() if v in self.policies}
            self._int8[version] = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.policies[version]).cpu(), {torch.nn.Linear}, dtype=torch.qint8
            )
        return self._int8[version]

    def _act(
        self, version: int, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        traced = None if deterministic else self.traced.get(version)
        if traced is not None and obs.keys() == traced.key_set:  # a batch with other keys runs eagerly
            actions, log_prob = traced(obs)
            return actions.float().cpu().numpy(), log_prob.float().cpu().numpy()
        if self.precision == "int8":  # int8 kernels are CPU ones
            obs = {k: v.cpu() for k, v in obs.items()}
        with self._numerics():
            actions, log_prob = self._served(version).act(obs, deterministic=deterministic)
        return actions.float().cpu().numpy(), log_prob.float().cpu().numpy()

    @torch.inference_mode()
    def infer(
        self,
        batch: dict[str, np.ndarray],
        pins: np.ndarray | None = None,
        deterministic: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Action chunks, log-probs and the version per row. ``pins[i]`` asks for a kept version (-1: newest);
        ``deterministic[i]`` for the policy's mode instead of a sample (evaluation episodes)."""
        obs = {k: torch.from_numpy(np.asarray(v)).to(self.device) for k, v in batch.items()}
        n = next(iter(obs.values())).shape[0]
        if pins is None and deterministic is None:  # every row samples from the newest: one pass
            version = self.version
            actions, log_prob = self._act(version, obs)
            return actions, log_prob, np.full(n, version, dtype=np.int64)
        versions = np.full(n, self.version, dtype=np.int64)
        if pins is not None:
            pinned = np.asarray(pins, dtype=np.int64)
            kept = np.isin(pinned, list(self.policies))
            versions[kept] = pinned[kept]
        modes = np.zeros(n, dtype=bool) if deterministic is None else np.asarray(deterministic, dtype=bool)
        keys = versions * 2 + modes  # one forward pass per (version, mode) group
        groups = np.unique(keys)
        if len(groups) == 1:  # every row alike: one forward pass
            actions, log_prob = self._act(int(groups[0]) // 2, obs, bool(groups[0] % 2))
            return actions, log_prob, versions
        actions_out, log_out = None, np.empty(n, dtype=np.float32)
        for key in groups:
            rows = np.flatnonzero(keys == key)
            a, lp = self._act(int(key) // 2, {k: t[rows] for k, t in obs.items()}, bool(key % 2))
            if actions_out is None:
                actions_out = np.empty((n, *a.shape[1:]), dtype=np.float32)
            actions_out[rows], log_out[rows] = a, lp
        return actions_out, log_out, versions

    def served_state(self) -> dict[str, np.ndarray]:
        return to_numpy_state(self.policies[self.version].state_dict())

    def load_weights(self, state_dict: dict, version: int) -> None:
        self.install(self.prepare(state_dict, version))

    def prepare(self, state_dict: dict, version: int) -> Prepared | None:
        """``version`` built and traced, without touching what is served (a replica calls this off its lock,
        so batches go on meanwhile); None when it would not be kept: held already, or older than the newest
        and not asked for."""
        policies = dict(self.policies)  # one consistent view while another thread may install
        newest = max(policies)
        if version in policies or (version < newest and version not in self.held):
            return None
        policy = copy.deepcopy(policies[newest])
        policy.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()})
        return self._built(version, policy.to(self.device))

    def install(self, prepared: Prepared | None) -> None:
        """Serve a prepared version (a no-op for None, or for a version another call installed first)."""
        if prepared is None or prepared[0] in self.policies:
            return
        version, policy, traced = prepared
        self.policies[version], self.traced[version] = policy, traced
        self._evict()

    def _built(self, version: int, policy: torch.nn.Module) -> Prepared:
        traced = trace_act(policy, *self._specs) if self.precision == "fp32" else None
        return version, policy, traced

    def hold(self, versions: dict[int, dict | None]) -> list[int]:
        """Keep serving ``versions`` (``{version: state}``; state None: already held, or version 0, the
        initial weights, rebuilt) besides the newest; the previous hold is released. Returns what is held."""
        self.held = set(versions)
        for version, state in sorted(versions.items()):
            if version in self.policies:
                continue
            if state is not None:
                self.load_weights(state, version)
            elif version == 0:
                self.install(self._built(0, self._build()))
        self._evict()
        return self.kept_versions()

    def kept_versions(self) -> list[int]:
        return sorted(self.policies)

    def _evict(self) -> None:
        """Drop the oldest versions beyond the newest ``keep_versions`` that nobody holds."""
        spare = sorted(v for v in self.policies if v not in self.held)
        for v in spare[: max(0, len(spare) - self.keep_versions)]:
            del self.policies[v], self.traced[v]
