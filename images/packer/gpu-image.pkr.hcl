# Bakes an image definition (images/NAME.yaml) into a cloud image with the same Ansible roles
# that configure machines from stock images (roles/playbooks/configure-gpu.yml), on a CPU-only
# builder (deepops_bake=true: driver, CUDA, container toolkit and framework install; the GPU
# validation runs later, on the first GPU machine made from the image).
#
#   python images/packer/bake.py vars pytorch --cloud aws --region us-east-1 > build/pytorch-aws.json
#   packer init images/packer
#   packer build -only='amazon-ebs.gpu' -var-file=build/pytorch-aws.json images/packer
#   python images/packer/bake.py record packer-manifest.json      # the IDs into images/<cloud>.lock.yaml
#
# Every input comes from `bake.py vars` (the image definition); nothing is chosen here.

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3"
    }
    googlecompute = {
      source  = "github.com/hashicorp/googlecompute"
      version = "~> 1.1"
    }
    azure = {
      source  = "github.com/hashicorp/azure"
      version = "~> 2.1"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = "~> 1.1"
    }
  }
}

variable "image" {
  type        = string
  description = "Image definition name (images/NAME.yaml)."
}

variable "cloud" {
  type        = string
  description = "aws, gcp or azure: recorded in the manifest with the region."
}

variable "region" {
  type        = string
  description = "Region the image is baked in (and recorded for)."
}

variable "base" {
  type        = string
  description = "The definition's base for this cloud and region (bases: in the image file)."
}

variable "role_vars_file" {
  type        = string
  description = "JSON of the roles' variables, written by bake.py vars."
}

variable "lock_sha256" {
  type        = string
  description = "The image's on-prem lock hash: the baked image carries it as a tag/label."
}

variable "version" {
  type        = string
  description = "A timestamp that makes the baked image's name unique (bake.py vars sets it)."
}

variable "ssh_user" {
  type    = string
  default = "ubuntu"
}

variable "builder_type" {
  type        = map(string)
  description = "CPU builder per cloud: the image needs no GPU to be baked."
  default = {
    aws   = "c6i.xlarge"
    gcp   = "n2-standard-4"
    azure = "Standard_D4s_v5"
  }
}

variable "gcp_project" {
  type    = string
  default = ""
}

variable "azure_subscription_id" {
  type    = string
  default = ""
}

variable "azure_resource_group" {
  type    = string
  default = ""
}

locals {
  name = "deepops-${var.image}-${var.version}"
  tags = {
    "deepops-managed"     = "true"
    "deepops-image"       = var.image
    "deepops-lock-sha256" = substr(var.lock_sha256, 0, 63)
  }
  # aws bases are "OWNER/NAME" (an exact dated name, never a pattern)
  aws_owner = split("/", var.base)[0]
  aws_name  = join("/", slice(split("/", var.base), 1, length(split("/", var.base))))
  # azure bases are "PUBLISHER:OFFER:SKU:VERSION" (an exact version, never "latest")
  azure_urn = split(":", var.base)
}

source "amazon-ebs" "gpu" {
  region        = var.region
  instance_type = var.builder_type["aws"]
  ssh_username  = var.ssh_user
  ami_name      = local.name
  source_ami_filter {
    owners      = [local.aws_owner]
    filters     = { name = local.aws_name, state = "available" }
    most_recent = false # the name is exact: more than one match is an error, not a choice
  }
  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 100
    volume_type           = "gp3"
    delete_on_termination = true
    encrypted             = true
  }
  metadata_options {
    http_tokens = "required"
  }
  tags          = local.tags
  run_tags      = local.tags
  snapshot_tags = local.tags
}

source "googlecompute" "gpu" {
  project_id          = var.gcp_project
  zone                = "${var.region}-a"
  machine_type        = var.builder_type["gcp"]
  source_image        = element(split("/", var.base), length(split("/", var.base)) - 1)
  source_image_project_id = [split("/", var.base)[1]]
  ssh_username        = var.ssh_user
  image_name          = local.name
  disk_size           = 100
  image_labels        = { for k, v in local.tags : k => lower(v) }
  labels              = { for k, v in local.tags : k => lower(v) }
}

source "azure-arm" "gpu" {
  subscription_id                   = var.azure_subscription_id
  use_azure_cli_auth                = true
  location                          = var.region
  vm_size                           = var.builder_type["azure"]
  os_type                           = "Linux"
  image_publisher                   = local.azure_urn[0]
  image_offer                       = local.azure_urn[1]
  image_sku                         = local.azure_urn[2]
  image_version                     = local.azure_urn[3]
  managed_image_name                = local.name
  managed_image_resource_group_name = var.azure_resource_group
  os_disk_size_gb                   = 100
  azure_tags                        = local.tags
}

build {
  sources = ["source.amazon-ebs.gpu", "source.googlecompute.gpu", "source.azure-arm.gpu"]

  provisioner "ansible" {
    playbook_file = "${path.root}/../../roles/playbooks/configure-gpu.yml"
    user          = var.ssh_user
    use_proxy     = false
    extra_arguments = [
      "--extra-vars", "@${var.role_vars_file}",
      "--extra-vars", "deepops_bake=true",
    ]
    ansible_env_vars = [
      "ANSIBLE_ROLES_PATH=${path.root}/../../roles",
      # A builder made seconds ago: trust its key on first use, in a file of this bake only.
      "ANSIBLE_SSH_ARGS=-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=${path.root}/.bake_known_hosts",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      image       = var.image
      cloud       = var.cloud
      region      = var.region
      project     = var.gcp_project
      lock_sha256 = var.lock_sha256
    }
  }
}
