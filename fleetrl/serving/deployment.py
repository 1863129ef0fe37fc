"""Deploy the REST app with Ray Serve (HTTP proxy on the head node, the app as a Serve deployment)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .app import create_app


class RestConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy listens on.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    admin_token_env: str = Field(
        "FLEETRL_ADMIN_TOKEN", description="Environment variable that holds the admin bearer token."
    )
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved for the API replica.")

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


APP_NAME = "fleetrl-api"


def deploy_rest(cfg: RestConfig, **app_kwargs: Any) -> str:
    """Start Serve (if needed) and run the API; returns the base URL."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    app = create_app(**app_kwargs)

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": cfg.num_cpus})
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
