"""One deepops machine on EC2. Every decision (offer, AMI pin, tags, SSH CIDR) is made by deepops
before Pulumi runs and arrives as stack config; this program only declares the resources.

Config (namespace deepops-aws, plus aws:region):
  machineId        deepops machine ID; names the resources
  instanceType     the planned EC2 instance type
  ami              the pinned AMI ID for the region (images/aws.lock.yaml)
  diskGb           root volume size in GB (gp3, encrypted)
  sshCidr          the only source SSH is allowed from (the requester's address, e.g. 203.0.113.7/32)
  publicKey        OpenSSH public key; the private key never leaves the requester's machine
  tags             the DESIGN tags, put on every taggable resource
  spot             true for spot capacity (one-time, terminated on interruption)
  spotMaxPrice     optional cap in USD per hour for spot
  subnetId         optional subnet (default: the region's default VPC picks one)
  vpcId            optional VPC of the security group (default: the default VPC)
  allowAnySsh      must be true for a 0.0.0.0/0 sshCidr to be accepted (never the default)
  metricsNamespace the one CloudWatch namespace the machine's role may publish to (default DeepOps)
  agentMetrics     default true: a role deepops-<machineId> (assumable by EC2 only) allowing only
                   cloudwatch:PutMetricData into metricsNamespace, through an instance profile of the
                   same name. false: no IAM at all (accounts where deployers may not create roles);
                   the agent's publishing is then refused and the reaper reads the machine as active.
Outputs: instance_id, public_ip, private_ip, public_dns, availability_zone.
"""

import ipaddress
import json

import pulumi
import pulumi_aws as aws

cfg = pulumi.Config()
machine = cfg.require("machineId")
tags = {str(k): str(v) for k, v in cfg.require_object("tags").items()}
ssh_cidr = str(ipaddress.ip_network(cfg.require("sshCidr"), strict=False))
if ipaddress.ip_network(ssh_cidr).prefixlen == 0 and not cfg.get_bool("allowAnySsh"):
    raise ValueError(f"sshCidr {ssh_cidr} opens SSH to the whole internet; set allowAnySsh to true to mean it")
disk_gb = cfg.require_int("diskGb")
spot = cfg.get_bool("spot") or False
agent_metrics = cfg.get_bool("agentMetrics", True)

vpc_id = cfg.get("vpcId") or aws.ec2.get_vpc(default=True).id
ssh_rule = {"protocol": "tcp", "from_port": 22, "to_port": 22, "description": "SSH from the requester"}
if ipaddress.ip_network(ssh_cidr).version == 6:
    ssh_rule["ipv6_cidr_blocks"] = [ssh_cidr]
else:
    ssh_rule["cidr_blocks"] = [ssh_cidr]

group = aws.ec2.SecurityGroup(
    f"{machine}-ssh",
    name=f"deepops-{machine}",
    description=f"deepops {machine}: SSH from the requester only",
    vpc_id=vpc_id,
    ingress=[ssh_rule],
    egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"], "description": "out"}],
    tags=tags,
)

key = aws.ec2.KeyPair(f"{machine}-key", key_name=f"deepops-{machine}", public_key=cfg.require("publicKey"), tags=tags)

profile = None
if agent_metrics:
    # The agent's only AWS call: PutMetricData, into the configured namespace and nowhere else.
    role = aws.iam.Role(
        f"{machine}-role",
        name=f"deepops-{machine}",
        description=f"deepops {machine}: the agent publishes its utilization to CloudWatch",
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
        tags=tags,
    )
    aws.iam.RolePolicy(
        f"{machine}-metrics",
        name="deepops-agent-metrics",
        role=role.id,
        policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "cloudwatch:PutMetricData",
                        "Resource": "*",  # PutMetricData has no resource ARNs; the namespace condition scopes it
                        "Condition": {
                            "StringEquals": {"cloudwatch:namespace": cfg.get("metricsNamespace") or "DeepOps"}
                        },
                    }
                ],
            }
        ),
    )
    # The instance profile's name is what RunInstances takes; the provider retries while IAM propagates.
    profile = aws.iam.InstanceProfile(f"{machine}-profile", name=f"deepops-{machine}", role=role.name, tags=tags)

market = None
if spot:
    spot_options = {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"}
    if cfg.get("spotMaxPrice"):
        spot_options["max_price"] = cfg.get("spotMaxPrice")
    market = {"market_type": "spot", "spot_options": spot_options}

instance = aws.ec2.Instance(
    machine,
    ami=cfg.require("ami"),
    instance_type=cfg.require("instanceType"),
    key_name=key.key_name,
    vpc_security_group_ids=[group.id],
    subnet_id=cfg.get("subnetId"),
    associate_public_ip_address=True,
    # IMDSv2 only: a token is needed to read instance credentials, one hop so containers cannot.
    metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1},
    root_block_device={
        "volume_type": "gp3",
        "volume_size": disk_gb,
        "encrypted": True,
        "delete_on_termination": True,
        "tags": tags,
    },
    # `shutdown` on the machine (or its dead-man switch) ends billing instead of stopping it.
    instance_initiated_shutdown_behavior="terminate",
    instance_market_options=market,
    iam_instance_profile=profile.name if profile else None,
    tags=tags,
)

pulumi.export("instance_id", instance.id)
pulumi.export("public_ip", instance.public_ip)
pulumi.export("private_ip", instance.private_ip)
pulumi.export("public_dns", instance.public_dns)
pulumi.export("availability_zone", instance.availability_zone)
