"""Messages to people (reaper warnings, budget alerts) through one webhook, each sent once.

Configuration (`notify:` in config.yaml): `webhook_url` (Slack incoming webhooks and anything
that takes the same JSON: `{"text": ..., "blocks": [...]}`), `timeout_seconds` (default 5).
The URL is a secret: it is never logged or stored in the ledger. Each message is recorded in the
`notifications` table under a unique key and delivered once, also when two processes try at once.
One not delivered (no webhook configured, or the webhook failed) stays recorded as such and is
delivered by a later call with the same key (the next reaper cycle or `deepops cost budgets`):
configuring a webhook later still brings the alerts of the month, each once.
"""

import json
import os
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import not_, or_, select, update
from sqlalchemy.exc import IntegrityError

from deepops_infra.config import Settings
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Notification
from deepops_infra.yamlfile import FileError

NO_WEBHOOK = "no webhook configured (notify.webhook_url)"
CLAIM_MARGIN = timedelta(seconds=30)  # a claim older than the webhook timeout and this: its process died


@dataclass(frozen=True)
class Webhook:
    url: str | None
    timeout: float = 5.0


def webhook(settings: Settings) -> Webhook:
    section = settings.config.section("notify")
    url = os.environ.get("DEEPOPS_WEBHOOK_URL") or section.get("webhook_url")
    if url is not None and not str(url).startswith(("https://", "http://")):
        raise FileError(
            settings.config.path or settings.config_path,
            section.line_of("webhook_url"),
            "notify.webhook_url must be an http(s) URL",
        )
    timeout = section.get("timeout_seconds", 5)
    return Webhook(url=str(url) if url else None, timeout=float(timeout))


def configured(settings: Settings) -> bool:
    """Whether a webhook is set (a malformed one counts: sending says what is wrong with it)."""
    try:
        return webhook(settings).url is not None
    except FileError:
        return True


def slack_body(text: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    """A Slack-compatible message: plain `text` for any receiver, `blocks` for Slack."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if fields:
        blocks.append(
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields.items()]}
        )
    return {"text": text, "blocks": blocks}


def post(hook: Webhook, body: dict[str, Any]) -> str | None:
    """POST the body; None on success, else what went wrong (without the URL)."""
    if not hook.url:
        return NO_WEBHOOK
    request = urllib.request.Request(
        hook.url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=hook.timeout) as response:
            return None if 200 <= response.status < 300 else f"webhook answered HTTP {response.status}"
    except OSError as exc:
        return f"webhook failed: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"


@dataclass(frozen=True)
class Sent:
    """What send_once did: recorded the message first, delivered it, or why it is not delivered."""

    first: bool  # this call recorded it (a new message)
    delivered: bool = False  # this call delivered it
    error: str | None = None  # why it is still not delivered (None: delivered, now or before, or in flight)

    def __bool__(self) -> bool:
        """True when this call delivered the message."""
        return self.delivered

    @property
    def no_webhook(self) -> bool:
        return self.error == NO_WEBHOOK

    def describe(self) -> str:
        if self.delivered:
            return "delivered"
        if self.no_webhook:
            return "not delivered (no webhook configured)"
        return f"not delivered: {self.error}" if self.error else "delivered before or being delivered"


def send_once(
    settings: Settings,
    ledger: Ledger,
    key: str,
    kind: str,
    text: str,
    fields: dict[str, str] | None = None,
    machine_id: str | None = None,
) -> Sent:
    """Record a message under its key and deliver it, once. A message recorded before and not
    delivered yet is delivered now (its recorded body), by one process at a time."""
    try:
        hook, problem = webhook(settings), None
    except FileError as exc:  # recorded all the same: a warning's grace must start
        hook, problem = Webhook(None), str(exc)
    problem = problem or (None if hook.url else NO_WEBHOOK)
    now = store.now()
    row = Notification(key=key, kind=kind, machine_id=machine_id, at=now, body=slack_body(text, fields), error=problem)
    if problem is None:  # this call's attempt, claimed with the row
        row.attempts, row.sending_since = 1, now
    try:
        with ledger.write() as session:
            first = session.scalar(select(Notification.id).where(Notification.key == key)) is None
            if first:
                session.add(row)
    except IntegrityError:  # another process recorded the same key first
        first = False
    if not first:
        return _retry(hook, problem, ledger, key)
    if problem is not None:
        return Sent(first=True, error=problem)
    return _deliver(hook, ledger, key, row.body, first=True)


def _retry(hook: Webhook, problem: str | None, ledger: Ledger, key: str) -> Sent:
    """Deliver a message recorded before, unless it was delivered or another process is at it."""
    with ledger.read() as session:
        if session.scalar(select(Notification.delivered).where(Notification.key == key)):
            return Sent(first=False)
    if problem is not None:
        return Sent(first=False, error=problem)
    now = store.now()
    with ledger.write() as session:
        claimed = session.execute(
            update(Notification)
            .where(
                Notification.key == key,
                not_(Notification.delivered),
                or_(
                    Notification.sending_since.is_(None),
                    Notification.sending_since < now - timedelta(seconds=hook.timeout) - CLAIM_MARGIN,
                ),
            )
            .values(sending_since=now, attempts=Notification.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:
            return Sent(first=False)
        body = session.scalar(select(Notification.body).where(Notification.key == key))
    return _deliver(hook, ledger, key, body, first=False)


def _deliver(hook: Webhook, ledger: Ledger, key: str, body: dict[str, Any], first: bool) -> Sent:
    """POST a claimed message and record how it went (the claim ends)."""
    error = post(hook, body)
    with ledger.write() as session:
        row = session.scalars(select(Notification).where(Notification.key == key)).one()
        row.delivered, row.error, row.sending_since = error is None, error, None
        if error is None:
            row.delivered_at = store.now()
    return Sent(first=first, delivered=error is None, error=error)
