"""Who is calling: API tokens (only their SHA-256 is stored), users with a team and a role, and
optionally OIDC bearer tokens checked against the configured JWKS."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepops_infra.errors import NotFoundError, UserError
from deepops_infra.ledger import store
from deepops_infra.ledger.schema import ApiToken, ApiUser
from deepops_infra.request import check_label

ROLES = ("member", "team-admin", "it-admin", "finance")
TOKEN_PREFIX = "dpo_"
MAX_TOKEN_TTL = timedelta(days=365)
NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Caller:
    name: str
    team: str
    role: str
    token_id: str | None = None
    expires_at: datetime = NEVER

    def can_see(self, owner: str, team: str) -> bool:
        """Machines: a member sees their own, a team-admin the team's, an it-admin every one."""
        if self.role == "it-admin":
            return True
        if self.role == "team-admin":
            return team == self.team
        if self.role == "member":
            return owner == self.name
        return False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r}: use one of {', '.join(ROLES)}")
    return role


def ensure_user(session: Session, name: str, team: str | None, role: str | None) -> ApiUser:
    """The user, created when new (team and role required then). An existing user is never changed
    here: a different team or role is refused (`deepops users set-role`/`set-team` change them,
    explicitly and audited), as is a disabled user (`deepops users enable`)."""
    check_label("user", name)
    user = session.get(ApiUser, name)
    if user is None:
        if team is None or role is None:
            raise UserError(f"user {name!r} is new: give its team and role")
        user = ApiUser(name=name, team=check_label("team", team), role=check_role(role), created_at=store.now())
        user.disabled = False
        session.add(user)
        session.flush()
        return user
    if role is not None and check_role(role) != user.role:
        raise UserError(
            f"user {name!r} is a {user.role}; a token does not change roles: "
            f"run `deepops users set-role {name} {role}` first"
        )
    if team is not None and check_label("team", team) != user.team:
        raise UserError(
            f"user {name!r} is in team {user.team}; a token does not change teams: "
            f"run `deepops users set-team {name} {team}` first"
        )
    if user.disabled:
        raise UserError(f"user {name!r} is disabled: run `deepops users enable {name}` first")
    return user


def create_token(session: Session, user: ApiUser, ttl: timedelta, label: str | None = None) -> tuple[ApiToken, str]:
    """A new token for `user`; returns the row and the token, which is never stored or shown again."""
    if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
        raise UserError("token lifetime must be more than 0 and at most 365d")
    if label is not None and len(label) > 64:
        raise UserError("token label: at most 64 characters")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    at = store.now()
    row = ApiToken(
        id="t-" + secrets.token_hex(5),
        user_name=user.name,
        token_hash=hash_token(secret),
        label=label,
        created_at=at,
        expires_at=at + ttl,
    )
    session.add(row)
    session.flush()
    return row, secret


def could_be_token(token: str) -> bool:
    """Worth a lookup: our prefix and a sane length (anything else is refused unread)."""
    return token.startswith(TOKEN_PREFIX) and len(token) <= 200


def authenticate(session: Session, token: str, now: datetime) -> Caller | None:
    """The caller a token belongs to, or None when it is unknown, revoked, expired or its user disabled."""
    if not could_be_token(token):
        return None
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    user = session.get(ApiUser, row.user_name) if row is not None else None
    if row is None or user is None:
        return None
    return caller_of(row.id, row.expires_at, row.revoked_at, user, now)


def caller_of(
    token_id: str, expires_at: datetime, revoked_at: datetime | None, user: Any, now: datetime
) -> Caller | None:
    """The caller for a found token and its user (`name`, `team`, `role`, `disabled`), or None
    when the token is revoked or expired or the user disabled: one rule for the ORM and quick reads."""
    if revoked_at is not None or expires_at <= now or user.disabled:
        return None
    return Caller(name=user.name, team=user.team, role=user.role, token_id=token_id, expires_at=expires_at)


def list_tokens(session: Session, user: str | None = None) -> list[tuple[ApiToken, ApiUser]]:
    """Tokens (oldest first) with their users."""
    query = select(ApiToken, ApiUser).join(ApiUser, ApiUser.name == ApiToken.user_name).order_by(ApiToken.created_at)
    if user is not None:
        query = query.where(ApiToken.user_name == user)
    return [(t, u) for t, u in session.execute(query)]


def revoke_token(session: Session, token_id: str, now: datetime) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no token {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = now
    return row


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def token_json(row: ApiToken, now: datetime, user: ApiUser | None = None) -> dict[str, object]:
    """A token as shown (never its secret); with its user, their role and team too, and the
    state `disabled` when the user is (every token of theirs is refused then)."""
    state = "revoked" if row.revoked_at else ("expired" if row.expires_at <= now else "active")
    if state == "active" and user is not None and user.disabled:
        state = "disabled"
    out: dict[str, object] = {
        "id": row.id,
        "user": row.user_name,
        "label": row.label,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "revoked_at": _iso(row.revoked_at),
        "last_used_at": _iso(row.last_used_at),
        "state": state,
    }
    if user is not None:
        out |= {"role": user.role, "team": user.team}
    return out
