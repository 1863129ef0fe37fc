"""Bearer-token authentication for admin calls. Only the token's SHA-256 is kept in memory."""

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
