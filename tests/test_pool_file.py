"""The on-prem pool file: what a valid file gives, and that every mistake names its file and line."""

from pathlib import Path

import pytest

from deepops_infra.errors import NotFoundError, UserError
from deepops_infra.pool import LOCALHOST, DeclaredGpu, Pool, PoolHost, load_pool, parse_host_entry
from deepops_infra.yamlfile import FileError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_pool(path)
    return str(info.value)


# an ssh host entry without rates: lines 2-3 when it follows `hosts:`
SSH = "  - name: gpu1\n    address: 10.0.0.1\n"

VALID = """\
# lab GPUs
hosts:
  - name: gpu1
    address: 10.0.0.11
    user: deepops
    port: 2222
    key: ~/.ssh/lab
    labels: {region: lab-a, rack: 3}
    rates: {gpu_hour: 2.0, host_hour: 0.1}
    gpu_indexes: [3, 1, 1]
    workspace_root: /scratch/deepops
  - name: dgx.lab
    address: dgx.example.org
    rates:
      gpu_hour: 4
      host_hour: 0.25
    gpus:
      - {index: 0, model: a100-80gb, memory_mib: 81920}
      - {index: 1, model: A100_80GB}
    python: /usr/bin/python3.11
"""


def test_missing_file_is_just_localhost(tmp_path):
    pool = load_pool(tmp_path / "nope.yaml")
    assert pool.hosts == [LOCALHOST]
    assert pool.include_localhost is True
    assert LOCALHOST.connection == "local"
    assert (LOCALHOST.gpu_hour, LOCALHOST.host_hour) == (1.0, 0.05)


def test_empty_file_is_just_localhost(tmp_path):
    assert load_pool(write(tmp_path, "# nothing yet\n")).hosts == [LOCALHOST]


def test_valid_file(tmp_path):
    pool = load_pool(write(tmp_path, VALID))
    assert [h.name for h in pool.hosts] == ["localhost", "gpu1", "dgx.lab"]
    assert pool.hosts[0] == LOCALHOST
    assert pool.hosts[1] == PoolHost(
        name="gpu1",
        connection="ssh",
        address="10.0.0.11",
        user="deepops",
        port=2222,
        key="~/.ssh/lab",
        labels={"region": "lab-a", "rack": "3"},
        gpu_hour=2.0,
        host_hour=0.1,
        gpu_indexes=(1, 3),
        declared_gpus=None,
        workspace_root="/scratch/deepops",
    )
    dgx = pool.get("dgx.lab")
    assert dgx.connection == "ssh"
    assert dgx.port == 22
    assert (dgx.gpu_hour, dgx.host_hour) == (4.0, 0.25)
    assert dgx.declared_gpus == (DeclaredGpu(0, "A100-80GB", 81920), DeclaredGpu(1, "A100-80GB", None))
    assert dgx.detects_gpus is False
    assert pool.get("gpu1").detects_gpus is True
    assert dgx.python == "/usr/bin/python3.11"


def test_gpu_indexes_restrict_declared_gpus(tmp_path):
    pool = load_pool(
        write(
            tmp_path,
            """\
hosts:
  - name: box
    address: box.lab
    rates: {gpu_hour: 1, host_hour: 1}
    gpu_indexes: [1]
    gpus:
      - {index: 0, model: T4}
      - {index: 1, model: L4}
""",
        )
    )
    assert pool.get("box").declared_gpus == (DeclaredGpu(1, "L4"),)


def test_include_localhost_false(tmp_path):
    text = "include_localhost: false\nhosts:\n" + SSH + "    rates: {gpu_hour: 1, host_hour: 0.1}\n"
    pool = load_pool(write(tmp_path, text))
    assert pool.include_localhost is False
    assert [h.name for h in pool.hosts] == ["gpu1"]


def test_localhost_entry_with_own_rates_replaces_default(tmp_path):
    pool = load_pool(write(tmp_path, "hosts:\n  - name: localhost\n    rates: {gpu_hour: 3, host_hour: 0.5}\n"))
    assert len(pool.hosts) == 1
    assert (pool.hosts[0].connection, pool.hosts[0].address) == ("local", "127.0.0.1")
    assert (pool.hosts[0].gpu_hour, pool.hosts[0].host_hour) == (3.0, 0.5)


def test_get_unknown_host(tmp_path):
    pool = load_pool(write(tmp_path, VALID))
    with pytest.raises(NotFoundError) as info:
        pool.get("gpu9")
    assert str(info.value) == "unknown host 'gpu9'; hosts in the pool: localhost, gpu1, dgx.lab (see `deepops pool ls`)"


