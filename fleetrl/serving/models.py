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
