"""stacks/aws under Pulumi's mocks: the resource graph the program declares, input by input."""

import json
import runpy
from pathlib import Path
from typing import Any

import pytest

pulumi = pytest.importorskip("pulumi")

from tests.pulumi_programs import fresh_event_loop  # noqa: E402  (after the skip)

PROGRAM = Path(__file__).resolve().parents[1] / "stacks" / "aws" / "__main__.py"
TAGS = {
    "deepops-managed": "true",
    "deepops-machine": "m-0a1b2c3d",
    "deepops-owner": "ada",
    "deepops-team": "vision",
    "deepops-project": "detr",
    "deepops-expires-at": "2026-11-21T14:00:00Z",
    "deepops-installation": "i-1234abcd",
}


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == "aws:ec2/instance:Instance":
            outputs |= {"publicIp": "198.51.100.4", "privateIp": "10.0.0.4", "availabilityZone": "us-east-1b"}
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append(args.token)
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": "vpc-0default", "cidrBlock": "172.31.0.0/16"}, []
        return {}, []


def run_program(config: dict[str, Any]) -> tuple[Recorder, dict[str, Any]]:
    fresh_event_loop()
    mocks = Recorder()
    pulumi.runtime.set_mocks(mocks, project="deepops-aws", stack="m-0a1b2c3d", preview=False)
    pulumi.runtime.set_all_config(
        {f"deepops-aws:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
        | {"aws:region": "us-east-1"}
    )
    exported: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> Any:
        original = pulumi.export

        def capture(name: str, value: Any) -> None:
            exported[name] = value
            original(name, value)

        pulumi.export = capture
        try:
            runpy.run_path(str(PROGRAM), run_name="__main__")
        finally:
            pulumi.export = original
        return pulumi.Output.all(*exported.values())

    program()
    return mocks, exported


BASE = {
    "machineId": "m-0a1b2c3d",
    "instanceType": "p5.48xlarge",
    "ami": "ami-0f7c4a792e3fb63c8",
    "diskGb": 250,
    "sshCidr": "203.0.113.7/32",
    "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnK deepops-m-0a1b2c3d",
    "tags": TAGS,
    "spot": False,
}


def by_type(mocks: Recorder, typ: str) -> list[Any]:
    return [r for r in mocks.resources if r.typ == typ]


def test_instance_from_the_plan_with_imdsv2_encrypted_gp3_and_terminate_on_shutdown() -> None:
    mocks, exported = run_program(BASE)
    [inst] = by_type(mocks, "aws:ec2/instance:Instance")
    i = inst.inputs
    assert i["instanceType"] == "p5.48xlarge"
    assert i["ami"] == "ami-0f7c4a792e3fb63c8"
    assert i["metadataOptions"]["httpTokens"] == "required"
    assert i["metadataOptions"]["httpPutResponseHopLimit"] == 1
    root = i["rootBlockDevice"]
    assert (root["volumeType"], root["volumeSize"], root["encrypted"]) == ("gp3", 250, True)
    assert i["instanceInitiatedShutdownBehavior"] == "terminate"
    assert "instanceMarketOptions" not in i  # on demand
    assert set(exported) == {"instance_id", "public_ip", "private_ip", "public_dns", "availability_zone"}


def test_every_taggable_resource_carries_the_design_tags() -> None:
    mocks, _ = run_program(BASE)
    types = sorted(r.typ for r in mocks.resources)
    assert types == [
        "aws:ec2/instance:Instance",
        "aws:ec2/keyPair:KeyPair",
        "aws:ec2/securityGroup:SecurityGroup",
        "aws:iam/instanceProfile:InstanceProfile",
        "aws:iam/role:Role",
        "aws:iam/rolePolicy:RolePolicy",  # IAM inline policies take no tags
    ]
    for resource in mocks.resources:
        if resource.typ != "aws:iam/rolePolicy:RolePolicy":
            assert resource.inputs["tags"] == TAGS, resource.typ
    [inst] = by_type(mocks, "aws:ec2/instance:Instance")
    assert inst.inputs["rootBlockDevice"]["tags"] == TAGS  # the volume too


def test_ssh_only_from_the_requester_and_only_the_public_key_in_state() -> None:
    mocks, _ = run_program(BASE)
    [group] = by_type(mocks, "aws:ec2/securityGroup:SecurityGroup")
    [rule] = group.inputs["ingress"]
    assert (rule["protocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 22, 22)
    assert rule["cidrBlocks"] == ["203.0.113.7/32"]
    assert group.inputs["vpcId"] == "vpc-0default"
    [key] = by_type(mocks, "aws:ec2/keyPair:KeyPair")
    assert key.inputs["publicKey"].startswith("ssh-ed25519 ")
    assert "PRIVATE" not in json.dumps([r.inputs for r in mocks.resources])


def test_spot_goes_through_instance_market_options() -> None:
    mocks, _ = run_program(BASE | {"spot": True, "spotMaxPrice": "17.6289"})
    [inst] = by_type(mocks, "aws:ec2/instance:Instance")
    market = inst.inputs["instanceMarketOptions"]
    assert market["marketType"] == "spot"
    assert market["spotOptions"] == {
        "spotInstanceType": "one-time",
        "instanceInterruptionBehavior": "terminate",
        "maxPrice": "17.6289",
    }


def test_an_open_ssh_cidr_is_refused_unless_meant() -> None:
    with pytest.raises(Exception, match="whole internet"):
        run_program(BASE | {"sshCidr": "0.0.0.0/0"})


def policy_of(mocks: Recorder) -> dict[str, Any]:
    [policy] = by_type(mocks, "aws:iam/rolePolicy:RolePolicy")
    return dict(json.loads(policy.inputs["policy"]))


def test_the_agent_role_may_only_put_metrics_into_its_namespace_and_only_ec2_assumes_it() -> None:
    mocks, _ = run_program(BASE)
    [role] = by_type(mocks, "aws:iam/role:Role")
    assert role.inputs["name"] == "deepops-m-0a1b2c3d"
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    [policy] = by_type(mocks, "aws:iam/rolePolicy:RolePolicy")
    assert policy.inputs["role"] == "m-0a1b2c3d-role-id"
    assert policy_of(mocks)["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": "DeepOps"}},
        }
    ]
    assert not by_type(mocks, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")  # no managed policy (SSM, S3)
    [profile] = by_type(mocks, "aws:iam/instanceProfile:InstanceProfile")
    assert (profile.inputs["name"], profile.inputs["role"]) == ("deepops-m-0a1b2c3d", "deepops-m-0a1b2c3d")
    [inst] = by_type(mocks, "aws:ec2/instance:Instance")
    assert inst.inputs["iamInstanceProfile"] == "deepops-m-0a1b2c3d"


def test_the_configured_namespace_is_the_one_allowed() -> None:
    mocks, _ = run_program(BASE | {"metricsNamespace": "Research/GPU"})
    [statement] = policy_of(mocks)["Statement"]
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Research/GPU"}}


def test_without_agent_metrics_no_iam_is_declared() -> None:
    mocks, _ = run_program(BASE | {"agentMetrics": False})
    assert not [r for r in mocks.resources if r.typ.startswith("aws:iam/")]
    [inst] = by_type(mocks, "aws:ec2/instance:Instance")
    assert "iamInstanceProfile" not in inst.inputs
