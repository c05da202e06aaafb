"""Administration without surprises: a token never changes its user's role or team (the old
`tokens create --user alice --role it-admin` promoted alice's tokens), roles change through
`deepops users set-role` and every change is audited; a disabled user's tokens are all refused at
once; `deepops audit` reads the log with its filters; `tokens ls` shows role, team and last use.
The rules run on both ledgers, locally and through a real server."""

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from deepops_infra.errors import NotFoundError, UserError
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.server import accounts, identity
from tests.conftest import Deepops, declared_pool, wait_for
from tests.test_server_fixtures import make_token, start_server, stop_server


def _caller(ledger: Ledger, token: str) -> Any:
    with ledger.read() as session:
        return identity.authenticate(session, token, store.now())


def test_roles_change_only_explicitly_and_disabling_refuses_every_token(ledger_url: str, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir(exist_ok=True)
    ledger = Ledger(ledger_url)
    first = make_token(ledger, "alice", "ml", "member")
    second = make_token(ledger, "alice", None, None)  # an existing user: no team or role needed
    make_token(ledger, "alice", "ml", "member")  # the same role and team again: fine
    # the bug this guards against: a token "for alice as it-admin" promoted alice's existing tokens
    with pytest.raises(UserError, match=r"is a member; .*`deepops users set-role alice it-admin`"):
        make_token(ledger, "alice", None, "it-admin")
    with pytest.raises(UserError, match="users set-team alice cv"):
        make_token(ledger, "alice", "cv", None)
    assert _caller(ledger, first).role == _caller(ledger, second).role == "member"

    with ledger.write() as session:
        change = accounts.set_role(session, "alice", "team-admin", by="ivan")
        accounts.record_local(session, "users set-role", "users_set_role", "alice", change.detail)
    assert change.detail == "role member -> team-admin"
    assert _caller(ledger, first).role == _caller(ledger, second).role == "team-admin"

    with ledger.write() as session:
        accounts.set_disabled(session, "alice", True, by="ivan")
        accounts.record_local(session, "users disable", "users_disable", "alice", "disabled")
    assert _caller(ledger, first) is None and _caller(ledger, second) is None
    with pytest.raises(UserError, match="disabled: run `deepops users enable alice`"):
        make_token(ledger, "alice", None, None)
    with ledger.write() as session, pytest.raises(UserError, match="cannot disable yourself"):
        accounts.set_disabled(session, "alice", True, by="alice")
    with ledger.read() as session, pytest.raises(NotFoundError):
        accounts.set_role(session, "nobody", "member", by="ivan")

    now = store.now()
    with ledger.read() as session:
        (user,) = accounts.list_users(session, now)
        tokens = [identity.token_json(t, now, u) for t, u in identity.list_tokens(session)]
        entries = accounts.read_audit(session, action="role")
        assert [e["action"] for e in accounts.read_audit(session, since=now - timedelta(hours=1))] == [
            "users_disable",
            "users_set_role",
        ]
        assert accounts.read_audit(session, since=now + timedelta(minutes=1)) == []
        assert accounts.read_audit(session, user="someone-else") == []
    assert user["disabled"] and user["role"] == "team-admin" and user["active_tokens"] == 3
    assert {(t["role"], t["team"], t["state"]) for t in tokens} == {("team-admin", "ml", "disabled")}
    assert [(e["target"], e["detail"], e["client"]) for e in entries] == [
        ("alice", "role member -> team-admin", "local")
    ]
    ledger.close()


def test_last_use_is_written_in_batches(ledger_url: str, tmp_path: Path) -> None:
    from deepops_infra.server.token_use import TokenUse

    (tmp_path / "home").mkdir(exist_ok=True)
    ledger = Ledger(ledger_url)
    secret = make_token(ledger, "bob", "ml", "member")
    who = _caller(ledger, secret)
    use = TokenUse()
    use.note(who.token_id, ledger)  # noted, not written yet
    with ledger.read() as session:
        assert identity.list_tokens(session)[0][0].last_used_at is None
    use.flush(ledger)
    with ledger.read() as session:
        first = identity.list_tokens(session)[0][0].last_used_at
    assert first is not None and store.now() - first < timedelta(minutes=5)
    use.flush(ledger)  # nothing noted: nothing written
    ledger.close()


def test_since_accepts_durations_dates_and_times() -> None:
    now = store.now()
    assert accounts.parse_since("2h", now) == now - timedelta(hours=2)
    assert accounts.parse_since("2026-10-01", now).isoformat() == "2026-10-01T00:00:00+00:00"
    with pytest.raises(UserError, match="--since 'yesterday'"):
        accounts.parse_since("yesterday", now)


def test_users_and_audit_commands_on_the_local_ledger(deepops: Deepops) -> None:
    made = deepops.json("tokens", "create", "--user", "alice", "--team", "ml", "--role", "member")
    assert made["role"] == "member" and made["team"] == "ml"
    proc = deepops.run("tokens", "create", "--user", "alice", "--role", "it-admin")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "deepops: error: user 'alice' is a member; a token does not change roles: "
        "run `deepops users set-role alice it-admin` first"
    ]
    changed = deepops.json("users", "set-role", "alice", "it-admin")
    assert changed["role"] == "it-admin" and changed["change"] == "role member -> it-admin"
    assert deepops.json("users", "disable", "alice")["disabled"] is True
    proc = deepops.run("users", "set-role", "alice", "king")
    assert proc.returncode == 2 and "use one of member, team-admin, it-admin, finance" in proc.stderr
    (token,) = deepops.json("tokens", "ls")
    assert (token["user"], token["role"], token["team"], token["state"]) == ("alice", "it-admin", "ml", "disabled")
    assert token["last_used_at"] is None
    table = deepops.run("tokens", "ls", check=True).stdout
    assert "LAST USED" in table and "never" in table
    users = deepops.json("users", "ls")
    assert [(u["name"], u["role"], u["disabled"]) for u in users] == [("alice", "it-admin", True)]
    entries = deepops.json("audit", "--action", "users", "--since", "1h")
    assert [(e["action"], e["target"], e["detail"], e["client"]) for e in entries] == [
        ("users_disable", "alice", "disabled", "local"),
        ("users_set_role", "alice", "role member -> it-admin", "local"),
    ]
    actor = entries[0]["actor"]
    assert actor.startswith("local:") and len(deepops.json("audit", "--user", actor)) == 3  # the token too
    proc = deepops.run("audit", "--since", "last week")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1


