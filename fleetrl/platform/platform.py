"""The driver: places and starts the actors, wires their handles together, and serves the REST app.

``Platform(config).start()`` returns once every actor answered ``ready()`` and ``/healthz`` is up, so
"the system is up" means every part can do its work.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from typing import Any

import httpx
import ray

from fleetrl.platform.config import PlatformConfig
from fleetrl.platform.registry import Registry
from fleetrl.serving.deployment import deploy_rest, undeploy_rest
from fleetrl.workers.critic import CriticServer
from fleetrl.workers.data.server import DataServer, default_root
from fleetrl.workers.data.shards import DataShards, shard_store
from fleetrl.workers.gateway.actor import start_gateways
from fleetrl.workers.gateway.curve import server_keys
from fleetrl.workers.gateway.gateways import Gateways
from fleetrl.workers.inference.replica import InferenceReplica, start_replicas
from fleetrl.workers.lifecycle import stop_actors
from fleetrl.workers.metrics_server import MetricsServer
from fleetrl.workers.placement import on_this_node
from fleetrl.workers.task_manager import TaskManager
from fleetrl.workers.weights import WeightBoard

log = logging.getLogger(__name__)


def resolve_admin_token(cfg: PlatformConfig) -> str:
    """The admin token from the environment, else from ``state_dir/admin_token`` (created on first use)."""
    token = os.environ.get(cfg.rest.admin_token_env)
    if token:
        return token
    path = cfg.state_path / "admin_token"
    if path.exists():
        return path.read_text().strip()
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


LOCAL_RAY_SYSTEM_CONFIG = {
    # Ray warns at 4x this many worker processes starting (its default: the core count, 2 here); our
    # actors are many and light, so a laptop's platform warned at every start.
    "worker_maximum_startup_concurrency": max(8, os.cpu_count() or 1),
    # A call in flight to an actor whose process died waits for the death's cause before it fails (default
    # 1 s), and that wait is checked on each process's internal heartbeat (default every 1 s). Our callers
    # retry on any actor error, so the waits only delayed them: a killed data server answered the gateway
    # 2.0 s after the kill with Ray's defaults, 0.6 s with these (benchmarks/data_plane.py).
    "timeout_ms_task_wait_for_death_info": 100,
    "core_worker_internal_heartbeat_ms": 100,
}


# The environment a Ray that fleetrl starts hands its processes (the head's `ray start` in configs/cluster*.yaml
# sets the same): read by Serve's and Ray Train's controllers, which run in Ray's worker processes.
RAY_ENV = {
    # Serve's controller kills an HTTP proxy that is not ready 5 s after it was created: a busy 2-core machine
    # takes longer to start the proxy's process, and `serve.start` failed ("killed by ray.kill ... never ran")
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    # Ray Train's controller polls its workers every 2 s, so a learner told to stop ended up to 2 s after
    # its loop did (`fleetrl run`'s stop of its two learners: 5.3 -> 1.6 s)
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray starts its worker processes 15 steps nicer than the raylet, below every other process on the node.
    # Ours are the workload (gateway, replicas, data server, learners): at 15 a robot program, the driver or
    # Ray's own agents on the same core take it from them whenever they run. 0: the raylet's priority.
    "RAY_worker_niceness": "0",
}


def prepare_ray_env() -> None:
    """Put ``RAY_ENV`` into this process's environment, for a local Ray started next; values the user set
    stay."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def ray_log_level() -> int:
    """The level of Ray's own driver-side log lines: INFO, or what ``$FLEETRL_RAY_LOGGING_LEVEL`` names (the
    CLI sets ERROR unless ``-v``: "started a local Ray", "token authentication is enabled")."""
    level = logging.getLevelName(os.environ.get("FLEETRL_RAY_LOGGING_LEVEL", "INFO").upper())
    return level if isinstance(level, int) else logging.INFO


def control_actor(cls: type, max_restarts: int = -1, **options: Any) -> Any:
    """The platform's bookkeeping actors (no CPU of their own) live on the driver's node, the head."""
    return ray.remote(cls).options(
        num_cpus=0, max_restarts=max_restarts, scheduling_strategy=on_this_node(), **options
    )


