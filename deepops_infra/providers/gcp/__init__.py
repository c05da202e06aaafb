"""GCP: machines as Pulumi stacks (stacks/gcp), read path with google-cloud-compute and Cloud Monitoring."""
