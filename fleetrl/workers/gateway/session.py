"""What the gateway knows of the robots: its own config (where it binds, what robots are told) and one
``RobotState`` per robot (session, counters for the live view, control and open episodes)."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from fleetrl.workers.placement import ActorResources
from fleetrl.workers.task import TaskConfig


class GatewayConfig(ActorResources):
    """The robot gateway (ZeroMQ ROUTER): where it binds, what robots are told, and its Ray resources."""

    bind: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ address the ROUTER socket binds.")
    advertise: str | None = Field(
        None,
        description="Endpoint robots are told to connect to, when it differs from the bind address (NAT, "
        "multi-homed head); default: bind, with 0.0.0.0/* replaced by the gateway node's IP.",
    )
    security: Literal["curve", "token"] = Field(
        "curve",
        description="curve: robot links are encrypted and each connection is authenticated by the robot's "
        "CURVE key (issued at registration); token: the token in hello only, in clear (lab networks).",
    )
    allow_token_on_network: bool = Field(
        False,
        description="Allow security: token on a bind other than loopback (anyone on the network can read "
        "tokens and take over robot sessions).",
    )
    max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest frame accepted from a robot.")
    lease_timeout_s: float = Field(5.0, gt=0, description="A robot silent this long goes offline.")
    resume_window_s: float = Field(
        60.0,
        ge=0,
        description="A robot that went offline mid-episode and says hello again within this long goes on "
        "with its open episodes (their rows must continue where they stopped); after it, the rows that "
        "arrived are stored as an aborted episode and the robot is told episode_cut.",
    )
    max_episode_steps: int = Field(
        100_000,
        ge=1,
        strict=True,
        description="Rows one episode may have; more are refused (episode_too_long).",
    )
    max_episode_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        strict=True,
        description="Array bytes one episode may hold in the gateway; more are refused (episode_too_long).",
    )
    heartbeat_s: float = Field(1.0, gt=0, description="How often robots should ping when otherwise idle.")
    hello_per_peer_per_s: float = Field(
        2.0,
        gt=0,
        description="Hello attempts one connection may make per second (burst 5); more: rate_limited.",
    )
    hello_registry_per_s: float = Field(
        50.0,
        gt=0,
        description="Hellos per second, over all connections, whose credentials the gateway has not verified "
        "before and asks the registry about (burst twice that); more: rate_limited. Robots already "
        "connected are never affected.",
    )
    metrics_flush_s: float = Field(0.5, gt=0, description="How often buffered metrics go to the log server.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for the gateway.")
    replicas: int = Field(
        1,
        ge=1,
        le=64,
        strict=True,
        description="Gateway actors (each its own ZeroMQ endpoint: gateway k binds the bind port + k). A robot "
        "is assigned one at registration (the least loaded) and moves to another when its own stops "
        "answering. Several are placed on different nodes where possible (Ray's SPREAD), or where "
        "`resources` (e.g. {robot_gateway: 1}) are offered.",
    )
    split_replicas: bool = Field(
        True,
        description="With several gateways, give each gateway its own share of a task's inference replicas "
        "(replica i goes to gateway i mod N) when the task has at least as many replicas as there are "
        "gateways, so no two schedulers send batches to one replica; false (or fewer replicas): every "
        "gateway uses every replica.",
    )

    @model_validator(mode="after")
    def _token_mode_on_loopback_only(self) -> GatewayConfig:
        local = ("tcp://127.0.0.1:", "tcp://localhost:", "ipc://", "inproc://")
        if self.security == "token" and not self.bind.startswith(local) and not self.allow_token_on_network:
            raise ValueError(
                f"security: token sends robot tokens in clear; on {self.bind} use security: curve, or set "
                "allow_token_on_network: true for a closed lab network"
            )
        return self

    @property
    def endpoint(self) -> str:
        """The endpoint as seen from this machine (tools on the gateway's own node)."""
        return self.public_endpoint("127.0.0.1")

    def bind_of(self, index: int) -> str:
        """Where gateway ``index`` binds: ``bind`` with its port + index (an ipc/inproc path gets ``-index``)."""
        return _offset(self.bind, index)

    def public_endpoint(self, node_ip: str, index: int = 0) -> str:
        """What robots are told: ``advertise``, else the bind address with a wildcard host made concrete (for
        gateway ``index``: its port + index)."""
        if self.advertise:
            return _offset(self.advertise, index)
        return self.bind_of(index).replace("0.0.0.0", node_ip).replace("*", node_ip)

    def replica_indices(self, index: int, count: int) -> list[int]:
        """The replicas (by index, out of ``count``) gateway ``index`` dispatches to (``split_replicas``)."""
        if not self.split_replicas or count < self.replicas:
            return list(range(count))
        return list(range(index, count, self.replicas))


def _offset(address: str, index: int) -> str:
    """A ZeroMQ address for the ``index``-th of several: tcp's port + index, an ipc/inproc name + -index."""
    if index == 0:
        return address
    head, sep, port = address.rpartition(":")
    if address.startswith("tcp://") and sep and port.isdigit():
        return f"{head}:{int(port) + index}"
    return f"{address}-{index}"


@dataclass
class RobotState:
    """What the gateway knows of one robot: its session and running counters for the live view."""

    robot_id: str
    task: TaskConfig
    name: str = ""
    ident: bytes | None = None
    online: bool = False
    last_seen: float = 0.0
    episode_id: str | None = None
    last_step: int = -1
    steps_done: int = 0  # steps of finished episodes
    outcomes: Counter = field(default_factory=Counter)
    recent_ends: OrderedDict = field(default_factory=OrderedDict)  # episode id -> (rows, outcome): acked
    committing: set = field(default_factory=set)  # ended episodes on their way to the data server
    assemblies: dict = field(default_factory=dict)  # episode id -> EpisodeAssembly (open episodes)
    closed: OrderedDict = field(default_factory=OrderedDict)  # refused episode id -> (code, message)
    offline_since: float | None = None  # went offline with open episodes at (monotonic): resumable
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    pinned: tuple[str, int] | None = None  # (episode id, weight version) in episode reload mode
    policy_version: int | None = None  # the version of the last chunk sent to it
    control: str = "autonomous"  # "human" while an operator has taken over
    operator: str = ""
    control_since: tuple[str, int] = ("", 0)  # (episode id, step) of the last change of control
    takeovers: int = 0
    camera: dict = field(default_factory=dict)  # camera key -> (latest frame as sent, wall time)

    def chunk_is_stale(self, episode_id: str, step: int) -> bool:
        """True if a chunk computed from the observation at ``step`` of ``episode_id`` must not be sent:
        the robot is under human control, or control changed after that observation (it came before the
        hand-back)."""
        if self.control == "human":
            return True
        episode, since = self.control_since
        return episode_id == episode and step < since

    def close_episode(self, episode_id: str, code: str, message: str) -> None:
        """Remember that ``episode_id`` is refused for good (every later frame of it gets ``code``)."""
        self.closed[episode_id] = (code, message)
        while len(self.closed) > 64:
            self.closed.popitem(last=False)

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latency_ms)
        episodes = sum(self.outcomes.values())
        return {
            "robot_id": self.robot_id,
            "name": self.name,
            "task": self.task.name,
            "online": self.online,
            "control": self.control,
            "operator": self.operator,
            "takeovers": self.takeovers,
            "steps": self.steps_done + max(self.last_step, 0),
            "episodes": episodes,
            "successes": self.outcomes["success"],
            "policy_version": self.policy_version,
            "outcomes": dict(self.outcomes),
            "latency_ms": {"p50": sorted_percentile(lat, 50), "p99": sorted_percentile(lat, 99)}
            if lat
            else None,
        }


def sorted_percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile of an already sorted list. The console's robot table asks for
    two per robot every second: numpy's call overhead made that 5 % of the gateway at 128 robots."""
    pos = (len(values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)
