"""Bearer-token authentication for admin calls. Only the token's SHA-256 is kept in memory."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request


class AdminAuth:
    """FastAPI dependency: the request must carry ``Authorization: Bearer <admin token>``."""

    def __init__(self, token_sha256: str):
        self._digest = token_sha256

    def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401,
                "missing admin token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(hashlib.sha256(token.strip().encode()).hexdigest(), self._digest):
            raise HTTPException(403, "admin token not accepted")
