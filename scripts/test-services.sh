#!/usr/bin/env bash
# Make sure the services the test suite talks to exist and run: PostgreSQL and OpenSSH (server
# and client), from Debian's packages when missing. Prints the environment the tests need
# (DEEPOPS_TEST_PG_URL=...) on stdout; everything else goes to stderr.
set -euo pipefail
log() { echo "test-services: $*" >&2; }

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing $*: install them (Debian/Ubuntu: apt-get install $*); the tests that need them will be skipped"
    return 0
  fi
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "$@" >&2
}

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v pg_ctlcluster >/dev/null || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
[ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)  # the HTML cost report is opened in headless Chromium
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)  # the team server's web page is driven through it (selenium)
command -v slurmctld >/dev/null && command -v munged >/dev/null || need+=(slurm-wlm munge)  # tests/test_slurm*.py (scripts/slurm-local.sh)
command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null || need+=(slurmdbd mariadb-server)  # tests/test_slurm_more.py: accounting
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# MariaDB (Slurm accounting, tests/test_slurm_more.py): start it when it does not answer.
if command -v mysqladmin >/dev/null && ! mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
  { command -v service >/dev/null && service mariadb start >&2; } || log "MariaDB does not answer on 127.0.0.1:3306"
fi

# PostgreSQL: reuse a server answering on 127.0.0.1:5432, else start the local cluster.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
fi

me=$(id -un)
if psql -h 127.0.0.1 -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  echo "DEEPOPS_TEST_PG_URL=postgresql://$me@127.0.0.1:5432/postgres"
elif [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && [ -S /var/run/postgresql/.s.PGSQL.5432 ]; then
  # A fresh Debian cluster: peer authentication over the socket, with a role for this user.
  runuser -u postgres -- psql -Atc "select 1 from pg_roles where rolname='$me'" | grep -q 1 \
    || runuser -u postgres -- createuser --superuser "$me" >&2
  echo "DEEPOPS_TEST_PG_URL=postgresql://$me@/postgres?host=/var/run/postgresql"
else
  log "no PostgreSQL reachable: the PostgreSQL cases will be skipped"
fi
