"""The platform's configuration: composes every part's own config; loaded from YAML, frozen, strict.

``load_config(path)`` turns any problem into one ``ConfigError`` whose message names the file, the
path of each bad key and what is allowed there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetrl.serving.deployment import RestConfig
from fleetrl.workers.config_checks import reject_bool_numbers
from fleetrl.workers.critic import CriticConfig
from fleetrl.workers.data.server import DataConfig
from fleetrl.workers.gateway.session import GatewayConfig
from fleetrl.workers.locations import is_url
from fleetrl.workers.task import NAME_RE, TaskConfig, frame_fit_problem, gateways_problem


class SimFleetConfig(BaseModel):
    """Simulated robots that ``fleetrl run`` starts; they register over REST like real robots."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    env: str = Field(description="gymnasium environment id, e.g. Reacher-v5.")
    task: str = Field(pattern=NAME_RE, description="Task the robots register for.")
    count: int = Field(1, ge=0, le=1024, description="Number of robots (all in one process).")
    control_hz: float | None = Field(None, gt=0, description="Control rate (default: the robot preset's).")
    lockstep: bool = Field(
        False, description="Simulated time waits for each chunk instead of holding (learning benchmarks)."
    )
    seed: int = Field(0, description="Seed of the first robot; robot i uses seed + i.")
    success: str | None = Field(
        None,
        description="Success rule: a name (reacher_2cm, info_success, never), 'info:KEY', 'obs_norm[A:B]<T' or "
        "'module:function' (default: the env's preset, else never).",
    )
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for gym.make.")
    wrappers: list[str] = Field(
        default_factory=list,
        description="Wrappers applied in order, each 'module:Callable' called with the env.",
    )


class OracleDemosConfig(BaseModel):
    """Scripted-oracle demonstrations that ``fleetrl run`` puts in a task's offline replay before its robots
    start (once: demo ids are deterministic and the store ingests an episode once)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    task: str = Field(pattern=NAME_RE, description="Task the demonstrations belong to.")
    env: str = Field("cube-single-singletask-task1-v0", description="OGBench cube-single environment id.")
    n: int = Field(50, ge=1, le=100_000, description="Number of demonstration episodes.")
    oracle: str = Field("plan", pattern="^(plan|markov)$", description="OGBench oracle: plan or markov.")
    noise: float = Field(0.1, ge=0.0, description="Oracle action noise.")
    seed: int = Field(0, description="Collection seed.")


class PlatformConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field("local", pattern=NAME_RE, description="Name of this platform instance.")
    state_dir: str = Field(
        "~/.fleetrl/local", description="Registry database, admin token and logs live here."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to attach to ('auto' on a cluster head); None starts a local Ray."
    )
    local_num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local Ray (default: max(8, cores)); ignored on a cluster."
    )
    learner_storage: str | None = Field(
        None,
        description="Where learners keep checkpoints and TensorBoard logs (default <state_dir>/learners). On a "
        "multi-node cluster, a path every node mounts (NFS): a learner restarted on another node resumes "
        "from it.",
    )
    rest: RestConfig = Field(default_factory=RestConfig, description="REST endpoint.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="Robot gateway (ZeroMQ).")
    data: DataConfig = Field(default_factory=DataConfig, description="Episode store and replay.")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="Reward sources per task.")
    tasks: tuple[TaskConfig, ...] = Field(description="Tasks served by this platform.")
    sim_robots: tuple[SimFleetConfig, ...] = Field(
        (), description="Simulated robots started by `fleetrl run`."
    )
    oracle_demos: tuple[OracleDemosConfig, ...] = Field(
        (), description="Oracle demonstrations `fleetrl run` collects into offline replay first."
    )

    @model_validator(mode="after")
    def _references(self) -> PlatformConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        for i, task in enumerate(self.tasks):
            too_large = frame_fit_problem(task, self.gateway.max_frame_bytes)
            if too_large:
                raise ValueError(f"tasks[{i}].observation: {too_large}")
            several = gateways_problem(task, self.gateway.replicas)
            if several:
                raise ValueError(f"tasks[{i}].rollout: {several}")
        for i, sim in enumerate(self.sim_robots):
            if sim.task not in names:
                raise ValueError(f"sim_robots[{i}].task: no task named {sim.task!r}; defined tasks: {names}")
        for i, demos in enumerate(self.oracle_demos):
            if demos.task not in names:
                raise ValueError(
                    f"oracle_demos[{i}].task: no task named {demos.task!r}; defined tasks: {names}"
                )
        for task in self.data.tasks:
            if task not in names:
                raise ValueError(f"data.tasks.{task}: no task named {task!r}; defined tasks: {names}")
        for task in self.critic.tasks:
            if task not in names:
                raise ValueError(f"critic.tasks.{task}: no task named {task!r}; defined tasks: {names}")
        return self

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()

    @property
    def learner_storage_path(self) -> str:
        """A path, or an object store URL as given (``s3://bucket/prefix``)."""
        if not self.learner_storage:
            return str(self.state_path / "learners")
        return (
            self.learner_storage
            if is_url(self.learner_storage)
            else str(Path(self.learner_storage).expanduser())
        )


class ConfigError(ValueError):
    pass


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk ``loc`` through nested models to the model that owns the last key; list its fields."""
    current: Any = model
    keys_to_skip = 0  # a dict[str, X] field puts its key in ``loc`` before X's own keys
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if keys_to_skip:
            keys_to_skip -= 1
            continue
        if (
            not (isinstance(current, type) and issubclass(current, BaseModel))
            or part not in current.model_fields
        ):
            return None
        ann = current.model_fields[part].annotation
        while get_origin(ann) is not None:  # tuple[X, ...], dict[str, X], X | None
            keys_to_skip += get_origin(ann) is dict
            args = [a for a in get_args(ann) if a is not Ellipsis and a is not type(None)]
            ann = args[-1] if args else None
        current = ann
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def format_validation_error(source: str, exc: ValidationError, model: type[BaseModel]) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the configuration:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            hint = f"unknown key; allowed keys here: {', '.join(allowed)}" if allowed else "unknown key"
            lines.append(f"  {path}: {hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> PlatformConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        parsed = PlatformConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, PlatformConfig)) from None
    try:
        reject_bool_numbers(data, parsed)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return parsed


def load_config(path: str | Path) -> PlatformConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
