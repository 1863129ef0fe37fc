"""A policy's sampling ``act`` as a TorchScript trace, for the torch backend's fp32 forward pass.

Why: a small MLP policy's forward pass at batch 1-2 is dozens of tensor operations on a few dozen numbers
each, and Python's per-operation overhead is most of its cost (the shipped ``reach`` policy: 100 µs a call
eager, 52 µs traced, measured in a loop; in a gateway's busy event loop both are about twice that). A trace
runs the same ATen kernels in the same order from C++, so it gives the same numbers, bit for bit: the
sampled chunk for a given generator state and its log-prob.

Only where that holds:

* the policy family declares a straight-line ``act`` (``straight_line_act``: no branch on tensor values,
  so a trace recorded on one batch is the function for every batch);
* the trace is recorded at batch 2 and checked against the eager ``act`` at batches 1 and 3 (same seed,
  ``torch.equal`` on actions and log-probs) before it is used; a mismatch or a failure to trace leaves the
  version on the eager path, with a warning;
* only the sampling path: the deterministic mode (evaluation episodes) stays eager;
* one trace per weight version, recorded when the version is loaded; statistics a policy keeps with its
  weights (the running observation norm) are that version's, which the backend never changes once loaded.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from fleetrl.robots.pending import PENDING_KEY, pending_spec
from fleetrl.robots.protocol import ArraySpec

log = logging.getLogger(__name__)
TRACE_BATCH, CHECK_BATCHES = 2, (1, 3)  # recorded at one size, checked at two others
CHECK_SEED = 12345


class _SamplingAct(nn.Module):
    """``policy.act(obs)`` with the observation entries as positional tensors (what a trace takes)."""

    def __init__(self, policy: nn.Module, keys: list[str]):
        super().__init__()
        self.policy, self.keys = policy, keys

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy.act(dict(zip(self.keys, tensors, strict=True)))


class TracedAct:
    """A traced sampling ``act``: call it with the batch's observation dict (the same keys it was traced
    with; ``keys`` says which, in order, ``key_set`` as a set to compare a batch's keys with)."""

    def __init__(self, module: torch.jit.ScriptModule, keys: list[str]):
        self.module, self.keys, self.key_set = module, keys, frozenset(keys)

    def __call__(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # The plain interpreter: no profiling runs and re-optimisation when a new batch size comes (those
        # cost milliseconds on the hot path), and the same speed at these sizes. The flag is set as
        # ``torch.jit.optimized_execution(False)`` sets it, without the context manager's ~8 µs a call.
        optimize = torch._C._get_graph_executor_optimize()
        torch._C._set_graph_executor_optimize(False)
        try:
            return self.module(*[obs[k] for k in self.keys])
        finally:
            torch._C._set_graph_executor_optimize(optimize)


def trace_act(
    policy: nn.Module, observation_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
) -> TracedAct | None:
    """``policy``'s sampling ``act`` traced and checked (module docstring), or None: the family does not
    declare a straight-line ``act``, tracing failed, or the trace's numbers differ from the eager ones."""
    if not getattr(policy, "straight_line_act", False):
        return None
    specs = dict(observation_spec)
    if getattr(policy, "pending_dim", 0):
        specs[PENDING_KEY] = pending_spec(action_spec, chunk_len)
    keys = list(specs)
    probe = _probe_batch(specs, max(TRACE_BATCH, *CHECK_BATCHES), next(policy.parameters()).device)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            module = torch.jit.trace(
                _SamplingAct(policy, keys), tuple(probe[k][:TRACE_BATCH] for k in keys), check_trace=False
            )
        traced = TracedAct(module, keys)
        mismatch = next((n for n in CHECK_BATCHES if not _same_numbers(policy, traced, probe, n)), None)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the eager path, which works
        log.warning("%s: act not traced (%s); it runs eagerly", type(policy).__name__, exc)
        return None
    if mismatch is not None:
        log.warning(
            "%s: the traced act differs from the eager one at batch %d; it runs eagerly",
            type(policy).__name__,
            mismatch,
        )
        return None
    return traced


def _probe_batch(specs: dict[str, ArraySpec], n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``n`` rows per entry: normal floats (scaled, so a normaliser and a squash see varied values) and
    uniform integers (camera pixels)."""
    rng = np.random.default_rng(0)
    out = {}
    for key, spec in specs.items():
        shape, dtype = (n, *spec.shape), spec.np_dtype
        if np.issubdtype(dtype, np.floating):
            values = 3.0 * rng.standard_normal(shape)
        else:
            info = np.iinfo(dtype)
            values = rng.integers(max(info.min, 0), min(info.max, 255), shape, endpoint=True)
        out[key] = torch.from_numpy(values.astype(dtype)).to(device)
    return out


def _same_numbers(policy: nn.Module, traced: TracedAct, probe: dict[str, Any], n: int) -> bool:
    """The eager and the traced ``act`` on the probe's first ``n`` rows, from the same generator state."""
    rows = {k: v[:n] for k, v in probe.items()}
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(CHECK_SEED)
        eager = policy.act(rows)
        torch.manual_seed(CHECK_SEED)
        fast = traced(rows)
    # exact (rtol = atol = 0); NaN where both have it (a family without log-probs reports NaN)
    return all(
        a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        for a, b in zip(eager, fast, strict=True)
    )
