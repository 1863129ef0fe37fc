"""The REST API's request and response bodies: pydantic models, so every body is validated (and documented
in the OpenAPI schema) before a route runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetrl.workers.config_checks import reject_bool_numbers
from fleetrl.workers.task import NAME_RE, ArraySpecConfig, ReplayConfig, TaskConfig


class RobotRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE, description="Human-readable robot name.")
    task: str = Field(pattern=NAME_RE, description="Task the robot works on.")
    observation_spec: dict[str, ArraySpecConfig] = Field(description="What the robot observes.")
    action_spec: ArraySpecConfig = Field(description="One control step's action.")
    curve_public_key: str | None = Field(
        None,
        min_length=40,
        max_length=40,
        description="The robot's own CURVE public key (Z85, 40 characters), when it keeps its secret key "
        "itself; if absent, the platform issues a key pair and returns its secret key once.",
    )
    gateway: int | None = Field(
        None,
        ge=0,
        description="Pin the robot to this gateway (0-based, below gateway.replicas); default: the least "
        "loaded one that answers (a re-registered robot keeps its own while it answers).",
    )


class CredentialRenewal(BaseModel):
    """A registered robot renews its own credentials with its current token (no admin token on the robot)."""

    model_config = ConfigDict(extra="forbid")
    curve_public_key: str | None = Field(
        None,
        min_length=40,
        max_length=40,
        description="The robot's own new CURVE public key; if absent, the platform issues a new key pair.",
    )


class CurveCredentials(BaseModel):
    """What the robot's socket needs for an encrypted, authenticated link (ZeroMQ CURVE)."""

    server_key: str = Field(description="The gateway's public key: set as the socket's CURVE_SERVERKEY.")
    public_key: str = Field(description="The robot's public key: CURVE_PUBLICKEY.")
    secret_key: str | None = Field(
        None, description="The robot's secret key (CURVE_SECRETKEY): shown once, not kept by the platform."
    )


class RobotCredentials(BaseModel):
    robot_id: str
    name: str
    task: str
    token: str = Field(description="Shown once; the platform keeps only its hash.")
    endpoint: str = Field(description="ZeroMQ endpoint the robot connects its DEALER socket to.")
    endpoints: list[str] = Field(
        default_factory=list,
        description="Every gateway's endpoint, its own (endpoint) first: where the robot goes on when its "
        "gateway stops answering (several gateways).",
    )
    gateway: int = Field(0, description="The gateway it is assigned to (0-based).")
    chunk_len: int
    curve: CurveCredentials | None = Field(
        None, description="CURVE keys for the robot's socket; null when the gateway runs security: token."
    )
    reregistered: bool = Field(
        False,
        description="The name was already registered for this task: same robot_id (its history kept), new "
        "token and keys, the old ones revoked (answered with 200 instead of 201).",
    )


