#!/usr/bin/env bash
# A real Slurm cluster on this machine, for trying deepops and for its tests: one slurmctld and two
# slurmd (nodes n1, n2) on 127.0.0.1, with fake GPUs (character devices outside /dev named in
# gres.conf), all under a state directory of its own (nothing in /etc is changed).
#
#   scripts/slurm-local.sh install      install slurm-wlm + munge from Debian's packages when missing
#   scripts/slurm-local.sh start        install if needed, then start (about a second); idempotent
#   scripts/slurm-local.sh stop         stop the daemons, keep the state directory
#   scripts/slurm-local.sh status       exit 0 when the cluster answers (sinfo on stdout)
#   scripts/slurm-local.sh pool-entry   a pool.yaml fragment (`clusters:`) naming it `local-slurm`
#   scripts/slurm-local.sh env          SLURM_CONF=... to use the Slurm commands by hand
#
# Settings (environment): DEEPOPS_SLURM_DIR (state, default /tmp/deepops-slurm), DEEPOPS_SLURM_GPUS
# (total fake GPUs, split over the two nodes, default 4), DEEPOPS_SLURM_PORT (slurmctld's port;
# the nodes use the next two, default 6917), DEEPOPS_SLURM_ACCOUNTING=1 (accounting through slurmdbd
# and the local MariaDB, root without a password on 127.0.0.1:3306; slurmdbd listens on port+3 and
# keeps a database `deepops_slurm_<port>` of its own, emptied at each start; default 0: the job
# completion log only). A start with other settings than the running
# cluster's restarts it. Slurm needs root here (daemons run as root; jobs run as the submitter).
set -euo pipefail
log() { echo "slurm-local: $*" >&2; }

DIR=${DEEPOPS_SLURM_DIR:-/tmp/deepops-slurm}
GPUS=${DEEPOPS_SLURM_GPUS:-4}
PORT=${DEEPOPS_SLURM_PORT:-6917}
ACCOUNTING=${DEEPOPS_SLURM_ACCOUNTING:-0}
DB=deepops_slurm_$PORT
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF
NODES=(n1 n2)

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "Slurm is not installed: apt-get install slurm-wlm munge (as root, Debian/Ubuntu)"
    return 1
  fi
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
    || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2; }
}

install_dbd() {  # slurmdbd (accounting only); MariaDB is expected to run already
  command -v slurmdbd >/dev/null && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "slurmdbd is not installed: apt-get install slurmdbd (as root, Debian/Ubuntu)"
    return 1
  fi
  log "installing slurmdbd"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends slurmdbd >&2 \
    || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends slurmdbd >&2; }
}

mysql_root() { mysql -uroot -h127.0.0.1 -P3306 --batch "$@"; }

settings() { echo "gpus=$GPUS port=$PORT$([ "$ACCOUNTING" != 1 ] || echo ' accounting')"; }

accounting_config() {  # slurm.conf lines, and slurmdbd.conf next to it (0600: it names the database)
  if [ "$ACCOUNTING" != 1 ]; then
    echo "AccountingStorageType=accounting_storage/none"
    return 0
  fi
  printf '%s\n' AccountingStorageType=accounting_storage/slurmdbd AccountingStorageHost=127.0.0.1 \
    "AccountingStoragePort=$((PORT + 3))" "AccountingStoragePass=$DIR/munge/munge.socket" \
    AccountingStoreFlags=job_comment
  (umask 077; printf '%s\n' AuthType=auth/munge "AuthInfo=socket=$DIR/munge/munge.socket" DbdHost=localhost \
    DbdAddr=127.0.0.1 "DbdPort=$((PORT + 3))" SlurmUser=root "LogFile=$DIR/log/slurmdbd.log" \
    "PidFile=$DIR/run/slurmdbd.pid" StorageType=accounting_storage/mysql StorageHost=127.0.0.1 \
    StoragePort=3306 StorageUser=root "StorageLoc=$DB" > "$DIR/etc/slurmdbd.conf")
}

