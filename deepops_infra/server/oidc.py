"""OIDC bearer tokens (optional): a JWT signed by the identity provider, checked against its
JWKS (signature, expiry, issuer, audience) and mapped to a user, team and role by claims.

    server:
      oidc:
        jwks_url: https://idp.example.org/.well-known/jwks.json
        issuer: https://idp.example.org/
        audience: deepops
        user_claim: preferred_username   # default
        team_claim: team                 # default
        role_claim: deepops_role         # default; member, team-admin, it-admin or finance
"""

from dataclasses import dataclass
from typing import Any

from deepops_infra.yamlfile import FileError, Mapping

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


@dataclass(frozen=True)
class OidcSettings:
    jwks_url: str
    issuer: str
    audience: str
    user_claim: str = "preferred_username"
    team_claim: str = "team"
    role_claim: str = "deepops_role"

    @classmethod
    def parse(cls, raw: Any, path: Any, line: int) -> "OidcSettings":
        if not isinstance(raw, Mapping):
            raise FileError(path, line, "server.oidc must be a mapping (jwks_url, issuer, audience, ...)")
        known = cls.__dataclass_fields__
        values: dict[str, str] = {}
        for key, value in raw.items():
            if key not in known:
                raise FileError(
                    path, raw.line_of(key), f"unknown server.oidc setting {key!r}; known: {', '.join(known)}"
                )
            if not isinstance(value, str) or not value:
                raise FileError(path, raw.line_of(key), f"server.oidc.{key} must be a non-empty string")
            values[key] = value
        for key in ("jwks_url", "issuer", "audience"):
            if key not in values:
                raise FileError(path, line, f"server.oidc needs {key}")
        if not values["jwks_url"].startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise FileError(path, raw.line_of("jwks_url"), "server.oidc.jwks_url must be https (or loopback)")
        return cls(**values)


class OidcVerifier:
    def __init__(self, settings: OidcSettings) -> None:
        import jwt

        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=10)

    def claims(self, token: str) -> dict[str, Any] | None:
        """The token's claims when it is valid, else None (any failure is a refusal)."""
        import jwt

        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            return jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError:
            return None
