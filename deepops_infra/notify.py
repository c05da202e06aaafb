"""Messages to people (reaper warnings, budget alerts) through one webhook, each sent once.

Configuration (`notify:` in config.yaml): `webhook_url` (Slack incoming webhooks and anything
that takes the same JSON: `{"text": ..., "blocks": [...]}`), `timeout_seconds` (default 5).
The URL is a secret: it is never logged or stored in the ledger. Delivery is recorded in the
`notifications` table under a unique key, so the same message is never sent twice, also when
two processes try at once.
"""

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from deepops_infra.config import Settings
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Notification
from deepops_infra.yamlfile import FileError


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
        return "no webhook configured (notify.webhook_url)"
    request = urllib.request.Request(
        hook.url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=hook.timeout) as response:
            return None if 200 <= response.status < 300 else f"webhook answered HTTP {response.status}"
    except OSError as exc:
        return f"webhook failed: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def send_once(
    settings: Settings,
    ledger: Ledger,
    key: str,
    kind: str,
    text: str,
    fields: dict[str, str] | None = None,
    machine_id: str | None = None,
) -> bool:
    """Send a message unless one with this key was already recorded; True when this call sent it."""
    body = slack_body(text, fields)
    try:
        with ledger.write() as session:
            if session.scalar(select(Notification.id).where(Notification.key == key)) is not None:
                return False
            session.add(Notification(key=key, kind=kind, machine_id=machine_id, at=store.now(), body=body))
    except IntegrityError:  # another process claimed the same key first
        return False
    error = post(webhook(settings), body)
    with ledger.write() as session:
        row = session.scalars(select(Notification).where(Notification.key == key)).one()
        row.delivered, row.error = error is None, error
    return True
