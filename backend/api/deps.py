"""Who is calling: the bearer token becomes a :class:`~backend.auth.access.Principal`, once per request.

Every ops router depends on :func:`current_principal`; FastAPI caches it per request, so an endpoint that
also asks for the principal (``p: CurrentPrincipal``) gets the same one without a second lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend.api.errors import Unauthorized
from backend.auth import users
from backend.auth.access import Principal

bearer = HTTPBearer(auto_error=False, scheme_name="ApiToken",
                    description="An API token from `curatore tokens create EMAIL --name NAME`.")


def current_principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """401 for a missing, malformed, unknown, revoked or expired token, or a disabled user."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("Authentication required: send the header 'Authorization: Bearer <token>'.")
    user = users.user_for_token(credentials.credentials)
    if user is None:
        raise Unauthorized("The API token is not valid: unknown, revoked or expired.")
    return Principal.of(user)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
