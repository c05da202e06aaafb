"""One deepops machine on Azure, in a resource group of its own (teardown is one delete). Every
decision is made by deepops before Pulumi runs and arrives as stack config.

Config (namespace deepops-azure, plus azure-native:location and azure-native:subscriptionId):
  machineId         deepops machine ID; names the resources
  instanceType      the planned VM size (Standard_NC24ads_A100_v4, ...)
  location          the region
  imageReference    the pinned image: {publisher, offer, sku, version} with an explicit version, or {id}
                    of a gallery image version; never `latest`
  diskGb            OS disk size in GB (Premium SSD, encrypted at host)
  sshCidr           the only source SSH is allowed from (the requester's address)
  adminUser         the login the public key is for (password login is disabled)
  publicKey         OpenSSH public key; the private key never leaves the requester's machine
  tags              the DESIGN tags, on every taggable resource
  spot              true for Spot priority (evicted VMs are deleted, at most the on-demand price)
  shutdownTime      HHMM (UTC) of the daily auto-shutdown, the cloud's own backstop
  shutdownEnabled   false when a daily schedule would fire inside a lease that may still be extended
  allowAnySsh       must be true for a 0.0.0.0/0 sshCidr to be accepted (never the default)
Outputs: vm_id, resource_group, public_ip, private_ip.
"""

import ipaddress

import pulumi
import pulumi_azure_native as az

cfg = pulumi.Config()
machine = cfg.require("machineId")
name = f"deepops-{machine}"
tags = {str(k): str(v) for k, v in cfg.require_object("tags").items()}
ssh_cidr = str(ipaddress.ip_network(cfg.require("sshCidr"), strict=False))
if ipaddress.ip_network(ssh_cidr).prefixlen == 0 and not cfg.get_bool("allowAnySsh"):
    raise ValueError(f"sshCidr {ssh_cidr} opens SSH to the whole internet; set allowAnySsh to true to mean it")
image = {str(k): str(v) for k, v in cfg.require_object("imageReference").items()}
if "id" not in image and (not image.get("version") or image["version"].lower() == "latest"):
    raise ValueError("imageReference needs an explicit version (or a gallery image version id), never latest")
location = cfg.require("location")
user = cfg.require("adminUser")
spot = cfg.get_bool("spot") or False

group = az.resources.ResourceGroup(f"{machine}-rg", resource_group_name=name, location=location, tags=tags)
vnet = az.network.VirtualNetwork(
    f"{machine}-vnet",
    virtual_network_name=f"{name}-vnet",
    resource_group_name=group.name,
    location=location,
    address_space={"address_prefixes": ["10.8.0.0/24"]},
    tags=tags,
)
subnet = az.network.Subnet(
    f"{machine}-subnet",
    subnet_name="machine",
    resource_group_name=group.name,
    virtual_network_name=vnet.name,
    address_prefix="10.8.0.0/26",
)
nsg = az.network.NetworkSecurityGroup(
    f"{machine}-nsg",
    network_security_group_name=f"{name}-nsg",
    resource_group_name=group.name,
    location=location,
    security_rules=[
        {
            "name": "ssh-from-requester",
            "priority": 100,
            "direction": "Inbound",
            "access": "Allow",
            "protocol": "Tcp",
            "source_address_prefix": ssh_cidr,
            "source_port_range": "*",
            "destination_address_prefix": "*",
            "destination_port_range": "22",
        }
    ],
    tags=tags,
)
public_ip = az.network.PublicIPAddress(
    f"{machine}-ip",
    public_ip_address_name=f"{name}-ip",
    resource_group_name=group.name,
    location=location,
    sku={"name": "Standard"},
    public_ip_allocation_method="Static",
    tags=tags,
)
nic = az.network.NetworkInterface(
    f"{machine}-nic",
    network_interface_name=f"{name}-nic",
    resource_group_name=group.name,
    location=location,
    ip_configurations=[{"name": "primary", "subnet": {"id": subnet.id}, "public_ip_address": {"id": public_ip.id}}],
    network_security_group={"id": nsg.id},
    tags=tags,
)
spot_options = {"priority": "Spot", "eviction_policy": "Delete", "billing_profile": {"max_price": -1}} if spot else {}
vm = az.compute.VirtualMachine(
    machine,
    vm_name=name,
    resource_group_name=group.name,
    location=location,
    hardware_profile={"vm_size": cfg.require("instanceType")},
    network_profile={"network_interfaces": [{"id": nic.id, "primary": True}]},
    os_profile={
        "computer_name": name,
        "admin_username": user,
        "linux_configuration": {
            "disable_password_authentication": True,
            "ssh": {
                "public_keys": [{"path": f"/home/{user}/.ssh/authorized_keys", "key_data": cfg.require("publicKey")}]
            },
        },
    },
    storage_profile={
        "image_reference": image,
        "os_disk": {
            "create_option": "FromImage",
            "delete_option": "Delete",
            "disk_size_gb": cfg.require_int("diskGb"),
            "managed_disk": {"storage_account_type": "Premium_LRS"},
        },
    },
    # Managed disks are encrypted at rest by the platform; at host covers the temp disk and caches too.
    security_profile={"encryption_at_host": True},
    **spot_options,
    tags=tags,
)
shutdown = az.devtestlab.GlobalSchedule(
    f"{machine}-shutdown",
    name=f"shutdown-computevm-{name}",
    resource_group_name=group.name,
    location=location,
    status="Enabled" if cfg.get_bool("shutdownEnabled") is not False else "Disabled",
    task_type="ComputeVmShutdownTask",
    daily_recurrence={"time": cfg.require("shutdownTime")},
    time_zone_id="UTC",
    target_resource_id=vm.id,
    tags=tags,
)

pulumi.export("vm_id", vm.id)
pulumi.export("resource_group", group.name)
pulumi.export("public_ip", public_ip.ip_address)
pulumi.export("private_ip", nic.ip_configurations.apply(lambda c: c[0].private_ip_address if c else None))
