"""IT's configuration file, where state lives (Settings), and the policy rules `up` enforces."""

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from deepops_infra.config import CLOUDS, Config, Defaults, Settings, TeamPolicy, parse_config
from deepops_infra.durations import parse_duration
from deepops_infra.errors import PolicyError, UserError
from deepops_infra.policy import check_running, check_static, check_ttl
from deepops_infra.request import GpuSpec, MachineRequest
from deepops_infra.yamlfile import FileError, load_yaml


def config_from(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return parse_config(load_yaml(path), path)


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        config_from(tmp_path, text)
    return str(info.value)


FULL = """\
defaults:
  team: ml
  project: llm
  image: pytorch
  cloud: aws
  disk_gb: 250
policy:
  default:
    max_ttl: 2d
    gpu_models: [A100, H100]
    max_idle_timeout: 4h
  teams:
    research:
      max_gpus_running: 32
      targets: onprem
      max_ttl: 1w
    interns:
      max_gpus_running: 1
      max_ttl: 4h
ledger_url: postgresql+psycopg://deepops@db/deepops
pool_file: ~/lab/pool.yaml
"""


# --- parse_config ----------------------------------------------------------------------------


def test_empty_config_is_all_defaults(tmp_path):
    config = config_from(tmp_path, "# nothing configured\n")
    assert config == Config(path=tmp_path / "config.yaml")
    assert config.policy_for("anyone") == TeamPolicy()
    assert TeamPolicy().targets == CLOUDS
    assert TeamPolicy().max_ttl == timedelta(days=7)


def test_full_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = config_from(tmp_path, FULL)
    assert config.defaults == Defaults(team="ml", project="llm", image="pytorch", cloud="aws", disk_gb=250)
    assert config.ledger_url == "postgresql+psycopg://deepops@db/deepops"
    assert config.pool_file == tmp_path / "home" / "lab" / "pool.yaml"
    assert config.default_policy == TeamPolicy(
        gpu_models=("A100", "H100"),
        max_ttl=timedelta(days=2),
        max_idle_timeout=timedelta(hours=4),
    )


def test_team_policy_inherits_from_default(tmp_path):
    config = config_from(tmp_path, FULL)
    research = config.policy_for("research")
    assert research == TeamPolicy(
        targets=("onprem",),  # a single string is taken as a list of one
        gpu_models=("A100", "H100"),  # from policy.default
        max_gpus_running=32,
        max_ttl=timedelta(weeks=1),
        max_idle_timeout=timedelta(hours=4),  # from policy.default
    )
    # a team without its own section gets policy.default
    assert config.policy_for("ml") == config.default_policy


def test_defaults_are_clamped_to_the_maximum(tmp_path):
    interns = config_from(tmp_path, FULL).policy_for("interns")
    assert interns.max_ttl == timedelta(hours=4)
    assert interns.default_ttl == timedelta(hours=4)  # 8h default would be above max_ttl
    assert interns.max_idle_timeout == timedelta(hours=4)
    assert interns.default_idle_timeout == timedelta(hours=1)


def test_team_inherits_default_written_after_it(tmp_path):
    text = "policy:\n  teams:\n    ml:\n      max_gpus_running: 2\n  default:\n    max_ttl: 1d\n"
    ml = config_from(tmp_path, text).policy_for("ml")
    assert (ml.max_gpus_running, ml.max_ttl) == (2, timedelta(days=1))


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        pytest.param("defaults:\n  team: ml\nledgr_url: x\n", 3, "unknown setting 'ledgr_url'", id="unknown-setting"),
        pytest.param("- a\n", 1, "the configuration must be a mapping", id="not-a-mapping"),
        pytest.param("defaults:\n  team: ml\n  colour: red\n", 3, "unknown default 'colour'", id="defaults"),
        pytest.param("policy: strict\n", 1, "policy must have `default:` and/or `teams:`", id="policy-not-mapping"),
        pytest.param(
            "policy:\n  teams: [a, b]\n", 2, "policy.teams must map team names to rules", id="teams-not-mapping"
        ),
        pytest.param(
            "policy:\n  default:\n    max_ttl: 1d\n    max_gpu: 3\n",
            4,
            "unknown policy rule 'max_gpu'; known: default_idle_timeout, default_ttl, gpu_models,",
            id="unknown-rule",
        ),
        pytest.param(
            "policy:\n  teams:\n    ml:\n      max_ttl: forever\n",
            4,
            "max_ttl: 'forever' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            "policy:\n  default:\n    max_idle_timeout: 3600\n",
            3,
            "max_idle_timeout: '3600' is not a duration",
            id="duration-without-unit",
        ),
        pytest.param(
            "policy:\n  default:\n    max_ttl: 0h\n", 3, "max_ttl: '0h' must be longer than zero", id="zero-duration"
        ),
        pytest.param(
            "policy:\n  default:\n    targets: [aws, ibm]\n",
            3,
            "unknown target 'ibm'; known: onprem, aws, gcp, azure",
            id="unknown-target",
        ),
        pytest.param(
            "policy:\n  default:\n    gpu_models: {A100: 1}\n", 3, "gpu_models must be a list of names", id="models"
        ),
        pytest.param(
            "policy:\n  default:\n\n    max_gpus_running: -1\n",
            4,
            "max_gpus_running must be a whole number >= 0",
            id="negative-max-gpus",
        ),
        pytest.param("policy:\n  default: [a]\n", 2, "policy.default must be a mapping of rules", id="default-list"),
        pytest.param("defaults: {team: [x}\n", 1, "invalid YAML", id="yaml-syntax"),
    ],
)
def test_config_errors_name_file_and_line(tmp_path, text, line, expected):
    message = config_error(tmp_path, text)
    prefix = f"{tmp_path / 'config.yaml'}:{line}: "
    assert message.startswith(prefix), message
    assert expected in message[len(prefix) :]


