"""Where Ray puts an actor and how it comes back: the resources every actor kind declares in config.

Each actor kind's config (gateway, data server, critic server, inference pool, learner, REST) inherits
``ActorResources``, so a YAML can say ``inference: {num_gpus: 1, resources: {gpu_worker: 1}}`` and the
replicas land only on nodes that offer those resources. ``ray_options`` turns the fields into the
``.options(...)`` Ray takes; with ``cpu_fallback`` an actor that asks for GPUs on a cluster without any
runs on CPU instead of waiting forever (the same config works on a laptop and on the GPU cluster).
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class ActorResources(BaseModel):
    """Resources Ray reserves for one actor of this kind, and how often Ray restarts it when it dies."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    num_cpus: float = Field(0.5, ge=0, description="CPUs Ray reserves for each actor of this kind.")
    num_gpus: float = Field(0, ge=0, description="GPUs Ray reserves for each actor of this kind.")
    memory_mb: int | None = Field(
        None, ge=1, description="Memory Ray reserves (MiB); Ray places the actor only where it fits."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources to require, e.g. {robot_gateway: 1}; the actor runs only on "
        "nodes that declare them (`ray start --resources` or the node type in cluster.yaml).",
    )
    max_restarts: int = Field(-1, ge=-1, description="Ray restarts of a dead actor (-1: unlimited).")
    cpu_fallback: bool = Field(
        True,
        description="If the cluster has no GPU at all, run on CPU instead of waiting for one (turn off on "
        "an autoscaling cluster whose GPU nodes start on demand).",
    )

    def gpus(self, what: str = "actor") -> float:
        """GPUs to ask Ray for: ``num_gpus``, or 0 under ``cpu_fallback`` when the cluster has none."""
        if self.num_gpus and self.cpu_fallback and ray.cluster_resources().get("GPU", 0) == 0:
            log.warning("%s asks for %g GPU(s) but the cluster has none: it runs on CPU", what, self.num_gpus)
            return 0
        return self.num_gpus

    def ray_options(self, what: str = "actor") -> dict[str, Any]:
        """``.options(...)`` for one actor of this kind (``what`` names it in the CPU-fallback warning)."""
        num_gpus = self.gpus(what)
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": num_gpus,
            "max_restarts": self.max_restarts,
        }
        if self.memory_mb is not None:
            options["memory"] = self.memory_mb * MIB
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


def on_this_node(soft: bool = False) -> Any:
    """A scheduling strategy that keeps an actor on the caller's node: the platform's control actors
    (registry, metrics, weight board, task manager, learner drivers) live with the driver on the head,
    next to the state directory they write, and are never moved by a worker node's failure. Hard affinity:
    with ``soft=True`` Ray placed half of a set of zero-CPU actors on another node (Ray 2.60)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=soft)
