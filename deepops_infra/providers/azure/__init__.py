"""Azure: machines as Pulumi stacks (stacks/azure), read path with azure-mgmt-compute and Azure Monitor."""
