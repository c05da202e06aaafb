"""OIDC: JWTs signed with a key generated here, its JWKS served on loopback; the server accepts
valid ones (mapped to user, team and role by claims) and refuses bad signature, expiry, issuer,
audience and unknown roles."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.test_server_fixtures import start_server, stop_server


def _key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks() -> Iterator[tuple[str, Any]]:
    key = _key()
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [public | {"kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json", key
    httpd.shutdown()


def sign(key: Any, **claims: Any) -> str:
    base = {"iss": "https://idp.test/", "aud": "deepops", "exp": int(time.time()) + 300}
    base |= {"preferred_username": "olga", "team": "ml", "deepops_role": "member"}
    return jwt.encode(base | claims, key, algorithm="RS256", headers={"kid": "k1"})


def test_oidc_tokens(tmp_path: Path, jwks: tuple[str, Any]) -> None:
    url, key = jwks
    config = f"server:\n  oidc:\n    jwks_url: {url}\n    issuer: https://idp.test/\n    audience: deepops\n"
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", config=config)
    try:
        with s.client(token=sign(key)) as c:
            assert c.get("/me").json() == {"user": "olga", "team": "ml", "role": "member", "token": None}
            assert c.get("/machines").status_code == 200 and c.get("/costs").status_code == 403
        with s.client(token=sign(key, deepops_role="finance", preferred_username="fred")) as c:
            assert c.get("/costs").status_code == 200
        refused = [
            sign(key, exp=int(time.time()) - 10),
            sign(key, iss="https://evil.test/"),
            sign(key, aud="other"),
            sign(key, deepops_role="root"),
            sign(key, team="Not A Label"),
            sign(_key()),  # signed by another key with the same kid
            sign(key)[:-4] + "AAAA",
        ]
        for token in refused:
            with s.client(token=token) as c:
                r = c.get("/me")
                assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        with s.client("alice") as c:  # API tokens keep working beside OIDC
            assert c.get("/me").json()["user"] == "alice"
    finally:
        stop_server(s)


def test_oidc_config_is_checked(tmp_path: Path) -> None:
    config = "server:\n  oidc:\n    jwks_url: http://idp.example/jwks\n    issuer: x\n    audience: y\n"
    with pytest.raises(AssertionError, match=r"config.yaml:3.*must be https"):
        start_server(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", config=config)
