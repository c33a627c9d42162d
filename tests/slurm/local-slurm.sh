#!/usr/bin/env bash
# local-slurm.sh -- single-node SLURM "cluster" on localhost, no systemd, for wsi-mil's SLURM test
# (tests/slurm/test_slurm_workflow.py) and for trying the workflow profile by hand.
#
# Adapted from a script known to work on Debian 12: it records which daemons it started itself
# ($SLURM_LOCAL_DIR/started) and `stop` ends exactly those, by pid, so a munged or MariaDB that
# was already running on the machine is left alone.
#
# Installs (Debian 12 apt: slurm-wlm 22.05) munge + slurmctld + slurmd +
# slurm-client (+ slurmdbd + mariadb-server unless SLURM_LOCAL_ACCOUNTING=0) and
# starts the daemons by hand. Idempotent: re-running it while everything is up
# only re-checks the state (config changes restart the affected daemons).
# Needs root.
#
# Usage:
#   tests/slurm/local-slurm.sh            # install if needed, start, wait for idle node
#   tests/slurm/local-slurm.sh status     # show daemons / sinfo
#   tests/slurm/local-slurm.sh stop       # stop all daemons it started (by pid file)
#   tests/slurm/local-slurm.sh restart
#
# Environment knobs (defaults in brackets):
#   SLURM_LOCAL_DIR        state/log/spool dir              [/tmp/slurm-local]
#   SLURM_LOCAL_PARTITION  name of the (default) partition  [debug]
#   SLURM_LOCAL_CPUS       CPUs advertised for the node     [$(nproc)]
#                          (may exceed nproc: SlurmdParameters=config_overrides)
#   SLURM_LOCAL_MEM_MB     RealMemory of the node           [85% of MemTotal]
#   SLURM_LOCAL_GPUS       fake "gpu" GRES count (0 = none) [1]
#                          (lets rules with gpu=1 / gres=gpu:1 be scheduled and
#                           sets CUDA_VISIBLE_DEVICES; there is no real device)
#   SLURM_LOCAL_MINJOBAGE  MinJobAge (s); squeue status needs >=120 [600]
#   SLURM_LOCAL_ACCOUNTING 1 = slurmdbd + MariaDB under $SLURM_LOCAL_DIR   [1]
#                              (sacct works, plugin defaults work as on a real cluster;
#                               ~190 MB of packages, ~22 s install+start from scratch)
#                          0 = no accounting (lighter: ~14 MB, ~13 s) -- see below
#   SLURM_LOCAL_DB_PORT    TCP port of the private MariaDB (127.0.0.1)     [3306]
#
# Job accounting:
#  * ACCOUNTING=0: AccountingStorageType=accounting_storage/none. `sacct` fails
#    with "Slurm accounting storage is disabled", and snakemake-executor-plugin-
#    slurm (2.8.0) defaults to sacct whenever the sacct binary exists -> its jobs
#    are silently dropped and snakemake hangs. So ALWAYS pass
#        --slurm-status-command squeue
#    (or `slurm-status-command: squeue` in the profile) in this mode.
#  * ACCOUNTING=1: real slurmdbd accounting; plugin defaults work unchanged.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

ACTION="${1:-start}"
STATE="${SLURM_LOCAL_DIR:-/tmp/slurm-local}"
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
CPUS="${SLURM_LOCAL_CPUS:-$(nproc)}"
MEM_MB="${SLURM_LOCAL_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2/1024*0.85}' /proc/meminfo)}"
GPUS="${SLURM_LOCAL_GPUS:-1}"
MINJOBAGE="${SLURM_LOCAL_MINJOBAGE:-600}"
ACCOUNTING="${SLURM_LOCAL_ACCOUNTING:-1}"
DB_PORT="${SLURM_LOCAL_DB_PORT:-3306}"
NODE=localhost
CLUSTER=localcluster
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
DB_SOCK="$STATE/mysqld.sock"
CONF_CHANGED=0