# --- malformed files: each names `path:LINE:` ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        pytest.param(
            "hosts:\n  - name: gpu1\n\taddress: x\n",
            3,
            "invalid YAML: found character '\\t' that cannot start any token",
            id="yaml-syntax",
        ),
        pytest.param(
            "include_localhost: true\nhostz: []\n",
            2,
            "unknown pool setting 'hostz'; known: hosts, clusters, include_localhost",
            id="unknown-pool-key",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: {gpu_hour: 1, host_hour: 1}\n    adress: 10.0.0.2\n",
            5,
            "unknown host setting 'adress'; known: address, connection,",
            id="unknown-host-key",
        ),
        pytest.param(
            "include_localhost: no way\n",
            1,
            "include_localhost must be true or false",
            id="include-localhost-not-bool",
        ),
        pytest.param(
            "hosts:\n  gpu1: {address: x}\n",
            1,
            "`hosts` must be a list of host entries",
            id="hosts-not-list",
        ),
        pytest.param(
            "hosts:\n  - gpu1\n",
            2,
            "each host must be a mapping with at least `name` and `connection`",
            id="host-not-mapping",
        ),
        pytest.param(
            "hosts:\n  - address: 10.0.0.1\n    name: GPU_1\n",
            3,
            "host `name` is required",
            id="bad-name",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    connection: telnet\n",
            4,
            "connection must be `local` or `ssh`, not 'telnet'",
            id="bad-connection",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    labels: {a: b}\n",
            2,
            "host 'gpu1': `rates: {gpu_hour: N, host_hour: N}` is required (USD per hour; "
            "on-prem time is never priced at zero)",
            id="ssh-host-without-rates",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: 2.0\n",
            4,
            "`rates: {gpu_hour: N, host_hour: N}` is required",
            id="rates-not-mapping",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates:\n      gpu_hour: 0\n      host_hour: 0.1\n",
            5,
            "rates.gpu_hour must be a finite positive number of USD per hour (on-prem time is never priced at zero)",
            id="zero-gpu-rate",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates:\n      gpu_hour: 1.5\n      host_hour: -0.1\n",
            6,
            "rates.host_hour must be a finite positive number of USD per hour (on-prem time is never priced at zero)",
            id="negative-host-rate",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: {gpu_hour: free, host_hour: 1}\n",
            4,
            "rates.gpu_hour must be a finite positive number",
            id="rate-not-number",
        ),
        pytest.param(
            "hosts:\n  - name: localhost\n    rates: {gpu_hour: 0, host_hour: 0}\n",
            3,
            "rates.gpu_hour must be a finite positive number",
            id="localhost-zero-rate",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    port: 70000\n    rates: {gpu_hour: 1, host_hour: 1}\n",
            4,
            "port must be a number from 1 to 65535, not 70000",
            id="port-too-big",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    port: ssh\n    rates: {gpu_hour: 1, host_hour: 1}\n",
            4,
            "port must be a number from 1 to 65535, not 'ssh'",
            id="port-not-number",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: {gpu_hour: 1, host_hour: 1}\n    gpus:\n"
            "      - {index: 0, model: A100}\n      - {index: 1, model: A1000}\n",
            7,
            "unknown GPU model 'A1000'; known models: B200, H200",
            id="unknown-declared-model",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: {gpu_hour: 1, host_hour: 1}\n    gpus:\n      - {model: A100}\n",
            6,
            "each declared GPU needs `index` (a number >= 0) and `model`",
            id="declared-gpu-without-index",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: {gpu_hour: 1, host_hour: 1}\n    gpus:\n"
            "      - {index: 0, model: A100}\n      - {index: 0, model: A100}\n",
            5,
            "a GPU index is declared twice",
            id="duplicate-declared-index",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: {gpu_hour: 1, host_hour: 1}\n    gpu_indexes: [0, -1]\n",
            5,
            "gpu_indexes must be a list of GPU index numbers",
            id="negative-gpu-index",
        ),
        pytest.param(
            "hosts:\n" + SSH + "    rates: {gpu_hour: 1, host_hour: 1}\n    workspace_root: scratch\n",
            5,
            "workspace_root must be an absolute path (or start with ~)",
            id="relative-workspace-root",
        ),
        pytest.param(
            "hosts:\n"
            + SSH
            + "    rates: {gpu_hour: 1, host_hour: 1}\n"
            + SSH
            + "    rates: {gpu_hour: 2, host_hour: 2}\n",
            5,
            "host 'gpu1' is listed twice",
            id="duplicate-host",
        ),
        pytest.param(
            "hosts:\n  - name: localhost\n  - name: gpu2\n    user: root\n    rates: {gpu_hour: 1, host_hour: 1}\n",
            3,
            "host 'gpu2': an ssh host needs `address`",
            id="ssh-host-without-address",
        ),
    ],
)
def test_malformed_pool_file_names_file_and_line(tmp_path, text, line, expected):
    message = load_error(tmp_path, text)
    prefix = f"{tmp_path / 'pool.yaml'}:{line}: "
    assert message.startswith(prefix), message
    assert expected in message[len(prefix) :]


def test_pool_errors_are_file_errors(tmp_path):
    path = write(tmp_path, "hosts:\n" + SSH)
    with pytest.raises(FileError):
        load_pool(path)


