"""Schemathesis against the server's own OpenAPI document: generated requests (valid and not) to
every operation find no server error. Bounded examples keep it well under a minute."""

import subprocess
import sys
from pathlib import Path

from tests.test_server_fixtures import seed_machine, start_server, stop_server


def test_openapi_fuzzing_finds_no_server_error(tmp_path: Path) -> None:
    s = start_server(
        tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", config="server:\n  rate_per_second: 1000\n  burst: 1000\n"
    )
    # An empty pool: a generated request that happens to be valid is refused for capacity instead of
    # starting a real lease; adding hosts is left out for the same reason.
    (s.home / "pool.yaml").write_text("include_localhost: false\nhosts: []\n")
    ledger = s.ledger()
    seed_machine(ledger, "m-alice001", "alice", "ml")
    ledger.close()
    try:
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                s.url + "/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "12",
                "--seed",
                "8",
                "--header",
                f"Authorization: Bearer {s.tokens['ivan']}",
                "--exclude-operation-id",
                "pool_add_api_v1_pool_hosts_post",
                "--request-timeout",
                "30",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=s.env,
        )
        report = proc.stdout + proc.stderr
        assert proc.returncode == 0, report[-4000:] + "\n" + s.log()[-3000:]
        import re

        counts = re.search(r"(\d+) generated, (\d+) passed", report)
        assert counts and counts[1] == counts[2] and int(counts[1]) > 200, report[-2000:]
        assert "Rate limited" not in report
        assert "500 Internal Server Error" not in s.log()
    finally:
        stop_server(s)
