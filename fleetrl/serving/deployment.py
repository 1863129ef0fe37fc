"""Deploy the REST app with Ray Serve (HTTP proxy on the head node, the app as a Serve deployment)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .app import create_app


class RestConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = Field(
        "127.0.0.1", description="Address the Serve HTTP proxy listens on (0.0.0.0: every interface)."
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    advertise: str | None = Field(
        None,
        description="URL users and robots on other hosts are told (behind NAT, or on a multi-homed head); "
        "default: http://<the head's IP>:<port> when host is 0.0.0.0, else the host itself.",
    )
    admin_token_env: str = Field(
        "FLEETRL_ADMIN_TOKEN", description="Environment variable that holds the admin bearer token."
    )
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved for the API replica.")

    @property
    def url(self) -> str:
        """Where this machine reaches the API (the driver's health check, local tools)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def public_url(self, node_ip: str) -> str:
        """What other hosts are told: ``advertise``, else this node's IP when listening on every interface."""
        if self.advertise:
            return self.advertise.rstrip("/")
        return f"http://{node_ip}:{self.port}" if self.host in ("0.0.0.0", "::") else self.url


APP_NAME = "fleetrl-api"


def deploy_rest(cfg: RestConfig, **app_kwargs: Any) -> str:
    """Start Serve (if needed) and run the API; returns the base URL."""
    from ray import serve

    # One HTTP proxy, on the head (the driver's node): the URL we print is the head's.
    # (Serve's controller kills a proxy that is not ready within RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S: Platform
    # starts Ray with 60 s there, RAY_ENV, and the cluster configs' `ray start` lines do too)
    serve.start(proxy_location="HeadOnly", http_options={"host": cfg.host, "port": cfg.port})
    app = create_app(**app_kwargs)

    # an idle replica that is told to stop sleeps one wait loop (Serve's default 2 s) before it checks for
    # requests in flight: every platform stop waited for it
    @serve.deployment(
        num_replicas=1, ray_actor_options={"num_cpus": cfg.num_cpus}, graceful_shutdown_wait_loop_s=0.25
    )
    @serve.ingress(app)
    class FleetrlApi:
        pass

    serve.run(FleetrlApi.bind(), name=APP_NAME, route_prefix="/", blocking=False)
    return cfg.url


def undeploy_rest() -> None:
    from ray import serve

    try:
        serve.delete(APP_NAME)
    except Exception:  # noqa: BLE001 - already gone
        pass