def test_boolean_port_is_refused(tmp_path):
    message = load_error(tmp_path, "hosts:\n" + SSH + "    port: true\n    rates: {gpu_hour: 1, host_hour: 1}\n")
    assert ":4: port must be a number" in message


# --- save and load again ---------------------------------------------------------------------


def test_save_then_load_round_trip(tmp_path):
    pool = load_pool(write(tmp_path, VALID))
    target = tmp_path / "sub" / "saved.yaml"
    Pool(path=target, hosts=pool.hosts, include_localhost=True).save()
    assert target.read_text().startswith("# deepops on-prem pool")
    assert not (tmp_path / "sub" / "saved.tmp").exists()
    again = load_pool(target)
    assert again.hosts == pool.hosts
    assert again.include_localhost is True


def test_save_without_localhost_round_trip(tmp_path):
    host = PoolHost(
        name="gpu1",
        connection="ssh",
        address="10.0.0.1",
        gpu_hour=2.5,
        host_hour=0.2,
        declared_gpus=(DeclaredGpu(0, "H100", 81559), DeclaredGpu(1, "H100")),
    )
    path = tmp_path / "pool.yaml"
    Pool(path=path, hosts=[host], include_localhost=False).save()
    again = load_pool(path)
    assert again.include_localhost is False
    assert again.hosts == [host]


def test_save_keeps_customised_localhost(tmp_path):
    local = PoolHost(name="localhost", connection="local", gpu_hour=3.0, host_hour=0.5, gpu_indexes=(0,))
    path = tmp_path / "pool.yaml"
    Pool(path=path, hosts=[local], include_localhost=True).save()
    assert load_pool(path).hosts == [local]


# --- parse_host_entry (`deepops pool add`) ---------------------------------------------------


def test_parse_host_entry_valid(tmp_path):
    host = parse_host_entry(
        {
            "name": "gpu1",
            "connection": "ssh",
            "address": "10.0.0.1",
            "port": 22,
            "labels": {"region": "lab-a"},
            "rates": {"gpu_hour": 2.0, "host_hour": 0.1},
            "gpu_indexes": [1, 0],
        },
        tmp_path / "pool.yaml",
    )
    assert host == PoolHost(
        name="gpu1",
        connection="ssh",
        address="10.0.0.1",
        labels={"region": "lab-a"},
        gpu_hour=2.0,
        host_hour=0.1,
        gpu_indexes=(0, 1),
    )


RATES = {"gpu_hour": 1.0, "host_hour": 0.1}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "gpu1", "connection": "ssh", "rates": RATES},
            "host 'gpu1': an ssh host needs `address`",
        ),
        (
            {"name": "gpu1", "connection": "ssh", "address": "h"},
            "host 'gpu1': `rates: {gpu_hour: N, host_hour: N}` is required (USD per hour; "
            "on-prem time is never priced at zero)",
        ),
        (
            {"name": "gpu1", "connection": "ssh", "address": "h", "rates": {"gpu_hour": 0.0, "host_hour": 0.1}},
            "rates.gpu_hour must be a finite positive number of USD per hour (on-prem time is never priced at zero)",
        ),
        (
            {"name": "gpu1", "connection": "ssh", "address": "h", "port": 0, "rates": RATES},
            "port must be a number from 1 to 65535, not 0",
        ),
        (
            {"name": "Gpu 1", "connection": "ssh", "address": "h", "rates": RATES},
            "host `name` is required: lower-case letters, digits, '.' and '-'",
        ),
        (
            {"name": "gpu1", "connection": "rsh", "address": "h", "rates": RATES},
            "connection must be `local` or `ssh`, not 'rsh'",
        ),
    ],
)
def test_parse_host_entry_errors_have_no_file_position(tmp_path, entry, message):
    with pytest.raises(UserError) as info:
        parse_host_entry(entry, tmp_path / "pool.yaml")
    assert str(info.value) == message


def test_parse_host_entry_with_declared_gpus(tmp_path):
    host = parse_host_entry(
        {
            "name": "gpu1",
            "connection": "ssh",
            "address": "10.0.0.1",
            "rates": RATES,
            "gpus": [{"index": 0, "model": "A100-80GB"}, {"index": 1, "model": "A100-80GB"}],
        },
        tmp_path / "pool.yaml",
    )
    assert host.declared_gpus == (DeclaredGpu(0, "A100-80GB"), DeclaredGpu(1, "A100-80GB"))


def test_a_pool_file_that_cannot_be_written_is_a_clear_conflict(tmp_path, monkeypatch):
    """A pool managed elsewhere (a read-only ConfigMap in Kubernetes): one line, nothing half-written."""
    from deepops_infra.errors import ConflictError

    path = tmp_path / "pool.yaml"
    pool = load_pool(path)
    pool.hosts.append(PoolHost(name="gpu-a", connection="ssh", address="10.0.0.7", gpu_hour=1.0, host_hour=0.1))

    def refuse(*_: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("deepops_infra.pool.os.replace", refuse)
    with pytest.raises(ConflictError, match=r"pool file .* cannot be written here \(Read-only file system\)"):
        pool.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
