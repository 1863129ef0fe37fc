"""Bearer-token authentication: the admin token for admin calls (only its SHA-256 is kept in memory), a
robot's own token for the one call a robot makes about itself (renewing its credentials)."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# Declares the scheme in the OpenAPI schema (Swagger UI's "Authorize" then sends the header); the checks
# and their messages are AdminAuth's own (auto_error off).
BEARER = HTTPBearer(scheme_name="adminToken", description="The platform's admin token.", auto_error=False)


class AdminAuth:
    """FastAPI dependency: the request must carry ``Authorization: Bearer <admin token>``."""

    def __init__(self, token_sha256: str):
        self._digest = token_sha256

    def __call__(self, credentials: HTTPAuthorizationCredentials | None = Security(BEARER)) -> None:
        scheme, token = (credentials.scheme, credentials.credentials) if credentials else ("", "")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401,
                "missing admin token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(hashlib.sha256(token.strip().encode()).hexdigest(), self._digest):
            raise HTTPException(403, "admin token not accepted")


ROBOT_BEARER = HTTPBearer(
    scheme_name="robotToken", description="A robot's own token (from its registration).", auto_error=False
)


def robot_token(credentials: HTTPAuthorizationCredentials | None = Security(ROBOT_BEARER)) -> str:
    """FastAPI dependency: the robot token the request carries (checked against the registry by the route)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials.strip():
        raise HTTPException(
            401,
            "missing robot token: send 'Authorization: Bearer <robot token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials.strip()
