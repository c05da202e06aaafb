"""The session end in a lease: a per-session `sshd -i` started by one POSIX shell script.

Whatever carries the bytes (a local pipe, the pool key's ssh, the server's WebSocket), the far end
is the same: SCRIPT runs on the host as the lease's Unix user, makes the lease's host key once
(`<workspace>/.deepops/ssh/host_ed25519`), writes the lease's sshd_config and an authorized-keys
file holding only the key of the person opening this session, prints one header line with the
host's public key (what the client pins, instead of trusting on first use), and runs `sshd -i`
on its stdin and stdout. sshd's ForceCommand enters the workspace with the lease's env.sh
(CUDA_VISIBLE_DEVICES, the pinned venv, DEEPOPS_LEASE_KEY, so release ends what it started).
Only local port forwarding is allowed. Everything under `.deepops/ssh` goes with the workspace.
"""

import base64
import re
import shlex

HEADER = "deepops-session 1 "  # then the host key: `ssh-ed25519 AAAA...`
# sshd_config lines cannot quote every character: workspaces have plain paths (deepops makes them)
SAFE_PATH = re.compile(r"/[A-Za-z0-9/._+-]*")
PUBLIC_KEY = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}")

SCRIPT = r"""
set -u
ws=$1 key=$2
peer=${SSH_CONNECTION:-}  # how this host was reached (the pool key's ssh), shown in the session
s=$ws/.deepops/ssh
fail() { echo "deepops: $*" >&2; exit 3; }
[ -f "$ws/.deepops/env.sh" ] || fail "no lease workspace at $ws on $(hostname)"
sshd=/usr/sbin/sshd
[ -x "$sshd" ] || sshd=$(command -v sshd) || fail "sshd is not installed on $(hostname) (install openssh-server)"
sftp=
for p in /usr/lib/openssh /usr/libexec/openssh /usr/libexec /usr/lib/ssh; do
  p=$p/sftp-server
  [ -x "$p" ] && sftp=$p && break
done
umask 077
[ -d "$s" ] || mkdir -p "$s" || fail "cannot write $s"
if [ ! -f "$s/host_ed25519" ]; then
  ssh-keygen -q -t ed25519 -N '' -C deepops-lease -f "$s/new.$$" </dev/null >/dev/null || fail "ssh-keygen failed"
  ln "$s/new.$$" "$s/host_ed25519" 2>/dev/null  # the first session's key wins
  rm -f "$s/new.$$" "$s/new.$$.pub"
fi
if [ ! -f "$s/host_ed25519.pub" ]; then
  ssh-keygen -y -f "$s/host_ed25519" >"$s/pub.$$" && mv -f "$s/pub.$$" "$s/host_ed25519.pub" || fail "bad host key"
fi
version=1  # of the files below: written again only when it changes
v=
[ -f "$s/version" ] && read -r v <"$s/version"
if [ "$v" != "$version" ]; then
cat >"$s/enter.$$" <<'EOF'
# deepops: the entry of every session into the lease (sshd's ForceCommand)
case "${SSH_CONNECTION:-UNKNOWN}" in
  UNKNOWN*) [ -n "${DEEPOPS_PEER:-}" ] && export SSH_CONNECTION="$DEEPOPS_PEER" ;;
esac
unset DEEPOPS_PEER
s=$(dirname "$0")
. "$s/../env.sh" || exit 1
if [ -n "${SSH_ORIGINAL_COMMAND:-}" ]; then
  # the user's shell, as plain ssh runs a command; the lease's environment again after its rc files
  case "${SHELL:-}" in */bash | */sh | */dash | */zsh | */ksh | */mksh) ;; *) SHELL=/bin/sh ;; esac
  exec "$SHELL" -c '. "$DEEPOPS_WORKSPACE/.deepops/env.sh" && eval "$SSH_ORIGINAL_COMMAND"'
fi
command -v bash >/dev/null 2>&1 && exec bash --rcfile "$s/bashrc" -i
exec "${SHELL:-/bin/sh}" -i
EOF
cat >"$s/bashrc.$$" <<'EOF'
# deepops: an interactive shell in the lease: the login profile, then the lease's environment on top
[ -r /etc/profile ] && . /etc/profile
for f in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do [ -r "$f" ] && { . "$f"; break; }; done
. "$DEEPOPS_WORKSPACE/.deepops/env.sh"
EOF
cat >"$s/sshd_config.$$" <<EOF
HostKey $s/host_ed25519
PidFile none
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding local
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
GatewayPorts no
PermitUserEnvironment no
PrintMotd no
PrintLastLog no
LogLevel ERROR
${sftp:+Subsystem sftp $sftp}
ForceCommand /bin/sh $s/enter
EOF
for f in enter bashrc sshd_config; do mv -f "$s/$f.$$" "$s/$f"; done
printf '%s\n' "$version" >"$s/version"
fi
ak=$s/authorized_keys.$$
printf '%s\n' "$key" >"$ak"
# sshd's privilege separation folder, when it runs as root
[ -d /run/sshd ] || { [ "$(id -u)" = 0 ] && mkdir -p /run/sshd; }
read -r pub <"$s/host_ed25519.pub"
printf 'deepops-session 1 %s\n' "$pub"
"$sshd" -i -e -f "$s/sshd_config" -o "AuthorizedKeysFile=$ak" -o "SetEnv=DEEPOPS_PEER=\"$peer\""
rc=$?
rm -f "$ak"
exit $rc
"""


def check_public_key(key: str) -> str:
    """`key` as one authorized_keys line (type and base64, comment dropped); ValueError if it is not one."""
    text = " ".join(key.split()[:2])
    if PUBLIC_KEY.fullmatch(text):
        kind, data = text.split()
        try:
            blob = base64.b64decode(data, validate=True)
        except ValueError:
            blob = b""
        if blob[4 : 4 + len(kind)] == kind.encode() and blob[:4] == len(kind).to_bytes(4, "big"):
            return text
    raise ValueError("not an OpenSSH public key (ssh-ed25519 AAAA...)")


def script_argv(workspace: str, public_key: str) -> list[str]:
    """argv (for the lease's host) whose stdin/stdout become a session with the lease's sshd:
    first the header line, then sshd's SSH stream."""
    if not SAFE_PATH.fullmatch(workspace) or "/../" in workspace + "/":
        raise ValueError(f"workspace {workspace!r}: sessions need a plain absolute path")
    return ["sh", "-c", SCRIPT, "deepops-session", workspace, check_public_key(public_key)]


def remote_command(argv: list[str]) -> str:
    """`argv` as the one command line ssh sends to a host's login shell."""
    return shlex.join(argv)


def parse_header(line: bytes) -> str:
    """The host key of a session's header line; ValueError when the line is not one."""
    text = line.decode("ascii", "replace").strip()
    if not text.startswith(HEADER.strip()):
        raise ValueError(text[:200] or "the session ended before it started")
    key = text.removeprefix(HEADER.strip()).strip()
    try:
        return check_public_key(key)
    except ValueError:
        raise ValueError(f"bad host key in session header: {key[:80]!r}") from None
