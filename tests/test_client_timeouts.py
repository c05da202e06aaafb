"""A release through the team server waits as long as the release takes, whatever an ordinary
call's timeout is (a loaded server, a cloud teardown or a launch stopping first take minutes)."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deepops_infra import client

MACHINE = {"id": "m-0123abcd", "status": "ready", "ended_at": None}
ENDED = {**MACHINE, "status": "terminated", "ended_at": "2026-12-03T12:00:00Z"}


class SlowRelease(BaseHTTPRequestHandler):
    delay = 2.0

    def _answer(self, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._answer(MACHINE)

    def do_DELETE(self) -> None:
        time.sleep(self.delay)  # longer than the client's ordinary timeout below
        self._answer({"machine": ENDED, "cost_line": "m-0123abcd terminated after 1m: $0.01"})

    def log_message(self, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client that gave up closed its end: expected in the timeout test


@pytest.fixture
def slow_server() -> Iterator[str]:
    httpd = QuietServer(("127.0.0.1", 0), SlowRelease)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_down_waits_for_the_release_past_the_ordinary_timeout(
    slow_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client.Client, "from_env", classmethod(lambda cls: cls(slow_server, "tok", timeout=0.5)))
    client.down(["m-0123abcd"], yes=True, json_out=True)
    [ended] = json.loads(capsys.readouterr().out)
    assert ended["status"] == "terminated"


def test_an_ordinary_call_keeps_its_timeout(slow_server: str) -> None:
    with pytest.raises(client.OperationError, match="cannot reach the server"):
        client.Client(slow_server, "tok", timeout=0.5).call("DELETE", "/machines/m-0123abcd")
