"""deepops-infra: ephemeral GPU machines across clouds and on-prem servers."""

__version__ = "0.1.0"
