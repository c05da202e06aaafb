"""Team mode: what `deepops ssh`, ssh-config and the proxy ask the server (deepops_infra/server/
sessions.py) before a session: the machines' ssh endpoints, and the user's public key, registered
once per key so the server can let that key (and only it) into a session the user opens."""

import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.connect import keys
from deepops_infra.connect.target import Endpoint

if TYPE_CHECKING:
    from deepops_infra.client import Client

KEY_UNKNOWN = "ssh-key-unknown"  # the problem code of a session refused for an unregistered key


def client(server: str | None = None) -> "Client":
    """The API client (token from DEEPOPS_TOKEN or `deepops login`), for `server` or DEEPOPS_SERVER."""
    from deepops_infra.client import Client

    if server:
        os.environ["DEEPOPS_SERVER"] = server
    return Client.from_env()


def register_key(api: "Client", public_key: str) -> None:
    api.call("POST", "/me/ssh-keys", {"public_key": public_key})


def _endpoint(data: dict[str, Any]) -> Endpoint:
    return Endpoint(id=data["id"], name=data.get("name"), user=data["user"])


def _fingerprint(home: Path) -> str | None:
    """The fingerprint of the user's key when there is one yet (none is made before the server
    has said the machine exists)."""
    public = keys.ssh_dir(home, create=False) / f"{keys.KEY_NAME}.pub"
    try:
        return keys.fingerprint(public.read_text())
    except (OSError, ValueError, IndexError):
        return None


def _registered(api: "Client", home: Path, data: dict[str, Any]) -> None:
    _, public = keys.user_key(home)
    if not data.get("key_registered") or data.get("key") != keys.fingerprint(public):
        register_key(api, public)


def endpoint(api: "Client", ref: str, home: Path) -> Endpoint:
    """One machine's endpoint (404 for a machine the user may not open); the user's key made and
    registered when the server does not know it yet."""
    fingerprint = _fingerprint(home)
    data = api.call("GET", f"/machines/{urllib.parse.quote(ref, safe='')}/connect", params={"key": fingerprint})
    _registered(api, home, data | {"key": fingerprint})
    return _endpoint(data)


def endpoints(api: "Client", home: Path) -> list[Endpoint]:
    """The endpoints of the running machines the user may open sessions into."""
    fingerprint = _fingerprint(home)
    data = api.call("GET", "/connect", params={"key": fingerprint})
    _registered(api, home, data | {"key": fingerprint})
    return [_endpoint(m) for m in data["machines"]]