class ResetRequest(BaseModel):
    """Where the robot's next episode starts: a state it knows by name, a recorded step of a stored
    episode, or a failure point the platform recorded for its task (return-and-explore). Exactly one of
    ``state``, ``episode_id`` (with ``step``) or ``failure: true``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # the cross-field rule, where OpenAPI can say it
            "oneOf": [
                {"required": ["state"], "not": {"anyOf": [{"required": ["episode_id"]}, {"required": ["failure"]}]}},
                {"required": ["episode_id"], "not": {"anyOf": [{"required": ["state"]}, {"required": ["failure"]}]}},
                {"required": ["failure"], "properties": {"failure": {"const": True}},
                 "not": {"anyOf": [{"required": ["state"]}, {"required": ["episode_id"]}]}},
            ]
        },
    )  # fmt: skip
    state: str | None = Field(None, min_length=1, max_length=64, description="A named state, e.g. 'initial'.")
    episode_id: str | None = Field(None, min_length=1, max_length=128, description="A stored episode.")
    step: int = Field(0, ge=0, description="The step of that episode to restart from.")
    failure: bool = Field(False, description="Restart from a recorded failure state of the robot's task.")

    @model_validator(mode="after")
    def _one_target(self) -> ResetRequest:
        given = [self.state is not None, self.episode_id is not None, self.failure]
        if sum(given) != 1:
            raise ValueError("give exactly one of state, episode_id (with step) or failure: true")
        return self


class TaskCreation(BaseModel):
    """A task to create. Rules across fields, checked on creation (422 naming the field): a squashed
    Gaussian policy (the default) needs finite ``action.low`` and ``action.high`` (low < high); an array
    spec has at most 2**24 elements; numbers are never booleans."""

    model_config = ConfigDict(extra="forbid")
    task: TaskConfig = Field(description="The task: specs, chunk length, policy, inference pool, learner.")
    replay: ReplayConfig | None = Field(None, description="Replay settings (default: the platform's).")

    @model_validator(mode="wrap")
    @classmethod
    def _no_bool_numbers(cls, data: Any, handler: Any) -> TaskCreation:
        parsed = handler(data)
        reject_bool_numbers(data, parsed)
        return parsed


class AlgorithmSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str = Field(min_length=1, description="Registered algorithm name (ppo, awr, qam, bc, ...).")
    config: dict[str, Any] = Field(default_factory=dict, description="The algorithm's config; {} = defaults.")


class DemoImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="Folder on the data server's filesystem.")
    format: Literal["fleetrl", "lerobot"] = Field(
        "fleetrl", description="Our Parquet episodes or LeRobot v2/v3."
    )
    observation_keys: dict[str, str] | None = Field(
        None, description="LeRobot feature name -> task observation key (default observation.<key>)."
    )


class EpisodeLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["success", "failure"] = Field(description="The label.")
    labelled_by: Literal["human", "critic"] = Field("human", description="Who labelled it.")


class SimEvaluationRobots(BaseModel):
    """Simulated robots the platform starts for one evaluation and removes when it ends."""

    model_config = ConfigDict(extra="forbid")
    env: str = Field(
        min_length=1, description="gymnasium environment id (also 'module:EnvId'), e.g. Reacher-v5."
    )
    count: int = Field(2, ge=1, le=64, description="Number of robots (one process on a cluster node).")
    seed: int = Field(10_000, description="Seed of the first robot; robot i uses seed + i.")
    control_hz: float | None = Field(None, gt=0, description="Control rate (default: the robot preset's).")
    success: str | None = Field(
        None, description="Success rule, as in the config's sim_robots (default: the env's preset)."
    )
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for gym.make.")
    wrappers: list[str] = Field(default_factory=list, description="'module:Callable' wrappers, in order.")
    num_cpus: float = Field(0.5, ge=0, description="CPUs Ray reserves for the robots' process.")
    timeout_s: float = Field(
        1800.0, gt=0, description="The robots stop after this long even if the evaluation is not done."
    )


class EvaluationRequest(BaseModel):
    """Evaluation episodes of one version, stored flagged as evaluation (never learned from unless the
    task's replay sets ``learn_from_evaluation``)."""

    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(
        None,
        ge=0,
        description="Weight version to evaluate (None: what the fleet runs: pinned, stable or newest).",
    )
    robots: list[str] | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Robot ids to run it on (None: any robot of the task).",
    )
    episodes: int = Field(20, ge=1, le=10_000, description="Episodes to run (an aborted one is run again).")
    deterministic: bool = Field(True, description="Act with the policy's mode instead of sampling.")
    sim: SimEvaluationRobots | None = Field(
        None,
        description="Run it on simulated robots the platform starts for it (instead of registered robots); "
        "they leave when it ends.",
    )

    @model_validator(mode="after")
    def _robots_or_sim(self) -> EvaluationRequest:
        if self.robots is not None and self.sim is not None:
            raise ValueError("give robots or sim, not both")
        return self


class EvaluationRecord(BaseModel):
    """An evaluation and what it measured so far (``status``: running, done or interrupted)."""

    evaluation_id: str
    task: str
    version: int
    deterministic: bool
    robots: list[str] | None = Field(description="The robots it may use (None: any of the task's).")
    episodes: int = Field(description="Episodes asked for.")
    episodes_done: int
    status: Literal["running", "done", "interrupted"]
    success_rate: float | None
    success_ci95: list[float] | None = Field(description="Wilson 95 % interval of the success rate.")
    return_mean: float | None
    return_ci95: list[float] | None = Field(description="Normal 95 % interval of the mean return.")
    outcomes: dict[str, int]
    per_robot: dict[str, dict[str, int]]
    created: float
    finished: float | None


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=0, description="The version every new episode runs until the pin is released.")


class Verdict(BaseModel):
    candidate: int
    stable: int
    decision: Literal["promoted", "rolled_back"]
    canary_success: float
    stable_success: float
    episodes: dict[str, int]
    canary_robots: list[str]
    started: float
    decided: float


class TrialState(BaseModel):
    candidate: int
    stable: int
    canary_robots: list[str]
    episodes: dict[str, int] = Field(description="Finished episodes per side (canary, stable).")
    counts: dict[str, list[int]] = Field(description="[successes, episodes] per side.")
    success: dict[str, float | None] = Field(description="Success rate per side so far.")
    window_episodes: int
    started: float