def test_config_errors_are_file_errors(tmp_path):
    with pytest.raises(FileError):
        config_from(tmp_path, "ledgr_url: x\n")


def test_empty_team_section_names_its_line(tmp_path):
    message = config_error(tmp_path, "policy:\n  teams:\n    ml:\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}:3: policy.teams.ml must be a mapping of rules")


def test_boolean_max_gpus_running_is_refused(tmp_path):
    message = config_error(tmp_path, "policy:\n  default:\n    max_gpus_running: true\n")
    assert ":3: max_gpus_running must be a whole number" in message


def test_unknown_default_cloud_is_a_config_error(tmp_path):
    message = config_error(tmp_path, "defaults:\n  cloud: ibm\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}:")
    assert "ibm" in message


# --- Settings.from_env -----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("DEEPOPS_HOME", "DEEPOPS_CONFIG", "DEEPOPS_LEDGER_URL", "DEEPOPS_POOL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_default_home(tmp_path, clean_env):
    clean_env.setenv("HOME", str(tmp_path))
    settings = Settings.from_env()
    assert settings.home == tmp_path / ".deepops"
    assert settings.config_path == tmp_path / ".deepops" / "config.yaml"


def test_settings_from_deepops_home(tmp_path, clean_env):
    home = tmp_path / "state"
    clean_env.setenv("DEEPOPS_HOME", str(home))
    settings = Settings.from_env()
    assert settings.home == home
    assert settings.config_path == home / "config.yaml"
    assert settings.config == Config(path=None)  # no file: built-in defaults
    assert settings.ledger_url == f"sqlite:///{home}/ledger.db"
    assert settings.pool_path == home / "pool.yaml"
    assert settings.workspaces == home / "workspaces"
    assert settings.ansible_dir == home / "ansible"


def test_relative_deepops_home_is_made_absolute(tmp_path, clean_env):
    clean_env.chdir(tmp_path)
    clean_env.setenv("DEEPOPS_HOME", "rel/home")
    assert Settings.from_env().home == tmp_path / "rel" / "home"


def test_ensure_home_is_private(tmp_path, clean_env):
    clean_env.setenv("DEEPOPS_HOME", str(tmp_path / "a" / "b"))
    home = Settings.from_env().ensure_home()
    assert home.is_dir()
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700


def test_settings_read_the_config_file(tmp_path, clean_env):
    config = tmp_path / "elsewhere.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path}/shared.db\npool_file: {tmp_path}/lab-pool.yaml\n")
    clean_env.setenv("DEEPOPS_HOME", str(tmp_path / "home"))
    clean_env.setenv("DEEPOPS_CONFIG", str(config))
    settings = Settings.from_env()
    assert settings.config_path == config
    assert settings.config.path == config
    assert settings.ledger_url == f"sqlite:///{tmp_path}/shared.db"
    assert settings.pool_path == tmp_path / "lab-pool.yaml"


def test_environment_overrides_the_config_file(tmp_path, clean_env):
    config = tmp_path / "config.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path}/shared.db\npool_file: {tmp_path}/lab-pool.yaml\n")
    clean_env.setenv("DEEPOPS_HOME", str(tmp_path))
    clean_env.setenv("DEEPOPS_LEDGER_URL", "postgresql+psycopg://u@db/deepops")
    clean_env.setenv("DEEPOPS_POOL", str(tmp_path / "env-pool.yaml"))
    settings = Settings.from_env()
    assert settings.config.ledger_url == f"sqlite:///{tmp_path}/shared.db"  # the file was read
    assert settings.ledger_url == "postgresql+psycopg://u@db/deepops"
    assert settings.pool_path == tmp_path / "env-pool.yaml"