write_config() {
  local per=$((GPUS / 2)) rest=$((GPUS - GPUS / 2)) host
  host=$(hostname -s)
  mkdir -p "$DIR"/{etc,dev,run,log,ctld,munge,jobs} "$DIR"/spool/{n1,n2}
  rm -f "$DIR/etc/slurmdbd.conf"
  chmod 755 "$DIR"; chmod 700 "$DIR/munge"
  chmod 1777 "$DIR/jobs"
  rm -f "$DIR"/dev/nvidia*
  for i in $(seq 0 $((GPUS - 1))); do mknod "$DIR/dev/nvidia$i" c 195 "$i"; done
  chmod 666 "$DIR"/dev/nvidia* 2>/dev/null || true
  [ -s "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
  gres_line() { # node first count
    [ "$3" -gt 0 ] || return 0
    if [ "$3" -eq 1 ]; then echo "NodeName=$1 Name=gpu Type=a100 File=$DIR/dev/nvidia$2"
    else echo "NodeName=$1 Name=gpu Type=a100 File=$DIR/dev/nvidia[$2-$(($2 + $3 - 1))]"; fi
  }
  { echo "AutoDetect=off"; gres_line n1 0 "$per"; gres_line n2 "$per" "$rest"; } > "$DIR/etc/gres.conf"
  node_gres() { [ "$1" -gt 0 ] && echo " Gres=gpu:a100:$1" || true; }
  cat > "$CONF" <<EOF
# written by scripts/slurm-local.sh ($(settings))
ClusterName=local-slurm
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,bf_continue,sched_min_interval=100000
ReturnToService=2
MpiDefault=none
KillWait=2
MinJobAge=600
InactiveLimit=0
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
$(accounting_config)
JobAcctGatherType=jobacct_gather/none
NodeName=n1 NodeAddr=127.0.0.1 Port=$((PORT + 1)) CPUs=8 RealMemory=4000$(node_gres "$per") State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port=$((PORT + 2)) CPUs=8 RealMemory=4000$(node_gres "$rest") State=UNKNOWN
PartitionName=gpu Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
  echo "# nothing to add" > "$DIR/etc/cgroup.conf"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

running() {
  pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd-n1.pid" && pid_alive "$DIR/run/slurmd-n2.pid" \
    && { [ "$ACCOUNTING" != 1 ] || pid_alive "$DIR/run/slurmdbd.pid"; }
}

stop() {
  local f pid
  for f in "$DIR"/run/slurmd-n1.pid "$DIR"/run/slurmd-n2.pid "$DIR"/run/slurmctld.pid "$DIR"/run/slurmdbd.pid \
    "$DIR"/run/munged.pid; do
    if pid_alive "$f"; then
      pid=$(cat "$f")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

start_dbd() {  # a clean accounting database (slurmctld -c starts job IDs over), then slurmdbd
  mysql_root -e "DROP DATABASE IF EXISTS \`$DB\`" || { log "MariaDB does not answer as root on 127.0.0.1:3306"; return 1; }
  slurmdbd 9>&-
  local until=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$until" ]; do
    timeout 5 sacctmgr -n -P show cluster >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "slurmdbd did not answer; log in $DIR/log/slurmdbd.log"
  return 1
}

start() {
  install
  [ "$ACCOUNTING" != 1 ] || install_dbd
  if running && head -n 1 "$CONF" 2>/dev/null | grep -qF "($(settings))"; then
    log "already running ($(settings))"
    return 0
  fi
  stop
  write_config
  # (9>&-: the daemons must not inherit the lock, or the next start or stop would wait forever)
  munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" --force 9>&-
  for _ in $(seq 1 50); do [ -S "$DIR/munge/munge.socket" ] && break; sleep 0.05; done
  [ "$ACCOUNTING" != 1 ] || start_dbd
  slurmctld -c -f "$CONF" 9>&-  # -c: a clean start, no jobs from an earlier run
  for n in "${NODES[@]}"; do slurmd -N "$n" -f "$CONF" 9>&-; done
  for _ in $(seq 1 200); do
    if [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle')" = 2 ]; then
      log "started: 2 nodes, $GPUS fake GPUs (state in $DIR)"
      return 0
    fi
    sleep 0.1
  done
  log "the nodes did not become idle; logs in $DIR/log"
  sinfo -N >&2 || true
  return 1
}

status() {
  running || { log "not running"; return 1; }
  sinfo -N -o '%N %t %G'
}

pool_entry() {
  cat <<EOF
clusters:
  - name: local-slurm
    kind: slurm
    connection: local
    slurm_conf: $CONF
    partitions: [gpu]
    rates: {gpu_hour: 1.5, node_hour: 0.2}
    gres_models: {a100: A100-80GB}
EOF
}

lock() { mkdir -p "$(dirname "$DIR")"; exec 9>"$DIR.lock"; flock 9; }  # one start or stop at a time

case "${1:-}" in
  install) install ;;
  start) lock; start ;;
  stop) lock; stop; log "stopped" ;;
  status) status ;;
  pool-entry) pool_entry ;;
  env) echo "SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install|start|stop|status|pool-entry|env" >&2; exit 2 ;;
esac