class RolloutState(BaseModel):
    """Which version a task's robots run and why: the canary trial, verdicts, a pin, running evaluations."""

    task: str
    mode: Literal["follow", "canary"]
    newest: int = Field(description="The newest version the replicas serve.")
    stable: int | None = Field(description="Canary mode: the version that passed its trial.")
    pinned: int | None = Field(description="The version an operator rolled back to (None: no pin).")
    held: list[int] = Field(description="Versions every replica holds besides the newest.")
    rejected: int | None = Field(description="The last candidate rolled back.")
    trial: TrialState | None
    verdicts: list[Verdict]
    last_verdict: Verdict | None
    evaluations: list[EvaluationRecord]
    evaluations_running: int
    robots: dict[str, int | None] = Field(description="Robot id -> version of the last chunk it was sent.")
    config: dict[str, Any]


# -- response bodies of the other routes ---------------------------------------------------------------
class Answer(BaseModel):
    """A response body: the fields listed are documented and always present; more may follow (a newer
    platform adds fields without breaking clients)."""

    model_config = ConfigDict(extra="allow")


class Health(Answer):
    status: Literal["ok"]
    api: str = Field(description="API version.")
    robot_endpoint: str = Field(description="Where robots connect (ZeroMQ; the first gateway's).")
    robot_endpoints: list[str] = Field(description="Every gateway's endpoint (gateway.replicas).")


class LogLine(Answer):
    t: float = Field(description="Unix time.")
    source: str = Field(description="The actor that logged it.")
    level: str
    message: str


class TaskSpec(Answer):
    """What robots and clients see of a task (``TaskConfig.public``)."""

    name: str
    observation_spec: dict[str, Any]
    action_spec: dict[str, Any]
    chunk_len: int
    policy_family: str
    algorithm: str | None


class TaskListing(TaskSpec):
    robots: int = Field(description="Robots registered for it.")
    served: bool = Field(description="False: listed but not running (see GET /v1/tasks).")


class TaskDetail(TaskSpec):
    description: str
    replicas: int
    weight_version: int = Field(description="The newest version the learner published (0: initial weights).")
    learner: dict[str, Any] | None = Field(description="The learner's status (None: no learner).")
    versions: dict[str, Any] | None = Field(
        None, description="Which version the robots run (GET /v1/tasks/{task}/rollout in full)."
    )


class TaskDeleted(Answer):
    task: str
    episodes_kept: int = Field(description="Stored episodes, kept on disk.")
    learner: dict[str, Any] | None = Field(description="The learner's last status.")


class AlgorithmSwitched(Answer):
    task: str
    algorithm: str
    config: dict[str, Any]
    applies: str


class RobotRecord(Answer):
    robot_id: str
    name: str
    task: str
    observation_spec: dict[str, Any]
    action_spec: dict[str, Any]
    created: float
    curve_public_key: str | None
    gateway: int | None = Field(None, description="The gateway it is assigned to (the last to welcome it).")
    online: bool
    control: str = Field(description="'autonomous', or 'human' while an operator has taken over.")
    stats: dict[str, Any] | None = Field(description="The gateway's live counters (None: never connected).")


class ResetAnswer(Answer):
    ok: bool


class TaskData(Answer):
    task: str
    episodes: int
    steps: int
    hours: float
    success: int
    failure: int
    timeout: int
    aborted: int
    intervention_steps: int
    snapshot: int
    replay: dict[str, Any] = Field(description="Replay sizes (offline/online episodes and transitions).")
    refill: dict[str, Any] = Field(description="The replay refill after the data server's last start.")


class FailureStates(Answer):
    count: int
    histogram: Any
    recent: list[Any]


class Curves(Answer):
    task: str
    window: int
    episodes: int
    robot_hours: float
    points: list[dict[str, Any]]


class EpisodeRow(Answer):
    """A stored episode's catalog row."""

    episode_id: str
    task: str
    robot_id: str
    outcome: str
    source: str
    labelled_by: str
    n_steps: int
    snapshot: int
    evaluation: str | None = Field(None, description="The evaluation it was run for (None: a fleet rollout).")


class EpisodeSummary(EpisodeRow):
    meta: dict[str, Any]


class ImportResult(Answer):
    stored: int = Field(description="New episodes stored.")
    duplicates: int = Field(description="Episodes stored already (same episode ids).")
    snapshot: int
