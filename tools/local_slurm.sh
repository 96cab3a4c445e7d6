#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the launcher tests and for trying --submit on a laptop.
#
#   bash tools/local_slurm.sh start   # install (apt) and start munged, MariaDB + slurmdbd, slurmctld, slurmd
#   bash tools/local_slurm.sh status  # daemons and the node state
#   bash tools/local_slurm.sh stop    # stop the daemons it started, by pid file
#
# Needs root and Debian's slurm packages (22.05). Everything listens on 127.0.0.1 only. Accounting
# (slurmdbd) is always on: without it, submitit cannot see that a killed job died and waits forever.
# No systemd and no cgroups are needed: processes are tracked through /proc.
set -euo pipefail

CLUSTER_NAME=simdinov2-local
DB_PASSWORD=${SIMDINOV2_SLURM_DB_PASSWORD:-simdinov2}
PIDS=(/run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/slurm/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid)

log() { echo "[local_slurm $(date +%H:%M:%S)] $*"; }
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
retry() { # retry SECONDS COMMAND...: run COMMAND every 0.25 s until it succeeds or SECONDS pass
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "gave up after waiting for: $*"; return 1; }
    sleep 0.25
  done
}

install_packages() {
  local missing=()
  for bin in slurmctld slurmd sbatch munged slurmdbd mariadbd; do command -v "$bin" >/dev/null || missing+=("$bin"); done
  ((${#missing[@]} == 0)) && return 0
  log "installing Debian packages (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' postinst scripts try to start services through systemd; that is refused here and harmless.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

start_munge() {
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 600 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
  retry 20 bash -c 'munge -n | unmunge'
}

start_accounting() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! running /run/mysqld/mysqld.pid; then
    setsid nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadb.log 2>&1 &
  fi
  retry 60 mariadb-admin --socket=/run/mysqld/mysqld.sock ping
  mariadb --socket=/run/mysqld/mysqld.sock <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASSWORD}';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=${DB_PASSWORD}
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  running /run/slurm/slurmdbd.pid || slurmdbd
  retry 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
}

write_slurm_conf() { # writes /etc/slurm/slurm.conf.new
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(($(free -m | awk '/^Mem:/ {print $2}') - 1024))
  cat >/etc/slurm/slurm.conf.new <<CONF
ClusterName=${CLUSTER_NAME}
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
# look at pending jobs every second (default 60 s): a requeued job starts as soon as its begin time passes
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
  [[ $(id -u) == 0 ]] || { log "must run as root"; exit 1; }
  install_packages
  install -d -m 0755 /etc/slurm /run/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm
  start_munge
  log "munged up"
  start_accounting
  log "slurmdbd up"
  write_slurm_conf
  local reconfigure=0
  if cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
    rm /etc/slurm/slurm.conf.new
  else
    mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
    reconfigure=1
  fi
  sacctmgr -i -n -P show cluster format=cluster | grep -qx "$CLUSTER_NAME" || sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  if running /run/slurm/slurmctld.pid && ((reconfigure)); then
    # a second start with a changed slurm.conf: restart the controller (running jobs survive it; a plain
    # `scontrol reconfigure` would not apply AuthInfo) and let slurmd reread the file
    log "slurm.conf changed: restarting slurmctld"
    stop_daemon /run/slurm/slurmctld.pid
    running /run/slurm/slurmd.pid && kill -HUP "$(cat /run/slurm/slurmd.pid)"
  fi
  running /run/slurm/slurmctld.pid || slurmctld
  retry 30 scontrol ping
  # -N localhost: the node is called localhost whatever this machine's hostname is.
  running /run/slurm/slurmd.pid || slurmd -N localhost
  retry 60 bash -c 'sinfo -h -n localhost -o %t | grep -qE "^(idle|mix|alloc)"'
  retry 30 srun -N1 -n1 true
  log "cluster ${CLUSTER_NAME} up: partition debug, $(nproc) CPUs"
}

stop_daemon() { # stop_daemon PIDFILE: TERM, then KILL after 10 s
  local pid
  running "$1" || return 0
  pid=$(cat "$1")
  kill "$pid"
  retry 10 bash -c "! kill -0 $pid" || kill -9 "$pid"
  log "stopped $(basename "$1" .pid) (pid $pid)"
}

stop() {
  local pidfile
  for pidfile in "${PIDS[@]}"; do stop_daemon "$pidfile"; done
}

status() {
  local pidfile
  for pidfile in "${PIDS[@]}"; do
    if running "$pidfile"; then echo "$(basename "$pidfile" .pid): running (pid $(cat "$pidfile"))"; else echo "$(basename "$pidfile" .pid): stopped"; fi
  done
  command -v sinfo >/dev/null && sinfo || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
