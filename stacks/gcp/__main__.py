"""One deepops machine on Compute Engine. Every decision (offer, image pin, labels, SSH CIDR, key,
backstop) is made by deepops before Pulumi runs and arrives as stack config; this program only
declares the resources.

Config (namespace deepops-gcp, plus gcp:project and gcp:region):
  machineId         deepops machine ID; names the resources
  instanceType      the planned machine type (a2/a3/g2 carry their GPUs; n1 takes guestAccelerator)
  guestAccelerator  accelerator type for n1 (nvidia-tesla-t4, ...); empty for accelerator-optimized types
  acceleratorCount  GPUs attached with guestAccelerator
  zone              the zone of the instance
  network           the VPC network (default: default)
  image             the pinned image's full self-link (images/gcp.lock.yaml), never a family
  diskGb            boot disk size in GB (pd-balanced)
  sshCidr           the only source SSH is allowed from (the requester's address)
  sshUser           the login the public key is for
  publicKey         OpenSSH public key; the private key never leaves the requester's machine
  labels            the DESIGN tags in GCP's label charset, on the instance and its disk
  spot              true for spot capacity (provisioning model SPOT, deleted when preempted)
  maxRunSeconds     the cloud's own TTL backstop: GCP deletes the instance after this long
  secureBoot        Shielded VM secure boot (off by default: DKMS-built NVIDIA modules are unsigned)
  allowAnySsh       must be true for a 0.0.0.0/0 sshCidr to be accepted (never the default)
Outputs: instance_name, instance_id, zone, public_ip, private_ip.
"""

import ipaddress

import pulumi
import pulumi_gcp as gcp

cfg = pulumi.Config()
machine = cfg.require("machineId")
name = f"deepops-{machine}"
labels = {str(k): str(v) for k, v in cfg.require_object("labels").items()}
ssh_cidr = str(ipaddress.ip_network(cfg.require("sshCidr"), strict=False))
if ipaddress.ip_network(ssh_cidr).prefixlen == 0 and not cfg.get_bool("allowAnySsh"):
    raise ValueError(f"sshCidr {ssh_cidr} opens SSH to the whole internet; set allowAnySsh to true to mean it")
image = cfg.require("image")
if "/global/images/" not in image or "/family/" in image:
    raise ValueError(f"image {image} is not a pinned image self-link")
network = cfg.get("network") or "default"
zone = cfg.require("zone")
spot = cfg.get_bool("spot") or False
guest = cfg.get("guestAccelerator") or ""

firewall = gcp.compute.Firewall(
    f"{machine}-ssh",
    name=f"{name}-ssh",
    description=f"deepops {machine}: SSH from the requester only",
    network=network,
    direction="INGRESS",
    source_ranges=[ssh_cidr],
    allows=[{"protocol": "tcp", "ports": ["22"]}],
    target_tags=[name],  # only this machine's NIC
)

instance = gcp.compute.Instance(
    machine,
    name=name,
    zone=zone,
    machine_type=cfg.require("instanceType"),
    boot_disk={
        "auto_delete": True,
        "initialize_params": {
            "image": image,
            "size": cfg.require_int("diskGb"),
            "type": "pd-balanced",
            "labels": labels,
        },
    },
    guest_accelerators=[{"type": guest, "count": cfg.require_int("acceleratorCount")}] if guest else None,
    network_interfaces=[{"network": network, "access_configs": [{}]}],
    scheduling={
        # GPUs cannot live-migrate: host maintenance stops the machine, and it does not restart.
        "on_host_maintenance": "TERMINATE",
        "automatic_restart": False,
        "provisioning_model": "SPOT" if spot else "STANDARD",
        "preemptible": spot,
        "instance_termination_action": "DELETE",
        "max_run_duration": {"seconds": cfg.require_int("maxRunSeconds")},
    },
    shielded_instance_config={
        "enable_secure_boot": cfg.get_bool("secureBoot") or False,
        "enable_vtpm": True,
        "enable_integrity_monitoring": True,
    },
    metadata={
        "ssh-keys": f"{cfg.require('sshUser')}:{cfg.require('publicKey')}",
        "block-project-ssh-keys": "true",
    },
    labels=labels,
    tags=[name],
    opts=pulumi.ResourceOptions(depends_on=[firewall]),
)

pulumi.export("instance_name", instance.name)
pulumi.export("instance_id", instance.instance_id)
pulumi.export("zone", instance.zone)
pulumi.export("public_ip", instance.network_interfaces[0].access_configs[0].nat_ip)
pulumi.export("private_ip", instance.network_interfaces[0].network_ip)