def _remote(s: Any, tmp_path: Path, token: str) -> Deepops:
    env = {k: v for k, v in s.env.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(tmp_path / "laptop"), DEEPOPS_SERVER=s.url, DEEPOPS_TOKEN=token)
    return Deepops(home=tmp_path / "laptop", env=env)


@pytest.mark.slow
def test_administration_through_the_server(tmp_path: Path) -> None:
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        (s.home / "pool.yaml").write_text(declared_pool(2))
        ivan, alice = _remote(s, tmp_path, s.tokens["ivan"]), _remote(s, tmp_path, s.tokens["alice"])
        proc = alice.run("users", "ls")
        assert proc.returncode == 2 and "403" in proc.stderr
        proc = ivan.run("tokens", "create", "--user", "alice", "--role", "it-admin")
        assert proc.returncode == 2 and "`deepops users set-role alice it-admin`" in proc.stderr
        with s.client("alice") as a, s.client("bob") as b, s.client("tina") as t:
            assert a.get("/me").json()["role"] == "member" and b.get("/me").status_code == 200
            assert t.get("/me").status_code == 200  # cached now
            assert ivan.json("users", "set-role", "alice", "team-admin")["change"] == "role member -> team-admin"
            assert a.get("/me").json()["role"] == "team-admin"  # at once: the change cleared the cache
            assert ivan.json("users", "disable", "bob")["disabled"] is True
            assert b.get("/me").status_code == 401
            # a change made elsewhere (the local CLI on the server's machine) holds within AUTH_CACHE_SECONDS
            local = Deepops(home=s.home, env=s.env)
            assert local.run("users", "disable", "tina").returncode == 0
            wait_for(lambda: t.get("/me").status_code == 401, timeout=60, what="tina refused")
            available = a.get("/available").json()
            pool = s.client("ivan").get("/pool/gpus").json()
        onprem = next(x for x in available["targets"] if x["target"] == "onprem")
        assert onprem["ready"] and onprem["models"] == {"A100-80GB": [1, 2]}
        assert all(not x["ready"] and x["why"] for x in available["targets"] if x["target"] != "onprem")  # no pulumi
        assert pool["hosts"][0]["free_by_model"] == {"A100-80GB": 2} and pool["hosts"][0]["total"] == 2
        entries = ivan.json("audit", "--user", "ivan", "--action", "users")
        assert [(e["action"], e["target"], e["detail"], e["client"]) for e in entries] == [
            ("users_disable", "bob", "disabled", "127.0.0.1"),
            ("users_set_role", "alice", "role member -> team-admin", "127.0.0.1"),
        ]
        assert ivan.json("audit", "--action", "disable", "--limit", "1")[0]["target"] == "tina"  # the local one
        proc = ivan.run("users", "disable", "ivan")
        assert proc.returncode == 2 and "cannot disable yourself" in proc.stderr
        tokens = {t["user"]: t for t in ivan.json("tokens", "ls")}
        assert tokens["alice"]["role"] == "team-admin" and tokens["alice"]["last_used_at"] is not None
        assert tokens["bob"]["state"] == "disabled" and tokens["fiona"]["last_used_at"] is None
        table = ivan.run("audit", check=True).stdout
        assert "127.0.0.1" in table and "role member -> team-admin" in table
        assert json.loads(ivan.run("users", "enable", "bob", "--json", check=True).stdout)["disabled"] is False
    finally:
        stop_server(s)