def test_settings_report_a_bad_config_file(tmp_path, clean_env):
    clean_env.setenv("DEEPOPS_HOME", str(tmp_path))
    (tmp_path / "config.yaml").write_text("policy:\n  default:\n    max_ttl: soon\n")
    with pytest.raises(FileError) as info:
        Settings.from_env().config  # noqa: B018 (a property that parses the file)
    assert str(info.value).startswith(f"{tmp_path / 'config.yaml'}:3: max_ttl: 'soon' is not a duration")


# --- policy ----------------------------------------------------------------------------------


def request(gpus: str = "A100:2", ttl: str = "8h", idle: str = "1h", team: str = "ml") -> MachineRequest:
    return MachineRequest(
        gpus=GpuSpec.parse(gpus),
        cloud="onprem",
        region=None,
        host=None,
        image="cpu-minimal",
        spot=False,
        ttl=parse_duration(ttl),
        idle_timeout=parse_duration(idle),
        disk_gb=None,
        owner="alice",
        team=team,
        project="p",
        name=None,
    )


def policy_error(req: MachineRequest, policy: TeamPolicy, cloud: str = "onprem") -> str:
    with pytest.raises(PolicyError) as info:
        check_static(req, policy, cloud)
    return str(info.value)


def test_default_policy_allows_an_ordinary_request():
    check_static(request("A100:8", ttl="7d", idle="1d"), TeamPolicy(), "aws")


def test_rule_targets():
    policy = TeamPolicy(targets=("onprem", "gcp"))
    check_static(request(), policy, "gcp")
    assert policy_error(request(), policy, "aws") == (
        "policy (team ml, rule targets): aws is not allowed; allowed: onprem, gcp"
    )


def test_rule_gpu_models():
    policy = TeamPolicy(gpu_models=("H100", "L4"))
    check_static(request("h100:2"), policy, "onprem")
    check_static(request("0"), policy, "onprem")  # CPU only names no model
    assert policy_error(request("A100:2"), policy) == (
        "policy (team ml, rule gpu_models): A100 is not allowed; allowed: H100, L4"
    )
    assert policy_error(request("2"), policy) == (
        "policy (team ml, rule gpu_models): an unspecified model is not allowed; allowed: H100, L4"
    )


def test_rule_max_gpus_running_per_request():
    policy = TeamPolicy(max_gpus_running=4)
    check_static(request("A100:4"), policy, "onprem")
    assert policy_error(request("A100:5"), policy) == (
        "policy (team ml, rule max_gpus_running): 5 GPUs asked, the team may run at most 4"
    )


def test_rule_max_gpus_running_zero_still_allows_cpu():
    policy = TeamPolicy(max_gpus_running=0)
    check_static(request("0"), policy, "onprem")
    assert "rule max_gpus_running" in policy_error(request("1"), policy)


def test_rule_max_ttl():
    policy = TeamPolicy(max_ttl=timedelta(days=7))
    check_static(request(ttl="7d"), policy, "onprem")
    assert policy_error(request(ttl="8d", team="research"), policy) == (
        "policy (team research, rule max_ttl): --ttl 8d is above the maximum 7d"
    )


def test_check_ttl_names_what_was_asked():
    with pytest.raises(PolicyError) as info:
        check_ttl(timedelta(hours=30), TeamPolicy(max_ttl=timedelta(days=1)), "ml", what="--extend")
    assert str(info.value) == "policy (team ml, rule max_ttl): --extend 1d6h is above the maximum 1d"


def test_rule_max_idle_timeout():
    policy = TeamPolicy(max_idle_timeout=timedelta(days=1))
    check_static(request(idle="1d"), policy, "onprem")
    assert policy_error(request(idle="2d"), policy) == (
        "policy (team ml, rule max_idle_timeout): --idle-timeout 2d is above the maximum 1d"
    )


def test_check_running():
    policy = TeamPolicy(max_gpus_running=8)
    check_running(request("A100:2"), policy, running=6)  # exactly at the limit
    check_running(request("0"), policy, running=12)  # CPU machines do not count
    with pytest.raises(PolicyError) as info:
        check_running(request("A100:3"), policy, running=6)
    assert str(info.value) == (
        "policy (team ml, rule max_gpus_running): the team runs 6 GPUs, 3 more would pass the limit of 8"
    )


def test_policy_from_config_file_is_enforced_per_team(tmp_path):
    config = config_from(tmp_path, FULL)
    req = request("A100:4", ttl="2d")
    check_static(req, config.policy_for("ml"), "aws")
    assert "rule targets" in policy_error(request("A100:4", team="research"), config.policy_for("research"), "aws")
    assert "rule max_ttl" in policy_error(request("A100:1", ttl="8h", team="interns"), config.policy_for("interns"))
    assert "rule gpu_models" in policy_error(request("L4:1"), config.policy_for("ml"))


def test_lower_case_gpu_model_in_policy_allows_that_model(tmp_path):
    config = config_from(tmp_path, "policy:\n  default:\n    gpu_models: [a100]\n")
    check_static(request("a100:1"), config.default_policy, "onprem")
