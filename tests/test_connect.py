"""Connect, the parts that need no session: -L specs, command lines, ssh_config text and the
Include line, keys and known_hosts, the lease script's header, the proxy's arguments."""

import stat
import subprocess
from pathlib import Path

import pytest

from deepops_infra.cli.connect import forward_spec, remote_command
from deepops_infra.connect import keys, lease, proxy, sshconfig
from deepops_infra.connect.target import Endpoint
from deepops_infra.errors import UserError
from deepops_infra.pool import PoolHost
from deepops_infra.providers.onprem import session


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("8888", "8888:localhost:8888"),
        ("8888:localhost:8888", "8888:localhost:8888"),
        ("127.0.0.1:6006:127.0.0.1:6006", "127.0.0.1:6006:127.0.0.1:6006"),
        ("9000:[::1]:80", "9000:[::1]:80"),
    ],
)
def test_forward_specs(given: str, expected: str) -> None:
    assert forward_spec(given) == expected


@pytest.mark.parametrize("bad", ["0", "70000:localhost:1", "8888:localhost", "a:b:c:d", "8888:host name:80", ""])
def test_bad_forward_specs_say_the_form(bad: str) -> None:
    with pytest.raises(UserError, match=r"\[BIND:\]PORT:HOST:HOSTPORT"):
        forward_spec(bad)


def test_one_word_is_a_shell_line_several_are_argv() -> None:
    assert remote_command(["echo a; echo b"]) == "echo a; echo b"
    assert remote_command(["sh", "-c", 'echo "$X"']) == "sh -c 'echo \"$X\"'"


def _key(tmp_path: Path) -> str:
    _, public = keys.user_key(tmp_path / "home")
    return public


def test_user_key_is_private_and_its_fingerprint_is_openssh_s(tmp_path: Path) -> None:
    private, public = keys.user_key(tmp_path / "home")
    assert keys.user_key(tmp_path / "home") == (private, public)  # made once
    for path in (private, private.parent / "id_ed25519.pub"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    listed = subprocess.run(["ssh-keygen", "-lf", str(private)], capture_output=True, text=True, check=True)
    assert listed.stdout.split()[1] == keys.fingerprint(public)
    assert lease.check_public_key(public + " a comment") == public
    with pytest.raises(ValueError):
        lease.check_public_key("ssh-ed25519 not;base64")


def test_pinned_host_keys_replace_their_alias_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keys.pin_host_key(home, "deepops-m-1", "ssh-ed25519 AAAA1")
    keys.pin_host_key(home, "deepops-m-2", "ssh-ed25519 AAAA2")
    keys.pin_host_key(home, "deepops-m-1", "ssh-ed25519 AAAA3")
    assert keys.known_hosts(home).read_text() == "deepops-m-2 ssh-ed25519 AAAA2\ndeepops-m-1 ssh-ed25519 AAAA3\n"
    assert stat.S_IMODE(keys.known_hosts(home).stat().st_mode) == 0o600
    keys.forget_host_keys(home, {"deepops-m-1"})
    assert keys.known_hosts(home).read_text() == "deepops-m-1 ssh-ed25519 AAAA3\n"


def test_header_gives_the_host_key_or_the_reason() -> None:
    line = b"deepops-session 1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc deepops-lease\n"
    assert lease.parse_header(line) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"
    with pytest.raises(ValueError, match="no lease workspace"):
        lease.parse_header(b"deepops: no lease workspace at /x\n")
    with pytest.raises(ValueError, match="ended before"):
        lease.parse_header(b"")


def test_session_commands_local_and_over_the_pool_key(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from deepops_infra.config import Settings

    public = _key(tmp_path)
    settings = Settings(home=tmp_path)
    machine = SimpleNamespace(
        id="m-1", status="ready", ended_at=None, provider_refs={"workspace": "/srv/ws/m-1"}, cloud="onprem"
    )
    local = session.session_command(settings, PoolHost(name="localhost", connection="local"), machine, public)
    assert local.argv[:2] == ["sh", "-c"] and local.argv[-2:] == ["/srv/ws/m-1", public]
    box = PoolHost(name="box", connection="ssh", address="10.0.0.5", user="gpu", port=2222, key="/k")
    remote = session.session_command(settings, box, machine, public)
    assert remote.user == "gpu" and remote.argv[0] == "ssh" and "gpu@10.0.0.5" in remote.argv
    assert "ControlMaster=auto" in remote.argv  # the host connection the lease's steps keep is reused
    assert remote.argv[-1].startswith("sh -c ") and "/srv/ws/m-1" in remote.argv[-1]
    for workspace in ("/srv/ws/m 1", "relative/m-1", "/srv/ws/../m-1", "/srv/ws/$(id)"):
        machine.provider_refs = {"workspace": workspace}
        with pytest.raises(UserError, match="plain absolute path"):
            session.session_command(settings, box, machine, public)
    machine.ended_at, machine.status = "then", "terminated"
    with pytest.raises(UserError, match="only a running machine"):
        session.session_command(settings, box, machine, public)


def test_host_blocks_name_each_machine_once(tmp_path: Path) -> None:
    home = tmp_path / "my home"
    endpoints = [Endpoint("m-1", "train", "gpu"), Endpoint("m-2", "dup", "gpu"), Endpoint("m-3", "dup", "gpu")]
    text = sshconfig.host_blocks(home, "https://deepops.example", endpoints)
    hosts = [line for line in text.splitlines() if line.startswith("Host ")]
    assert hosts == ["Host deepops-m-1 deepops-train", "Host deepops-m-2", "Host deepops-m-3"]
    assert "  StrictHostKeyChecking yes" in text and "  User gpu" in text
    assert f'  IdentityFile "{home}/ssh/id_ed25519"' in text  # a path with a space is quoted
    assert "--server https://deepops.example m-1" in text and "token" not in text.lower()
    local = sshconfig.ssh_args(home, None, endpoints[0])
    assert local[:2] == ["-F", "/dev/null"] and any(a.endswith("--local m-1") for a in local)


def test_write_keeps_one_include_at_the_top(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user" / ".ssh").mkdir(parents=True)
    (tmp_path / "user" / ".ssh" / "config").write_text("Host old\n  User me\n")
    home = tmp_path / "home"
    path = sshconfig.write(home, "Host deepops-m-1\n")
    sshconfig.write(home, "Host deepops-m-2\n")
    config = (tmp_path / "user" / ".ssh" / "config").read_text()
    assert config.count(f"Include {path}") == 1 and config.index("Include") < config.index("Host old")
    assert config.endswith("Host old\n  User me\n")
    assert path.read_text() == "Host deepops-m-2\n" and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "argv", [[], ["m-1"], ["--home", "/h", "m-1"], ["--local", "m-1"], ["--home", "/h", "--bogus", "m-1"]]
)
def test_proxy_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert proxy.main(argv) == 2
    assert capsys.readouterr().err.startswith("deepops: usage:")


def test_proxy_refuses_an_unknown_machine_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DEEPOPS_HOME", str(home))  # the proxy sets it: restored after the test
    monkeypatch.delenv("DEEPOPS_LEDGER_URL", raising=False)
    assert proxy.main(["--home", str(home), "--local", "m-nope"]) == 2
    assert "no machine 'm-nope'" in capsys.readouterr().err
    assert not home.exists()