log() { printf '[local-slurm] %s\n' "$*" >&2; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Daemons this script started, one "pidfile name" per line; `stop` ends only these.
STARTED="$STATE/started"
mark_started() { mkdir -p "$STATE"; echo "$1 $2" >> "$STARTED"; }

stop_pidfile() { # $1 = pidfile, $2 = name
  if pid_alive "$1"; then
    local pid; pid="$(cat "$1")"
    log "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$2 still alive, SIGKILL"; kill -9 "$pid" || true; fi
  fi
  rm -f "$1"
}

do_stop() {
  # Reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged.
  local name f
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    [ -s "$STARTED" ] || break
    f="$(awk -v n="$name" '$2 == n {print $1}' "$STARTED" | tail -1)"
    [ -n "$f" ] && stop_pidfile "$f" "$name"
  done
  rm -f "$STARTED"
  log "stopped the daemons this script started (state kept in $STATE; rm -rf it for a clean slate)"
}

do_status() {
  local p f n
  for p in "$STATE/slurmctld.pid:slurmctld" "$STATE/slurmd.pid:slurmd" \
           "/run/munge/munged.pid:munged" "$STATE/slurmdbd.pid:slurmdbd" \
           "$STATE/mariadbd.pid:mariadbd"; do
    f="${p%%:*}"; n="${p##*:}"
    if pid_alive "$f"; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: not running"; fi
  done
  if command -v sinfo >/dev/null; then sinfo 2>&1 || true; fi
}

install_pkgs() {
  local need=0 b
  local pkgs="munge slurmctld slurmd slurm-client"
  local bins="munged slurmctld slurmd sbatch squeue scontrol"
  if [ "$ACCOUNTING" = 1 ]; then
    pkgs="$pkgs slurmdbd mariadb-server"; bins="$bins slurmdbd mariadbd mariadb-install-db"
  fi
  for b in $bins; do command -v "$b" >/dev/null 2>&1 || need=1; done
  [ "$need" = 0 ] && return 0
  log "installing $pkgs (apt)"
  # Keep maintainer scripts from trying to start services (no init system).
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
      runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  if pid_alive /run/munge/munged.pid && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  log "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  mark_started /run/munge/munged.pid munged
  for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "munged did not come up"; exit 1
}

install_if_changed() { # $1 = new file, $2 = target; sets CONF_CHANGED=1 on change
  if ! cmp -s "$1" "$2"; then
    mv "$1" "$2"; chmod 0644 "$2"; CONF_CHANGED=1; log "wrote $2"
  else
    rm -f "$1"
  fi
}

write_conf() {
  mkdir -p "$STATE/ctld" "$STATE/d" "$CONF_DIR"
  local gres_line="" node_gres="" acct_lines
  if [ "$GPUS" -gt 0 ]; then
    gres_line="GresTypes=gpu"
    node_gres="Gres=gpu:$GPUS"
    # record GPU allocations in accounting too (sacct -o AllocTRES shows gres/gpu=N)
    [ "$ACCOUNTING" = 1 ] && gres_line="$gres_line
AccountingStorageTRES=gres/gpu"
  fi
  if [ "$ACCOUNTING" = 1 ]; then
    acct_lines="JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# keep sbatch --comment (snakemake's rule name) in accounting: sacct -o Comment
AccountingStoreFlags=job_comment"
  else
    acct_lines="# no slurmdbd/MariaDB: sacct will not work -> use squeue for job status
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none"
  fi
  local new; new="$(mktemp)"
  cat > "$new" <<EOF
# generated by tests/slurm/local-slurm.sh -- single node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# no cgroups, no systemd needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$acct_lines
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without --mem must not grab the whole node
DefMemPerCPU=1000
# keep finished jobs visible to squeue long enough for snakemake's poller
MinJobAge=$MINJOBAGE
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
$gres_line
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  [ -e "$CONF" ] && ! cmp -s "$new" "$CONF" && cp "$CONF" "$CONF.bak.$(date +%s)"
  install_if_changed "$new" "$CONF"
  if [ "$GPUS" -gt 0 ]; then
    # Fake GPU GRES: slurmd drops file-less GPUs ("Removing file-less GPU"),
    # so give each one a device node that is really /dev/null (char 1,3).
    mkdir -p "$STATE/dev"
    local i last=$((GPUS - 1))
    for i in $(seq 0 "$last"); do
      [ -e "$STATE/dev/fakegpu$i" ] || mknod "$STATE/dev/fakegpu$i" c 1 3 2>/dev/null \
        || touch "$STATE/dev/fakegpu$i"   # plain file: slurmd logs an error but counts it
    done
    new="$(mktemp)"
    if [ "$GPUS" = 1 ]; then
      echo "NodeName=$NODE Name=gpu File=$STATE/dev/fakegpu0" > "$new"
    else
      echo "NodeName=$NODE Name=gpu File=$STATE/dev/fakegpu[0-$last]" > "$new"
    fi
    install_if_changed "$new" "$CONF_DIR/gres.conf"
  elif [ -e "$CONF_DIR/gres.conf" ]; then
    rm -f "$CONF_DIR/gres.conf"; CONF_CHANGED=1
  fi
}

start_accounting() {
  [ "$ACCOUNTING" = 1 ] || return 0
  local i new
  if [ ! -d "$STATE/mysql/mysql" ]; then
    log "initialising MariaDB datadir $STATE/mysql"
    mariadb-install-db --user=root --datadir="$STATE/mysql" \
      --auth-root-authentication-method=socket --skip-test-db \
      >"$STATE/mariadb-install.log" 2>&1
  fi
  if ! pid_alive "$STATE/mariadbd.pid"; then
    log "starting mariadbd (127.0.0.1:$DB_PORT, socket $DB_SOCK)"
    setsid /usr/sbin/mariadbd --user=root --datadir="$STATE/mysql" --socket="$DB_SOCK" \
      --pid-file="$STATE/mariadbd.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
      --skip-name-resolve --log-error="$STATE/mariadbd.err" </dev/null >/dev/null 2>&1 &
    mark_started "$STATE/mariadbd.pid" mariadbd
  fi
  for i in $(seq 1 150); do mariadb -S "$DB_SOCK" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb -S "$DB_SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;" \
    || { log "MariaDB not usable; see $STATE/mariadbd.err"; tail -20 "$STATE/mariadbd.err" >&2; exit 1; }
  new="$(mktemp)"
  cat > "$new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
LogFile=$STATE/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF
  if ! cmp -s "$new" "$CONF_DIR/slurmdbd.conf"; then
    mv "$new" "$CONF_DIR/slurmdbd.conf"; stop_pidfile "$STATE/slurmdbd.pid" slurmdbd
  else
    rm -f "$new"
  fi
  chmod 600 "$CONF_DIR/slurmdbd.conf"   # slurmdbd refuses a world-readable config
  if ! pid_alive "$STATE/slurmdbd.pid"; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
    mark_started "$STATE/slurmdbd.pid" slurmdbd
  fi
  for i in $(seq 1 150); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  if ! sacctmgr -n list cluster format=cluster%40 | grep -qw "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

start_slurm() {
  if [ "$CONF_CHANGED" = 1 ]; then
    stop_pidfile "$STATE/slurmd.pid" slurmd
    stop_pidfile "$STATE/slurmctld.pid" slurmctld
  fi
  if ! pid_alive "$STATE/slurmctld.pid"; then
    log "starting slurmctld"
    /usr/sbin/slurmctld -i
    mark_started "$STATE/slurmctld.pid" slurmctld
  fi
  for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  if ! scontrol ping 2>/dev/null | grep -q UP; then
    log "slurmctld not responding; see $STATE/slurmctld.log"; tail -20 "$STATE/slurmctld.log" >&2; exit 1
  fi
  if ! pid_alive "$STATE/slurmd.pid"; then
    log "starting slurmd"
    /usr/sbin/slurmd -N "$NODE"
    mark_started "$STATE/slurmd.pid" slurmd
  fi
  local st=""
  for _ in $(seq 1 150); do
    st="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)"
    case "$st" in
      idle*|mixed*|allocated*|completing*) break ;;
      drain*|down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  case "$st" in
    idle*|mixed*|allocated*|completing*) ;;
    *) log "node state '$st'; see $STATE/slurmd.log"; sinfo -R >&2 || true
       tail -20 "$STATE/slurmd.log" >&2; exit 1 ;;
  esac
}