class Platform:
    def __init__(self, config: PlatformConfig):
        self.cfg = config
        self.admin_token = resolve_admin_token(config)
        self.registry: Any = None
        self.metrics: Any = None
        self.gateway: Any = None  # Gateways: the gateway actors behind one handle
        self.gateways: list[Any] = []
        self.data: Any = None  # the data server, or DataShards routing to several
        self.data_shards: list[Any] = []
        self.critic: Any = None
        self.weights: Any = None  # WeightBoard: versioned weight publication
        self.tasks: Any = None  # TaskManager: task lifecycle, learners, algorithm switches
        self.replicas: dict[str, list[Any]] = {}
        self.rest_url: str | None = None  # where this machine reaches the API
        self.public_rest_url: str | None = None  # what users and robots on other hosts are told
        self.endpoint: str | None = None  # the ZeroMQ endpoint robots are told (the first gateway's)
        self.endpoints: list[str] = []  # every gateway's
        self.curve_keys: tuple[str, str] | None = None  # the gateway's CURVE key pair (security: curve)
        self._owns_ray = False
        self.startup_s: dict[str, float] = {}  # seconds per phase of ``start`` (logged; where the time goes)

    def start(self, timeout: float = 120.0) -> Platform:
        cfg = self.cfg
        phase = _Phases(self.startup_s)
        if not ray.is_initialized():
            address = cfg.ray_address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
            if address:
                ray.init(
                    address=address, namespace="fleetrl", log_to_driver=False, logging_level=ray_log_level()
                )
            else:
                prepare_ray_env()
                ray.init(
                    # "local": a Ray of its own even where `ray start` left a cluster's address behind (a
                    # bare ray.init() would attach to that cluster and refuse num_cpus)
                    address="local",
                    num_cpus=cfg.local_num_cpus or max(8, os.cpu_count() or 1),
                    namespace="fleetrl",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=ray_log_level(),
                    _system_config=LOCAL_RAY_SYSTEM_CONFIG,
                )
                self._owns_ray = True
        phase.done("ray")
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        self.registry = control_actor(Registry).remote(cfg.state_path / "registry.sqlite")
        self.metrics = control_actor(MetricsServer).remote()
        ray.get([self.registry.upsert_task.remote(t.name, t.public()) for t in cfg.tasks], timeout=timeout)
        orphaned = ray.get(self.registry.forget_config_tasks.remote([t.name for t in cfg.tasks]))
        if orphaned:
            log.warning(
                "tasks %s are no longer in the config but robots are registered for them: listed, not "
                "served; delete those robots, then DELETE /v1/tasks/{task}",
                orphaned,
            )
        scored = frozenset(cfg.critic.learned())
        if scored:
            self.critic = (
                ray.remote(CriticServer)
                .options(**cfg.critic.ray_options("critic server"))
                .remote(cfg.critic, self.metrics)
            )
            ray.get(self.critic.ready.remote(), timeout=timeout)
        phase.done("registry")
        stores = [
            shard_store(cfg.data, default_root(cfg.state_path, cfg.data), k) for k in range(cfg.data.shards)
        ]
        spread = (
            {"scheduling_strategy": "SPREAD"} if cfg.data.shards > 1 else {}
        )  # over the nodes offering them
        self.data_shards = [
            ray.remote(DataServer)
            .options(
                **cfg.data.ray_options(f"data server {k}" if cfg.data.shards > 1 else "data server"), **spread
            )
            .remote(config, list(cfg.tasks), root, self.metrics, self.critic, scored, self.registry, k)
            for k, (config, root) in enumerate(stores)
        ]
        # one data server's handle, or the router that stands for the shards (workers/data/shards.py)
        self.data = (
            self.data_shards[0] if cfg.data.shards == 1 else DataShards(self.data_shards, cfg.data.shard_of)
        )
        self.weights = control_actor(WeightBoard).remote(secrets.token_hex(6))
        self.replicas = {t.name: start_replicas(t, self.metrics, self.weights) for t in cfg.tasks}
        keep = {t.name: t.rollout.keep_versions for t in cfg.tasks}
        ray.get(
            [self.weights.register.remote(name, pool, keep[name]) for name, pool in self.replicas.items()]
        )
        self.curve_keys = server_keys(cfg.state_path) if cfg.gateway.security == "curve" else None
        self.gateways = start_gateways(
            cfg.gateway, list(cfg.tasks), self.replicas, self.registry, self.metrics, self.data, self.weights,
            self.curve_keys, inline_copy=InferenceReplica,
        )  # fmt: skip
        self.gateway = Gateways(self.gateways, self.registry)
        self.tasks = control_actor(TaskManager, max_concurrency=TaskManager.MAX_CONCURRENCY).remote(
            self.registry, self.gateway, self.data, self.weights, self.metrics, cfg.learner_storage_path,
            list(cfg.tasks), cfg.gateway.max_frame_bytes, cfg.gateway.replicas,
        )  # fmt: skip
        # The config's tasks are the task manager's before REST answers (robots register for them); their
        # learners (Ray Train: a controller and a worker process each) start once it answers: on a small
        # machine they would slow Serve's start down, and robots act without them.
        pending = [self.gateway.ready.remote(), self.metrics.ready.remote(), self.data.ready.remote()]
        pending += [r.ready.remote() for pool in self.replicas.values() for r in pool]
        pending += [self.tasks.adopt.remote(t, self.replicas[t.name], learner=False) for t in cfg.tasks]
        gateway_info, *_ = ray.get(pending, timeout=timeout)
        phase.done("actors")  # data server, weight board, replicas, gateway, task manager: in parallel
        self.endpoints = [g["endpoint"] for g in gateway_info.get("gateways", [gateway_info])]
        self.endpoint = self.endpoints[0]
        self.rest_url = deploy_rest(
            cfg.rest,
            registry=self.registry,
            gateway=self.gateway,
            metrics=self.metrics,
            data=self.data,
            tasks=self.tasks,
            admin_token_sha256=hashlib.sha256(self.admin_token.encode()).hexdigest(),
            robot_endpoints=self.endpoints,
            robot_server_key=self.curve_keys[0] if self.curve_keys else None,
        )
        self.public_rest_url = cfg.rest.public_url(ray.util.get_node_ip_address())
        phase.done("rest")  # Ray Serve's controller, proxy and the app
        ray.get(self.tasks.start_learners.remote(), timeout=timeout)
        ray.get(self.tasks.restore_runtime_tasks.remote(), timeout=10 * timeout)
        phase.done("learners")
        self._wait_healthy(timeout)
        phase.done("healthy")
        log.info(
            "platform %s up in %.1f s (%s): REST %s, robots connect to %s", cfg.name, phase.total(),
            ", ".join(f"{k} {v:.1f} s" for k, v in self.startup_s.items()), self.public_rest_url, self.endpoint,
        )  # fmt: skip
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.rest_url}/healthz", timeout=5)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"REST endpoint {self.rest_url} not healthy after {timeout}s: {last}")

    def stats(self) -> dict[str, Any]:
        return ray.get(self.metrics.snapshot.remote())

    def learner(self, task: str) -> Any:
        """The task's ``Learner`` actor handle (None if the task has no learner)."""
        return ray.get(self.tasks.learner.remote(task))

    def stop(self) -> None:
        """REST first, then the tasks' learners, then the gateway (no new episodes), then the rest together."""
        undeploy_rest()
        stop_actors([self.tasks], timeout=120, what="task manager")
        stop_actors(self.gateways, timeout=10, what="gateways")
        rest = [*self.data_shards, self.critic, self.weights, self.metrics, self.registry]
        stop_actors(rest + [r for p in self.replicas.values() for r in p], timeout=10)
        if self._owns_ray:
            ray.shutdown()  # takes Serve's controller and proxy down with it

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Phases:
    """Seconds spent in each phase of a start, into ``out`` as the phases end."""

    def __init__(self, out: dict[str, float]):
        self.out, self.t0 = out, time.monotonic()
        self.last = self.t0

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.out[name] = round(now - self.last, 2)
        self.last = now

    def total(self) -> float:
        return self.last - self.t0
