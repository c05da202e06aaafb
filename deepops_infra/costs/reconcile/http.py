"""A small JSON-over-HTTPS client for the billing APIs (BigQuery, Azure Cost Management).

The bearer token is never put in a message or log; errors name the service and HTTP status.
"""

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from deepops_infra.errors import OperationError

TokenProvider = Callable[[], str]


def call(
    service: str,
    method: str,
    url: str,
    token: TokenProvider,
    body: dict[str, Any] | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {token()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}", parse_float=Decimal)
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            payload = json.loads(exc.read() or b"{}")
            error = payload.get("error", {})
            detail = error.get("message", "") if isinstance(error, dict) else str(error)
        except (ValueError, OSError):
            pass
        raise OperationError(f"{service}: HTTP {exc.code}{': ' + detail if detail else ''}") from None
    except (OSError, ValueError) as exc:
        raise OperationError(f"{service}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
