"""The deployment as shipped: every Kubernetes manifest valid against the Kubernetes schemas
(offline, kubernetes-validate's bundled ones), pods locked down, probes on /healthz and /readyz,
every Secret, ConfigMap and volume a pod names defined, commands the CLI accepts, the shipped
config and pool loadable, the image pinned by digest and non-root."""

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBE = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
VERSIONS = ("1.30.0", "latest")  # the oldest Kubernetes still commonly run, and the newest known


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
        for p in sorted(KUBE.glob("*.yaml"))
        if p.name != "kustomization.yaml"
    }


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for docs in manifests().values() for d in docs if d["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """The pod template of every workload, by workload name."""
    specs = {name: d["spec"]["template"]["spec"] for name, d in resources("Deployment").items()}
    specs |= {name: d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for name, d in resources("CronJob").items()}
    return specs


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    from kubernetes_validate import utils

    wanted = utils.latest_version() if version == "latest" else version
    checked = []
    for name, docs in manifests().items():
        for doc in docs:
            try:
                utils.validate(doc, wanted, strict=True)  # strict: an unknown or misspelt field fails
            except utils.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
            checked.append(doc["kind"])
    assert {"Deployment", "Service", "CronJob", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= set(checked)


def test_the_kustomization_applies_everything_but_the_example_secrets() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == set(manifests()) - {"secrets.example.yaml"}
    assert all((KUBE / name).is_file() for name in listed)


@pytest.mark.parametrize("workload", ["deepops-server", "deepops-reaper"])
def test_pods_run_locked_down(workload: str) -> None:
    spec = pod_specs()[workload]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0 and pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] in resources("ServiceAccount")
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
        assert "limits" in container["resources"] and "requests" in container["resources"]
    assert pod["runAsUser"] == int(_containerfile_user())


def test_every_secret_configmap_and_claim_a_pod_names_is_defined() -> None:
    secrets, configmaps = resources("Secret"), resources("ConfigMap")
    claims = resources("PersistentVolumeClaim")
    for workload, spec in pod_specs().items():
        for container in spec["containers"]:
            mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], (workload, var["name"])
            env = {v["name"]: v.get("value") for v in container["env"]}
            for var in ("DEEPOPS_CONFIG", "DEEPOPS_POOL"):  # files the pod reads: keys of the mounted ConfigMap
                folder, _, key = env[var].rpartition("/")
                [volume] = [v for v in spec["volumes"] if mounted.get(v["name"]) == folder]
                assert key in configmaps[volume["configMap"]["name"]]["data"], (workload, var)
            assert mounted[_volume_of(spec, "persistentVolumeClaim")] == env["DEEPOPS_HOME"] == env["HOME"]
            assert "/tmp" in mounted.values()  # the root filesystem is read-only
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert len({_claim(spec) for spec in pod_specs().values()}) == 2  # ReadWriteOnce: one claim per workload


def test_the_server_is_probed_and_served_on_its_port() -> None:
    [deployment] = resources("Deployment").values()
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    [container] = spec["template"]["spec"]["containers"]
    [port] = container["ports"]
    command = container["command"]
    assert command[command.index("--port") + 1] == str(port["containerPort"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    [service] = resources("Service").values()
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and annotations["prometheus.io/port"] == str(
        port["containerPort"]
    )


def test_the_commands_are_ones_the_cli_accepts() -> None:
    """The containers' commands and the systemd units' ExecStart parse with the real CLI (offline:
    nothing runs), so a renamed or misspelt option fails here, not in a cluster."""
    from deepops_infra.cli import app
    from deepops_infra.server.metrics import METRICS_ACCESS

    cli = typer.main.get_command(app)
    commands = [c["command"] for spec in pod_specs().values() for c in spec["containers"]]
    commands.append(shlex.split(re.search(r"^CMD (\[.*\])$", CONTAINERFILE.read_text(), re.M)[1].replace("'", '"')))
    for unit in (DEPLOY / "systemd").glob("*.service"):
        [line] = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
        commands.append(shlex.split(line.removeprefix("ExecStart=")))
    for argv in commands:
        argv = [a.strip('[],"') for a in argv if a.strip('[],"')]
        assert Path(argv[0]).name == "deepops", argv
        group_ctx = cli.make_context("deepops", list(argv[1:]), resilient_parsing=False)
        sub = cli.get_command(group_ctx, argv[1])
        try:
            sub.make_context(argv[1], list(argv[2:]), parent=group_ctx)
        except Exception as exc:  # typer's own click: NoSuchOption, BadParameter, ...
            pytest.fail(f"{argv}: {exc}")
        if argv[1] == "serve":  # values the command itself checks
            assert argv[argv.index("--metrics") + 1] in METRICS_ACCESS
            assert argv[argv.index("--log-level") + 1] == "info"  # a line per request and per reaper cycle
    server_cmd = pod_specs()["deepops-server"]["containers"][0]["command"]
    assert "--no-reaper" in server_cmd  # the CronJob is the reaper here; --reaper moves it into the server
    assert "--reaper" not in server_cmd


def test_the_shipped_config_and_pool_load(tmp_path: Path) -> None:
    from deepops_infra.config import parse_config
    from deepops_infra.pool import load_pool
    from deepops_infra.yamlfile import load_yaml

    data = resources("ConfigMap")["deepops-config"]["data"]
    (tmp_path / "config.yaml").write_text(data["config.yaml"])
    config = parse_config(load_yaml(tmp_path / "config.yaml"), tmp_path / "config.yaml")
    assert config.section("engine")["backend_url"].startswith("s3://")  # Pulumi state shared by both pods
    (tmp_path / "pool.yaml").write_text(data["pool.yaml"])
    pool = load_pool(tmp_path / "pool.yaml")
    assert pool.include_localhost is False and "localhost" not in [h.name for h in pool.hosts]
    keys = {volume["secret"]["secretName"] for volume in pod_specs()["deepops-server"]["volumes"] if "secret" in volume}
    [key_secret] = keys
    assert all(Path(h.key).name in resources("Secret")[key_secret]["stringData"] for h in pool.hosts if h.key)


def test_the_image_is_pinned_non_root_and_built_from_this_repository() -> None:
    text = CONTAINERFILE.read_text()
    [base] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"docker\.io/library/python:3\.11-slim@sha256:[0-9a-f]{64}", base)
    assert all(line.split()[1].startswith("${PYTHON_IMAGE}") for line in text.splitlines() if line.startswith("FROM "))
    root = CONTAINERFILE.parent.parent.parent
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in line.split():
            assert (root / source).exists(), source
    assert int(_containerfile_user()) >= 1000
    assert re.search(r'pip install "/src\[server,postgres\]"', text)  # the project from its own files


def test_the_systemd_units_keep_the_servers_host_out_of_the_pool() -> None:
    for unit in ("deepops-serve.service", "deepops-reaper.service"):
        assert "include_localhost: false" in (DEPLOY / "systemd" / unit).read_text()


def _containerfile_user() -> str:
    [*_, user] = re.findall(r"^USER (\S+)$", CONTAINERFILE.read_text(), re.M)
    return user.split(":")[0]


def _volume_of(spec: dict[str, Any], kind: str) -> str:
    [name] = [v["name"] for v in spec["volumes"] if kind in v]
    return name


def _claim(spec: dict[str, Any]) -> str:
    [claim] = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    return claim
