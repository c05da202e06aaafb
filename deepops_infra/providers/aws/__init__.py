"""AWS: machines as Pulumi stacks (stacks/aws), read path and verification with boto3."""
