"""Users and the audit log: the operations behind `deepops users` and `deepops audit`, used by
the CLI on the local ledger and by the server's admin routes (deepops_infra/server/admin.py).

Role, team and access changes are explicit (`users set-role`, `users disable`): creating a token
never changes an existing user (identity.ensure_user refuses). Every change made on the local
ledger is written to the audit log like the server's requests, with the client `local`."""

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deepops_infra.errors import NotFoundError, UserError
from deepops_infra.ledger import store
from deepops_infra.ledger.schema import ApiToken, ApiUser, AuditEntry
from deepops_infra.server import identity

AUDIT_LIMIT = 1000  # the most entries one read returns


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def get_user(session: Session, name: str) -> ApiUser:
    user = session.get(ApiUser, name)
    if user is None:
        raise NotFoundError(f"no user {name!r} (see `deepops users ls`)")
    return user


def list_users(session: Session, now: datetime) -> list[dict[str, Any]]:
    """Every user with their live token count and their tokens' last use."""
    live = (ApiToken.revoked_at.is_(None)) & (ApiToken.expires_at > now)
    counts = dict(
        session.execute(select(ApiToken.user_name, func.count()).where(live).group_by(ApiToken.user_name)).all()
    )
    last = dict(
        session.execute(select(ApiToken.user_name, func.max(ApiToken.last_used_at)).group_by(ApiToken.user_name)).all()
    )
    users = session.scalars(select(ApiUser).order_by(ApiUser.name))
    return [user_json(u, counts.get(u.name, 0), last.get(u.name)) for u in users]


def user_json(user: ApiUser, tokens: int | None = None, last_used: datetime | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": user.name,
        "team": user.team,
        "role": user.role,
        "disabled": bool(user.disabled),
        "created_at": _iso(user.created_at),
    }
    if tokens is not None:
        # SQLite returns max() of a timestamp column as text: compare and show it as given.
        out |= {"active_tokens": tokens, "last_used_at": last_used if isinstance(last_used, str) else _iso(last_used)}
    return out


@dataclass(frozen=True)
class Change:
    """What a user change did, for the answer and the audit entry's detail."""

    user: dict[str, Any]
    detail: str


def set_role(session: Session, name: str, role: str, by: str) -> Change:
    """Give `name` the role `role` (all their tokens carry it at once)."""
    identity.check_role(role)
    user = get_user(session, name)
    if name == by and user.role == "it-admin" and role != "it-admin":
        raise UserError("you cannot take your own it-admin role; another it-admin can")
    before, user.role = user.role, role
    return Change(user_json(user), f"role {before} -> {role}" if before != role else f"role {role} (unchanged)")


def set_team(session: Session, name: str, team: str) -> Change:
    from deepops_infra.request import check_label

    user = get_user(session, name)
    before, user.team = user.team, check_label("team", team)
    return Change(user_json(user), f"team {before} -> {team}" if before != team else f"team {team} (unchanged)")


def set_disabled(session: Session, name: str, disabled: bool, by: str) -> Change:
    """Disable (every token of the user refused at once) or enable a user again."""
    user = get_user(session, name)
    if disabled and name == by:
        raise UserError("you cannot disable yourself; another it-admin can")
    was, user.disabled = bool(user.disabled), disabled
    word = "disabled" if disabled else "enabled"
    return Change(user_json(user), word if was != disabled else f"already {word}")


def record_local(session: Session, command: str, action: str, target: str | None, detail: str) -> None:
    """An audit entry for a change made on the local ledger by `deepops <command>` (no server, no
    caller token): the action is named as the server's route for the same change."""
    try:
        actor = "local:" + getpass.getuser()
    except (KeyError, OSError):
        actor = "local"
    session.add(
        AuditEntry(
            at=store.now(),
            actor=actor[:64],
            role=None,
            method="CLI",
            path=("deepops " + command)[:255],
            action=action[:64],
            target=target[:128] if target else None,
            status_code=200,
            outcome="ok",
            detail=detail,
            client="local",
        )
    )


def parse_since(text: str, now: datetime) -> datetime:
    """`24h`, `7d` (that long ago), a date (`2026-10-01`, midnight UTC) or an ISO time."""
    from deepops_infra.durations import _WHOLE, parse_duration

    if _WHOLE.fullmatch(text.strip().lower()):
        return now - parse_duration(text, "--since")
    from deepops_infra.costs.period import parse_time

    try:
        return parse_time(text, "--since")
    except UserError:
        raise UserError(f"--since {text!r}: use a duration (24h, 7d), a date (2026-10-01) or a UTC time") from None


def read_audit(
    session: Session,
    since: datetime | None = None,
    user: str | None = None,
    action: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit entries, newest first. `action` matches a part of the action name (`role` finds
    `users_set_role`)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(max(1, min(limit, AUDIT_LIMIT)))
    if since is not None:
        query = query.where(AuditEntry.at >= since.astimezone(UTC))
    if user:
        query = query.where(AuditEntry.actor == user)
    if action:
        query = query.where(AuditEntry.action.contains(action.replace("-", "_"), autoescape=True))
    return [audit_json(r) for r in session.scalars(query)]


def audit_json(r: AuditEntry) -> dict[str, Any]:
    return {
        "id": r.id,
        "at": _iso(r.at),
        "actor": r.actor,
        "role": r.role,
        "method": r.method,
        "path": r.path,
        "action": r.action,
        "target": r.target,
        "status": r.status_code,
        "outcome": r.outcome,
        "detail": r.detail,
        "client": r.client,
    }
