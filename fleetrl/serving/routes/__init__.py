"""The REST routes, one ``APIRouter`` module per resource, named for its OpenAPI tag: ``ops`` (health,
metrics, logs), ``tasks`` (a task's life and algorithm), ``rollout`` (canary, rollback, evaluations), ``robots`` (registration, live state, resets) and
``data`` (what the data server stores: episodes, curves, failure states, demonstrations, labels).

``create_app`` puts every router of ``ADMIN_ROUTERS`` behind the admin token; the order of both tuples is
the order the OpenAPI schema lists the paths in.
"""

from __future__ import annotations

from . import data, ops, robots, rollout, tasks

PUBLIC_ROUTERS = (ops.public_router, robots.robot_router)  # robot_router: the robot's own token
ADMIN_ROUTERS = (ops.router, tasks.router, rollout.router, robots.router, data.router)
