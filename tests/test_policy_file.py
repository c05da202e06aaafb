"""policy.yaml: team policies set through `deepops policy` and the API, merged with config.yaml
(one place per team), parsed by the config's rules with that file's line numbers, written
atomically. The CLI commands run as real subprocesses."""

import json
import os
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from deepops_infra.config import Settings, TeamPolicy
from deepops_infra.errors import NotFoundError, UserError
from deepops_infra.policy_file import DefinedInConfig, listing, remove_team, set_team
from deepops_infra.yamlfile import FileError
from tests.conftest import Deepops

CONFIG = """\
# IT's file, with comments that must survive
policy:
  default:
    max_ttl: 2d
    targets: [onprem, aws]
  teams:
    vision:
      max_gpus_running: 16
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "config.yaml").write_text(CONFIG)
    return tmp_path


def settings_in(home: Path) -> Settings:
    return Settings(home=home)


def error_of(home: Path, policy_yaml: str) -> str:
    (home / "policy.yaml").write_text(policy_yaml)
    with pytest.raises(UserError) as info:
        settings_in(home).config  # noqa: B018 (reading it parses it)
    return str(info.value)


# --- reading and merging -------------------------------------------------------------------------


def test_policy_file_teams_inherit_config_default(home: Path) -> None:
    (home / "policy.yaml").write_text("teams:\n  ml:\n    max_gpus_running: 2\n    gpu_models: a100\n")
    config = settings_in(home).config
    assert config.policy_for("ml") == TeamPolicy(
        targets=("onprem", "aws"), gpu_models=("A100",), max_gpus_running=2, max_ttl=timedelta(days=2)
    )
    assert config.policy_for("vision").max_gpus_running == 16
    assert config.team_origins == {"vision": (home / "config.yaml", 7), "ml": (home / "policy.yaml", 2)}


def test_missing_or_empty_policy_file_changes_nothing(home: Path) -> None:
    base = settings_in(home).file_config
    assert settings_in(home).config == base
    (home / "policy.yaml").write_text("# nothing yet\n")
    assert settings_in(home).config == base
    (home / "policy.yaml").write_text("teams:\n")
    assert settings_in(home).config == base


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("teams:\n  ml:\n    max_gpus: 2\n", "policy.yaml:3: unknown policy rule 'max_gpus'; known: "),
        ("teams:\n  ml:\n    targets: [onprem]\n    max_ttl: 8x\n", "policy.yaml:4: max_ttl: '8x' is not a duration"),
        (
            "teams:\n  ml:\n\n    targets: mars\n",
            "policy.yaml:4: unknown target 'mars'; known: onprem, aws, gcp, azure",
        ),
        ("teams:\n  ml:\n    max_gpus_running: -1\n", "policy.yaml:3: max_gpus_running must be a whole number >= 0"),
        ("teams:\n  ml: 4\n", "policy.yaml:2: teams.ml must be a mapping of rules"),
        ("teams:\n  ml:\n    gpu_models: [Z9]\n", "policy.yaml:3: unknown GPU model 'Z9' in gpu_models"),
        ("teams: [ml]\n", "policy.yaml:1: teams must map team names to rules"),
        ("# policies\npolicy:\n  teams: {}\n", "policy.yaml:2: unknown setting 'policy'; known: teams"),
        ("teams:\n  ok: {}\n  Bad Team: {}\n", "policy.yaml:3: team: 'Bad Team' is not allowed"),
        ("teams:\n\tml: {}\n", "policy.yaml:2: invalid YAML"),
    ],
)
def test_policy_file_errors_name_its_lines(home: Path, text: str, expected: str) -> None:
    message = error_of(home, text)
    assert message.startswith(str(home / expected.split(":", 1)[0]))
    assert expected.split("policy.yaml", 1)[1] in message
    assert "\n" not in message


def test_team_in_both_files_is_one_line_error_naming_both(home: Path) -> None:
    message = error_of(home, "teams:\n  ml: {}\n  vision:\n    max_gpus_running: 2\n")
    assert message == (
        f"{home / 'policy.yaml'}:3: team 'vision' is also defined in {home / 'config.yaml'}:7 "
        "(policy.teams.vision); keep it in one file"
    )


def test_policy_file_setting_moves_it(home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("it") / "teams.yaml"
    (home / "config.yaml").write_text(CONFIG + f"policy_file: {elsewhere}\n")
    elsewhere.write_text("teams:\n  ml: {max_gpus_running: 1}\n")
    (home / "policy.yaml").write_text("teams:\n  ml: {max_gpus_running: 5}\n")  # not read any more
    s = settings_in(home)
    assert s.policy_path == elsewhere
    assert s.config.policy_for("ml").max_gpus_running == 1
    set_team(s, "nlp", {"max_gpus_running": 3})
    assert "nlp" in elsewhere.read_text() and "nlp" not in (home / "policy.yaml").read_text()


def test_settings_follow_the_file_when_it_changes(home: Path) -> None:
    s = settings_in(home)
    assert s.config.policy_for("ml").max_gpus_running == 8
    other = settings_in(home)  # as another process would: the CLI beside a running server
    set_team(other, "ml", {"max_gpus_running": 1})
    assert s.config.policy_for("ml").max_gpus_running == 1
    remove_team(other, "ml")
    assert s.config.policy_for("ml").max_gpus_running == 8
    assert s.config is s.config  # unchanged file: not parsed again


# --- writing ---------------------------------------------------------------------------------------


def test_set_writes_canonical_rules_and_keeps_config_yaml(home: Path) -> None:
    s = settings_in(home)
    entry = set_team(s, "ml", {"gpu_models": ["a100", "H100"], "max_ttl": "90m", "max_gpus_running": 2})
    assert entry == {
        "team": "ml",
        "source": "policy.yaml",
        "file": str(home / "policy.yaml"),
        "line": 4,
        "rules": {"gpu_models": ["A100", "H100"], "max_gpus_running": 2, "max_ttl": "1h30m"},
        "policy": {
            "targets": ["onprem", "aws"],
            "gpu_models": ["A100", "H100"],
            "max_gpus_running": 2,
            "max_ttl": "1h30m",
            "default_ttl": "1h30m",  # capped at max_ttl, as in config.yaml
            "default_idle_timeout": "1h",
            "max_idle_timeout": "1d",
        },
    }
    assert (home / "config.yaml").read_text() == CONFIG
    # merge keeps the other rules; a plain set replaces the entry
    set_team(s, "ml", {"max_gpus_running": 4}, merge=True)
    assert settings_in(home).config.policy_for("ml").gpu_models == ("A100", "H100")
    set_team(s, "ml", {"max_gpus_running": 4})
    assert settings_in(home).config.policy_for("ml").gpu_models == ("*",)
    assert [t["team"] for t in listing(s)["teams"]] == ["ml", "vision"]


def test_write_is_atomic_0644_and_leaves_no_temp_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_in(home)
    old = os.umask(0o077)  # the mode does not depend on the caller's umask
    try:
        set_team(s, "ml", {"max_gpus_running": 2})
    finally:
        os.umask(old)
    path = home / "policy.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    before, inode = path.read_bytes(), path.stat().st_ino
    set_team(s, "nlp", {"max_gpus_running": 3})
    assert path.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        set_team(s, "cv", {"max_gpus_running": 1})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in home.iterdir()) == [".policy.yaml.lock", "config.yaml", "policy.yaml"]


def test_concurrent_writers_lose_nothing(home: Path) -> None:
    teams = [f"team{i}" for i in range(12)]
    threads = [
        threading.Thread(target=set_team, args=(settings_in(home), t, {"max_gpus_running": i}))
        for i, t in enumerate(teams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    config = settings_in(home).config
    assert {t: config.policy_for(t).max_gpus_running for t in teams} == {t: i for i, t in enumerate(teams)}


def test_refusals_write_nothing(home: Path) -> None:
    s = settings_in(home)
    set_team(s, "ml", {"max_gpus_running": 2})
    before = (home / "policy.yaml").read_bytes()
    with pytest.raises(DefinedInConfig, match=r"team 'vision' is defined in .*config.yaml line 7 .*edit config.yaml"):
        set_team(s, "vision", {"max_gpus_running": 2})
    with pytest.raises(DefinedInConfig):
        remove_team(s, "vision")
    with pytest.raises(UserError, match=r"^max_ttl: '8x' is not a duration"):
        set_team(s, "ml", {"max_ttl": "8x"})
    with pytest.raises(UserError, match=r"^unknown policy rule 'max_gpus'"):
        set_team(s, "ml", {"max_gpus": 1})
    with pytest.raises(UserError, match=r"^team: 'ML' is not allowed"):
        set_team(s, "ML", {"max_gpus_running": 1})
    with pytest.raises(NotFoundError, match="team 'nlp' has no policy in"):
        remove_team(s, "nlp")
    assert (home / "policy.yaml").read_bytes() == before
    # a hand-broken file is reported with its line, not overwritten
    (home / "policy.yaml").write_text("teams:\n  ml:\n    max_gpus: 1\n")
    with pytest.raises(FileError, match=r"policy.yaml:3: unknown policy rule 'max_gpus'"):
        set_team(s, "nlp", {"max_gpus_running": 1})
    assert (home / "policy.yaml").read_text() == "teams:\n  ml:\n    max_gpus: 1\n"


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_set_ls_rm(sqlite_deepops: Deepops) -> None:
    d = sqlite_deepops
    d.write_config(CONFIG)
    out = d.run(
        "policy",
        "set",
        "ml",
        "--max-gpus",
        "2",
        "--max-ttl",
        "8h",
        "--targets",
        "onprem,aws",
        "--gpu-models",
        "A100,h100",
        "--default-idle-timeout",
        "30m",
        "--max-idle-timeout",
        "2h",
        check=True,
    )
    assert "team ml: targets=onprem,aws, gpu_models=A100,H100, max_gpus_running=2, max_ttl=8h" in out.stderr
    d.run("policy", "set", "ml", "--max-gpus", "3", check=True)  # keeps the other rules
    listed = d.json("policy", "ls")
    assert listed["default"]["policy"]["max_ttl"] == "2d"
    ml, vision = listed["teams"]
    assert (ml["team"], ml["source"], ml["line"]) == ("ml", "policy.yaml", 4)
    assert ml["policy"] == {
        "targets": ["onprem", "aws"],
        "gpu_models": ["A100", "H100"],
        "max_gpus_running": 3,
        "max_ttl": "8h",
        "default_ttl": "8h",
        "default_idle_timeout": "30m",
        "max_idle_timeout": "2h",
    }
    assert (vision["source"], vision["line"], vision["rules"]) == ("config.yaml", 7, None)
    table = d.run("policy", "ls", check=True).stdout
    assert "policy.yaml:4" in table and "config.yaml:7" in table and "(default)" in table
    d.run("policy", "set", "ml", "--max-ttl", "1d", "--replace", check=True)
    assert d.json("policy", "ls")["teams"][0]["rules"] == {"max_ttl": "1d"}
    assert d.run("policy", "rm", "ml").returncode == 2  # no --yes without a terminal
    d.run("policy", "rm", "ml", "--yes", check=True)
    assert [t["team"] for t in d.json("policy", "ls")["teams"]] == ["vision"]
    assert (d.home / "config.yaml").read_text() == CONFIG


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "ml", "--max-ttl", "8x"), "max_ttl: '8x' is not a duration"),
        (("set", "ml", "--targets", "onprem,mars"), "unknown target 'mars'; known: onprem, aws, gcp, azure"),
        (("set", "ml", "--max-gpus", "-1"), "max_gpus_running must be a whole number >= 0"),
        (("set", "ml", "--max-gpus", "many"), "Invalid value for '--max-gpus'"),
        (("set", "ml", "--gpu-models", "Z9"), "unknown GPU model 'Z9' in gpu_models"),
        (("set", "ml"), "give at least one rule"),
        (("set", "Ml", "--max-gpus", "1"), "team: 'Ml' is not allowed"),
        (("set", "vision", "--max-gpus", "1"), "team 'vision' is defined in"),
        (("rm", "vision", "--yes"), "line 7 (policy.teams.vision); edit config.yaml there"),
        (("rm", "nlp", "--yes"), "team 'nlp' has no policy in"),
    ],
)
def test_cli_bad_input_is_one_line_and_changes_nothing(sqlite_deepops: Deepops, args: tuple, message: str) -> None:
    d = sqlite_deepops
    d.write_config(CONFIG)
    d.run("policy", "set", "ml", "--max-gpus", "2", check=True)
    before = (d.home / "policy.yaml").read_bytes()
    proc = d.run("policy", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("deepops: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""
    assert (d.home / "policy.yaml").read_bytes() == before
    assert (d.home / "config.yaml").read_text() == CONFIG
    assert json.loads(d.run("policy", "ls", "--json", check=True).stdout)["teams"][0]["rules"] == {
        "max_gpus_running": 2
    }
