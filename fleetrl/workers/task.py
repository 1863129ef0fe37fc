"""A task: what its robots observe and do, how long an action chunk is, and the pool that serves it."""

from __future__ import annotations

import logging
import math
import re
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetrl.algorithms.demo_replay_config import DemoReplayConfig
from fleetrl.models.configs import GaussianMLPConfig, PolicyConfig, action_spec_problem
from fleetrl.robots.protocol import ArraySpec, specs_from_dict
from fleetrl.robots.protocol.images import image_spec_problem, is_camera, row_bytes_bound
from fleetrl.workers.placement import ActorResources

log = logging.getLogger(__name__)

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_ARRAY_ELEMENTS = 2**24  # one observation or action entry (four 1024x1024 RGB cameras fit)


class ArraySpecConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    shape: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="Array shape, e.g. [10]; [] is a scalar."
    )
    dtype: Literal[
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "bool",
    ] = Field("float32", description="Array dtype.")
    low: float | None = Field(None, description="Lower bound (actions are clipped to it on the robot).")
    high: float | None = Field(None, description="Upper bound (actions are clipped to it on the robot).")
    encoding: Literal["raw", "jpeg", "png"] = Field(
        "raw", description="How a camera frame (uint8 [H, W] or [H, W, C], C 1 or 3) travels from the robot: "
        "raw, or compressed by the robot SDK as JPEG (lossy, ~10-30x smaller) or PNG (lossless).",
    )  # fmt: skip
    quality: int = Field(90, ge=1, le=100, description="JPEG quality of a jpeg-encoded camera frame.")

    @field_validator("shape")
    @classmethod
    def _not_too_large(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if math.prod(v) > MAX_ARRAY_ELEMENTS:
            raise ValueError(f"{math.prod(v):,} elements is more than the {MAX_ARRAY_ELEMENTS:,} allowed")
        return v

    @model_validator(mode="after")
    def _ordered_bounds(self) -> ArraySpecConfig:
        if any(b is not None and math.isnan(b) for b in (self.low, self.high)):
            raise ValueError("low and high must be numbers, not NaN")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        problem = image_spec_problem(tuple(self.shape), self.dtype, self.encoding, self.quality)
        if problem:
            raise ValueError(problem)
        return self

    def to_spec(self) -> ArraySpec:
        return ArraySpec(tuple(self.shape), self.dtype, self.low, self.high, self.encoding, self.quality)


class InferencePoolConfig(ActorResources):
    """The replicas that serve one task's policy, and the Ray resources of each replica."""

    replicas: int = Field(2, ge=1, le=256, description="Number of inference replicas (Ray actors).")
    max_batch: int = Field(32, ge=1, le=4096, description="Most observations one forward pass takes.")
    dispatch_interval_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Least time between two batches of this pool while observations keep coming (0: "
        "an observation that finds an idle replica goes at once). Under load, what arrives meanwhile goes "
        "in one batch, so replicas make fewer, larger forward passes; an observation waits at most this "
        "long for it, and none waits when the pool has been quiet that long.",
    )
    backend: Literal["torch", "torch-fast", "vllm"] = Field(
        "torch",
        description="Inference backend: 'torch' (fp32), 'torch-fast' (bf16 autocast: faster, log-probs "
        "differ from the learner's fp32), 'vllm' (token_lm policies on a GPU; needs the vllm extra).",
    )
    fast_numerics: Literal["bf16", "int8"] = Field(
        "bf16",
        description="torch-fast's numeric path: bfloat16 autocast, or int8 dynamically quantised linear layers.",
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per replica.")
    transport: Literal["zmq", "ray", "inline"] = Field(
        "zmq",
        description="How the gateway sends batches to replicas: a direct ZeroMQ channel per replica ('zmq': "
        "tens of microseconds a batch; needs a free TCP port on each replica's node reachable from the "
        "gateway's) or one Ray actor call per batch ('ray': only Ray's ports; several times the CPU a batch). "
        "'inline': no replica actors; each gateway runs the policy in its own process, on its loop (for "
        "small CPU policies, where the hop to a replica costs more than the forward pass; 'replicas' and "
        "the replicas' resources are then unused).",
    )
    batch_timeout_s: float = Field(
        1.0,
        gt=0,
        description="A replica that has not answered a batch this long is taken out of the pool: the batch "
        "goes to another replica and the replica returns once it answers ready() (a lost node is noticed "
        "in this time, not in Ray's node health-check time).",
    )
    spread: bool = Field(
        True,
        description="Spread the replicas over nodes (Ray's SPREAD strategy), so one node lost is not all.",
    )
    reload: Literal["batch", "episode"] = Field(
        "batch",
        description="When replicas switch to newly published weights: at the next batch ('batch'), or for "
        "each robot at its next episode (an episode keeps the version that started it).",
    )

    @model_validator(mode="after")
    def _inline_on_cpu(self) -> InferencePoolConfig:
        if self.transport == "inline" and (self.backend == "vllm" or self.num_gpus > 0):
            raise ValueError(
                "transport 'inline' runs the policy on the gateway's CPU: a vllm backend or num_gpus needs "
                "replicas (transport 'zmq')"
            )
        return self


class WandbConfig(BaseModel):
    """Weights & Biases logging of the learner's scalars (the TensorBoard ones), one run per task and
    learner start; needs the ``wandb`` extra. ``mode: offline`` writes the run under the state folder for a
    later ``wandb sync`` (robot networks are often offline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    project: str = Field(min_length=1, description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user; None: your default).")
    mode: Literal["online", "offline"] = Field("online", description="Log live, or to local files.")
    group: str | None = Field(None, description="W&B run group (e.g. an experiment name).")


class LearnerConfig(ActorResources):
    """The task's learner: its algorithm and the loop around it (runs inside Ray Train). The resources are
    the Ray Train worker's (where the updates run); ``num_gpus`` > 0 trains on a GPU."""

    algorithm: str = Field(
        "ppo", description="Algorithm name (built-ins: ppo, awr, qam, bc; or an entry point)."
    )
    config: dict[str, Any] = Field(default_factory=dict, description="The algorithm's own config.")
    offline_steps: int = Field(
        0, ge=0, description="First learner steps sample only offline data (pretraining on demos)."
    )
    publish_every: int = Field(10, ge=1, description="Publish weights every N learner steps.")
    min_publish_interval_s: float = Field(
        0.25,
        ge=0,
        description="Off-policy learners publish at most this often (a version due sooner waits, not skipped): "
        "a fast learner (BC at 150 updates/s) would otherwise send the fleet 15 versions a second, and the "
        "replicas loading them slow the learner down. On-policy learners (PPO) publish every publish_every "
        "updates regardless: their next data must come from the new weights.",
    )
    segment_steps: int = Field(
        0,
        ge=0,
        description="On-policy learners (PPO) train on pieces of running episodes of at least this many rows, "
        "cut where a chunk starts and bootstrapped there, instead of waiting for whole episodes (0: whole "
        "episodes). Set it where episodes outlive updates: about steps_per_update / robots.",
    )
    prefetch_batches: int = Field(
        32,
        ge=1,
        le=64,
        description="At most this many replay batches per data-server call (off-policy algorithms); a call "
        "asks for about 0.1 s of the learner's updates, so a slow learner gets one batch per call.",
    )
    checkpoint_every: int = Field(200, ge=1, description="Checkpoint every M learner steps.")
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept on disk.")
    report_every_s: float = Field(1.0, gt=0, description="Seconds between status/TensorBoard reports.")
    num_cpus: float = Field(
        1.0, gt=0, description="CPUs Ray reserves for the Ray Train worker (Ray Train needs > 0)."
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads in the learner.")
    num_workers: int = Field(
        1,
        ge=1,
        description="Ray Train workers of the learner (data parallel, as DDP: each samples its own batches, "
        "gradients are averaged across them, the first one publishes and checkpoints); each asks for "
        "num_cpus / num_gpus. The effective batch is num_workers x the algorithm's batch_size. Replay "
        "(off-policy) algorithms only: PPO trains on one batch of fresh episodes.",
    )
    max_failures: int = Field(3, ge=-1, description="Ray Train restarts of a failed learner (-1: unlimited).")
    max_updates: int | None = Field(
        None, ge=1, description="Stop after this many learner steps (None: run on)."
    )
    max_updates_per_s: float | None = Field(
        None,
        gt=0,
        description="Cap on learner steps per second (None: as fast as it can), e.g. on a shared machine.",
    )
    wandb: WandbConfig | None = Field(
        None, description="Also log the learner's scalars to Weights & Biases (None: TensorBoard only)."
    )
    demo_replay: DemoReplayConfig = Field(
        default_factory=DemoReplayConfig,
        description="VLAC eq. 6: an imitation (NLL / flow-matching) step on the task's demonstrations "
        "(offline partition) every N updates, for any algorithm; off unless weight > 0.",
    )

    @model_validator(mode="after")
    def _algorithm_known(self) -> LearnerConfig:
        from fleetrl.algorithms.base import parse_config

        try:
            parse_config(self.algorithm, self.config)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        problem = self.workers_problem(self.algorithm)
        if problem:
            raise ValueError(problem)
        return self

    def workers_problem(self, algorithm: str) -> str | None:
        """Why ``algorithm`` cannot run on this learner's ``num_workers``, or None."""
        from fleetrl.algorithms.base import algorithm_class

        if self.num_workers > 1 and algorithm_class(algorithm).data != "chunks":
            return (
                f"algorithm {algorithm!r} trains on fresh episodes, which a multi-worker learner does not split "
                f"between its workers: use num_workers 1 (got {self.num_workers}) or a replay algorithm"
            )
        return None


class ReturnAndExploreConfig(BaseModel):
    """VLAC §3.2.3 return-and-explore: how often a robot restarts where the task's episodes fail."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    failure_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Chance that a robot's next episode starts from a recorded failure state (sampled by "
        "the data server) instead of its usual reset; 0 turns it off.",
    )


class RolloutConfig(BaseModel):
    """How a task's newly published weights reach its robots: all at once (``follow``), or first to a
    canary share of the robots, promoted to all only if their success holds up against the robots still on
    the previous version (``canary``). A version an operator pins (``POST /v1/tasks/{task}/rollback``)
    overrides both until it is released."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: Literal["follow", "canary"] = Field(
        "follow", description="'follow': every new episode runs the newest version; 'canary': gated rollout."
    )
    canary_fraction: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="Share of the online robots that try a candidate version (at least one).",
    )
    window_episodes: int = Field(
        20, ge=1, le=10_000,
        description="Finished episodes each side (canary, stable) needs before the verdict.",
    )  # fmt: skip
    tolerance: float = Field(
        0.1, ge=0.0, le=1.0,
        description="The candidate is promoted unless its success rate is below the stable version's by more "
        "than this; otherwise it is rolled back and the next candidate is a version published after it.",
    )  # fmt: skip
    keep_versions: int = Field(
        8, ge=1, le=1000,
        description="Published versions the weight board keeps for rollback and evaluation (held ones extra).",
    )  # fmt: skip


class ReplayConfig(BaseModel):
    """Replay settings of one task (the chunk length comes from the task's action spec)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gamma: float = Field(0.99, gt=0.0, le=1.0, description="Per-step discount.")
    offline_fraction: float = Field(0.5, ge=0.0, le=1.0, description="Share of each batch from offline data.")
    capacity: int = Field(1_000_000, gt=0, description="Online rows (steps + 1 per episode) kept; FIFO.")
    robot_alpha: float = Field(0.0, ge=0.0, description="Dynamic-sampling exponent; 0 = uniform.")
    robot_eps: float = Field(0.05, ge=0.0, description="Keeps robots at 100% success sampled.")
    robot_window: int = Field(
        50, gt=0, description="Recent labelled episodes per robot for its success rate."
    )
    reward: str = Field(
        "env", pattern="^(env|sparse|aloe)$", description="Reward scheme (workers/data/rewards.py)."
    )
    c_fail: float = Field(
        100.0, ge=0.0, description="ALOE failure penalty; ALOE uses the mean episode length."
    )
    recent_episodes: int = Field(256, gt=0, description="Online episodes kept whole for on-policy learners.")
    learn_from_evaluation: bool = Field(
        False, description="Replay evaluation episodes too (by default they are stored but never sampled)."
    )


class TaskConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=NAME_RE, description="Task name; robots register for a task.")
    description: str = Field("", description="Free text shown in the REST API.")
    observation: dict[str, ArraySpecConfig] = Field(
        description="Observation entries by name (at least one).",
        json_schema_extra={"minProperties": 1, "propertyNames": {"pattern": NAME_RE}},
    )
    action: ArraySpecConfig = Field(description="Action of one control step.")
    chunk_len: int = Field(4, ge=1, le=256, description="Actions per chunk returned for one observation.")
    policy: PolicyConfig = Field(
        default_factory=GaussianMLPConfig, description="Policy network (family gaussian_mlp or flow_chunk)."
    )
    inference: InferencePoolConfig = Field(default_factory=InferencePoolConfig, description="Inference pool.")
    learner: LearnerConfig | None = Field(
        None, description="The task's learner (None: serve the policy only)."
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="How new versions reach the robots (canary, rollback)."
    )
    return_and_explore: ReturnAndExploreConfig = Field(
        default_factory=ReturnAndExploreConfig, description="Restarting robots where episodes fail."
    )

    @model_validator(mode="after")
    def _policy_fits_action(self) -> TaskConfig:
        problem = action_spec_problem(self.policy, self.action.to_spec())
        if problem:
            raise ValueError(f"policy: {problem}")
        return self

    @model_validator(mode="after")
    def _learner_fits_policy(self) -> TaskConfig:
        if self.learner is not None:
            from fleetrl.algorithms.base import incompatibility

            problem = incompatibility(self.learner.algorithm, self.policy.family)
            if problem:
                raise ValueError(f"learner: {problem}")
        return self

    @field_validator("observation")
    @classmethod
    def _non_empty(cls, v: dict[str, ArraySpecConfig]) -> dict[str, ArraySpecConfig]:
        if not v:
            raise ValueError("a task needs at least one observation entry")
        for key in v:
            if not re.match(NAME_RE, key):
                raise ValueError(f"observation name {key!r} must match {NAME_RE}")
        return v

    @cached_property
    def observation_spec(self) -> dict[str, ArraySpec]:
        return {k: v.to_spec() for k, v in self.observation.items()}

    @cached_property
    def action_spec(self) -> ArraySpec:
        return self.action.to_spec()

    @cached_property
    def camera_keys(self) -> tuple[str, ...]:
        """Observation keys that are camera frames: uint8 [H, W] or [H, W, C] with C 1 or 3 (any encoding)."""
        return tuple(k for k, spec in self.observation_spec.items() if is_camera(spec.shape, spec.dtype))

    def public(self) -> dict[str, Any]:
        """What robots and the REST API see of a task."""
        return {
            "name": self.name,
            "description": self.description,
            "observation_spec": {k: v.to_dict() for k, v in self.observation_spec.items()},
            "action_spec": self.action_spec.to_dict(),
            "chunk_len": self.chunk_len,
            "policy_family": self.policy.family,
            "algorithm": self.learner.algorithm if self.learner else None,
        }


def spec_mismatch(
    task: TaskConfig, observation_spec: dict[str, Any], action_spec: dict[str, Any]
) -> str | None:
    """Why a robot's declared specs do not fit a task, or None if they do."""
    try:
        obs = specs_from_dict(observation_spec)
        act = ArraySpec.from_dict(action_spec)
    except (ValueError, TypeError) as exc:
        return f"invalid spec: {exc}"
    if {k: (v.shape, v.dtype) for k, v in obs.items()} != {
        k: (v.shape, v.dtype) for k, v in task.observation_spec.items()
    }:  # the encoding a frame travels in is the task's to choose; the robot's SDK follows it
        return f"observation spec {observation_spec} does not match task {task.name!r}: {task.public()['observation_spec']}"
    if act.shape != task.action_spec.shape or act.dtype != task.action_spec.dtype:
        return f"action spec {action_spec} does not match task {task.name!r}: {task.public()['action_spec']}"
    return None


FRAME_OVERHEAD_BYTES = 4096  # a frame's msgpack keys, ids and numbers beside its arrays (generous)
STEP_COLUMN_BYTES = 64  # one row of the per-step columns in a ``steps`` frame (fleetrl.robots.episode)


def frame_fit_problem(task: TaskConfig, max_frame_bytes: int) -> str | None:
    """Why one step of ``task`` can never travel to a gateway that takes frames of ``max_frame_bytes``
    (None if it can): an observation at its largest (camera frames that do not compress come out at their
    raw size), the pending actions an ``obs`` frame carries, one row's action and columns in a ``steps``
    frame. Checked when a task is configured or created, so it is refused then, not at run time."""
    action = task.action_spec.size * 8  # float64 at most
    need = row_bytes_bound(task.observation_spec) + task.chunk_len * action + STEP_COLUMN_BYTES
    if need + FRAME_OVERHEAD_BYTES <= max_frame_bytes:
        return None
    return (
        f"one step of task {task.name!r} takes up to {need:,} bytes on the wire (its observation at raw size: "
        f"camera frames that do not compress are not smaller), over the gateway's frame limit of "
        f"{max_frame_bytes:,} bytes: raise gateway.max_frame_bytes or lower the camera resolution"
    )


def gateways_problem(task: TaskConfig, gateways: int) -> str | None:
    """Why ``task`` cannot be served by ``gateways`` gateways (None if it can): a canary trial is decided by
    one gateway on the robots it serves, so with several each would reach its own verdict."""
    if gateways > 1 and task.rollout.mode == "canary":
        return (
            f"task {task.name!r}: rollout mode canary needs gateway.replicas 1 (each of {gateways} gateways "
            "would run its own trial and verdict); use mode follow, with rollback and evaluations"
        )
    return None


# -- tasks created over REST, as the registry keeps them ----------------------------------------------
def saved_task(task: TaskConfig, replay: ReplayConfig | None) -> dict[str, Any]:
    """What the registry keeps of a task created over REST: enough to create it again."""
    return {"task": task.model_dump(mode="json"), "replay": replay and replay.model_dump(mode="json")}


def restore_saved(saved: dict[str, Any]) -> tuple[TaskConfig, ReplayConfig | None]:
    """``saved_task``'s inverse; ValueError (a pydantic one included) when the stored config no longer
    parses, e.g. after an upgrade changed a field."""
    try:
        task = TaskConfig.model_validate(saved["task"])
        replay = saved.get("replay")
        return task, None if replay is None else ReplayConfig.model_validate(replay)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a saved task: {exc!r}") from None


def registered_tasks(
    rows: dict[str, dict[str, Any] | None], configured: list[TaskConfig]
) -> list[tuple[TaskConfig, ReplayConfig | None]]:
    """The tasks an actor starting (or restarted by Ray) now serves, from the registry's
    ``task_configs()``: the config file's tasks that were not deleted, then those created over REST (a
    ``None`` replay: the data config's). A saved task that no longer parses is left out, with a warning."""
    by_name = {t.name: t for t in configured}
    tasks: list[tuple[TaskConfig, ReplayConfig | None]] = []
    for name, saved in rows.items():
        if saved is None:
            if name in by_name:
                tasks.append((by_name[name], None))
            continue
        try:
            tasks.append(restore_saved(saved))
        except ValueError as exc:
            log.warning("task %s (created over REST) left out: its stored config is invalid: %s", name, exc)
    return tasks