def test_the_form_offers_what_can_be_had_now(ledger_url: str, tmp_path: Path) -> None:
    """Free pool GPUs on one host and a cloud's catalog shapes only while it can launch, within
    the GPUs the team may still start, and its real maximum lifetime."""
    from deepops_infra.config import Settings
    from deepops_infra.ledger.schema import GpuLease, Machine
    from deepops_infra.server.availability import requestable
    from tests.test_server_fixtures import seed_machine

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "pool.yaml").write_text(declared_pool(3))
    (home / "config.yaml").write_text(
        "policy:\n  teams:\n    ml:\n      max_gpus_running: 4\n      max_ttl: 12h\n"
        "      targets: [onprem, aws, gcp]\n      gpu_models: [A100-80GB, H100]\n"
    )
    settings = Settings(home=home)
    ledger = Ledger(ledger_url)
    seed_machine(ledger, "m-alice001", "alice", "ml")
    with ledger.write() as session:
        session.add(GpuLease(machine_id="m-alice001", host="localhost", gpu_index=0, leased_at=store.now()))
        session.get(Machine, "m-alice001").gpu_count = 1
    ready = {"aws": (True, ""), "gcp": (False, "no GCP credentials")}
    with ledger.read() as session:
        got = requestable(settings, session, "ml", lambda cloud: ready[cloud])
    ledger.close()
    assert (got["running_gpus"], got["max_gpus"], got["max_ttl_seconds"]) == (1, 3, 12 * 3600)
    targets = {t["target"]: t for t in got["targets"]}
    assert targets["onprem"]["models"] == {"A100-80GB": [1, 2]}  # two of three free, on one host
    aws = targets["aws"]["models"]
    assert targets["aws"]["ready"] and aws and set(aws) <= {"A100-80GB", "H100-80GB"}  # the models allowed
    assert all(n <= 3 for counts in targets["aws"]["models"].values() for n in counts)  # no 8-GPU shapes
    assert targets["gcp"] == {"target": "gcp", "ready": False, "why": "no GCP credentials", "models": {}}
