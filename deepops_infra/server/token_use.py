"""When each API token was last used (`deepops tokens ls`, LAST USED).

Noting a use is a dict write on the request path; the ledger gets the noted times in one write
transaction at most every FLUSH_SECONDS (from a short-lived thread), when tokens are listed
through this server, and when the server stops. A token's last use in the ledger is therefore at
most FLUSH_SECONDS old (per server process)."""

import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import update

from deepops_infra.ledger import store
from deepops_infra.ledger.schema import ApiToken

FLUSH_SECONDS = 60.0


class TokenUse:
    def __init__(self) -> None:
        self._seen: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()
        self._busy = False

    def note(self, token_id: str | None, ledger: Any) -> None:
        """Remember that `token_id` was used now; start a flush when the last one is old enough."""
        if token_id is None:
            return
        start = False
        with self._lock:
            self._seen[token_id] = store.now()
            if not self._busy and time.monotonic() - self._flushed >= FLUSH_SECONDS:
                self._busy = start = True
        if start:
            threading.Thread(target=self._flush_once, args=(ledger,), name="deepops-token-use", daemon=True).start()

    def _flush_once(self, ledger: Any) -> None:
        try:
            self.flush(ledger)
        finally:
            self._busy = False

    def flush(self, ledger: Any) -> None:
        """Write the noted uses (a time never moves back: an older one does not overwrite a newer).
        A failed write fails nothing else: the uses are kept for the next flush."""
        with self._lock:
            seen, self._seen = self._seen, {}
            self._flushed = time.monotonic()
        if not seen:
            return
        try:
            with ledger.write() as session:
                for token_id, at in seen.items():
                    session.execute(
                        update(ApiToken)
                        .where(ApiToken.id == token_id)
                        .where(ApiToken.last_used_at.is_(None) | (ApiToken.last_used_at < at))
                        .values(last_used_at=at)
                    )
        except Exception:  # a last-use time is not worth failing a request or a shutdown
            with self._lock:  # not written: keep them (newer notes win)
                self._seen = seen | self._seen