case "$ACTION" in
  stop) do_stop; exit 0 ;;
  status) do_status; exit 0 ;;
  restart) do_stop ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status|restart]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
T0=$(date +%s.%N)
install_pkgs
T_INST=$(date +%s.%N)
start_munge
write_conf
start_accounting
start_slurm
T1=$(date +%s.%N)
sinfo
STATUS_FLAG=""
[ "$ACCOUNTING" = 1 ] || STATUS_FLAG=" --slurm-status-command squeue"
cat <<EOF

[local-slurm] ready: install $(awk -v a="$T0" -v b="$T_INST" 'BEGIN{printf "%.1f", b-a}') s, start $(awk -v a="$T_INST" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s.
  partition=$PARTITION cpus=$CPUS mem=${MEM_MB}MB fake_gpus=$GPUS accounting=$ACCOUNTING
  state/logs : $STATE   config: $CONF
  test job   : sbatch -p $PARTITION --wrap 'hostname' && squeue
  snakemake  : snakemake --executor slurm --jobs 4 --default-resources slurm_partition=$PARTITION \\
                 --slurm-init-seconds-before-status-checks 5$STATUS_FLAG
  stop       : SLURM_LOCAL_DIR=$STATE $0 stop
               (kills slurmd, slurmctld, slurmdbd, mariadbd, munged by pid file)
EOF
