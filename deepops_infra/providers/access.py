"""SSH access to a cloud machine (every cloud provider): a key pair made on the requester's side, and who may connect.

The private key is generated here and written 0600 under $DEEPOPS_HOME/keys/; only the public
key goes to Pulumi, so no private key is ever in stack state. SSH is opened to the configured
CIDR or to this machine's public address (/32), never to 0.0.0.0/0 by default.
"""

import ipaddress
import os
from pathlib import Path

from deepops_infra.errors import UserError

DETECT_TIMEOUT_S = 5


def key_path(home: Path, machine_id: str) -> Path:
    return home / "keys" / f"{machine_id}.pem"


def make_key(home: Path, machine_id: str) -> str:
    """Generate (or reuse, after a retry) the machine's ed25519 key; returns the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = key_path(home, machine_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    else:
        key = Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} deepops-{machine_id}"


def forget_key(home: Path, machine_id: str) -> None:
    key_path(home, machine_id).unlink(missing_ok=True)


def requester_cidr(configured: str | None, detect_url: str, allow_any: bool = False, section: str = "aws") -> str:
    """The CIDR SSH is opened to: the configured one, else this machine's public address as /32 (or /128)."""
    if configured:
        return configured
    import urllib.request

    try:
        with urllib.request.urlopen(detect_url, timeout=DETECT_TIMEOUT_S) as resp:
            text = resp.read(64).decode().strip()
        address = ipaddress.ip_address(text)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not detect this machine's public address from {detect_url} ({exc}); "
            f"set {section}.ssh_cidr in config.yaml to the network SSH should come from"
        ) from None
    network = ipaddress.ip_network(f"{address}/{32 if address.version == 4 else 128}")
    if network.prefixlen == 0 and not allow_any:
        raise UserError("refusing to open SSH to everyone")
    return str(network)
