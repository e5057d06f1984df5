#!/usr/bin/env bash
# A private single-node SLURM cluster for kdgat's tests and CI (and for trying job scripts on a laptop).
#   slurm/cluster.sh up     start munge, MariaDB, slurmdbd, slurmctld and slurmd under $KD_GAT_SLURM_DIR;
#                           prints the SLURM_CONF to export
#   slurm/cluster.sh down   stop exactly the daemons 'up' started (by recorded PID; never by name)
#   slurm/cluster.sh status
# The node advertises two fake V100 GPUs (GRES), so '#SBATCH --gres=gpu:v100:1' scripts run unmodified, and
# impossible requests fail at submission (EnforcePartLimits) instead of pending forever.
# Accounting is real: slurmdbd on a private MariaDB, so `sacct` answers (state, exit code, elapsed, node, MaxRSS) as on
# a production cluster. The database listens on a Unix socket only, in a folder only root and mysql can enter; its
# grant tables are skipped (the folder's permissions are the access control), which lets it start in a fraction of a
# second from an empty data folder instead of the ~5 s of mariadb-install-db.
# Ports: KD_GAT_SLURMCTLD_PORT (6817), KD_GAT_SLURMD_PORT (6818), KD_GAT_SLURMDBD_PORT (6819), all on loopback.
set -euo pipefail
DIR=${KD_GAT_SLURM_DIR:-${TMPDIR:-/tmp}/kdgat-slurm}
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v slurmdbd >/dev/null \
    && command -v mariadbd >/dev/null && return 0
  [ "$(id -u)" = 0 ] || { echo "slurm packages missing and not root: install slurmctld slurmd slurm-client munge slurmdbd mariadb-server" >&2; exit 1; }
  # about 30 s once per machine; Debian's policy-rc.d (containers) keeps apt from starting the system's own MariaDB
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

write_config() {
  local node cpus mem
  node=$(hostname -s); cpus=$(nproc); mem=$(( $(free -m | awk '/^Mem:/{print $2}') * 3 / 4 ))
  mkdir -p "$DIR"/{etc,state,spool,log,run,gpu} "$DIR"/munge/{run,log,lib} "$DIR"/db/{data,run}
  for i in 0 1; do [ -e "$DIR/gpu/nvidia$i" ] || touch "$DIR/gpu/nvidia$i"; done
  cat > "$DIR/etc/gres.conf" <<CONF
AutoDetect=off
NodeName=$node Name=gpu Type=v100 File=$DIR/gpu/nvidia[0-1]
CONF
  cat > "$CONF" <<CONF
ClusterName=kdgat
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/run/munge.socket.2
SlurmctldPort=${KD_GAT_SLURMCTLD_PORT:-6817}
SlurmdPort=${KD_GAT_SLURMD_PORT:-6818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
DependencyParameters=kill_invalid_depend
GresTypes=gpu
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=${KD_GAT_SLURMDBD_PORT:-6819}
# with slurmdbd this names the munge socket that authenticates to it (the private one, not /run/munge's)
AccountingStoragePass=$DIR/munge/run/munge.socket.2
JobAcctGatherFrequency=task=5
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:v100:2 Feature=v100 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
CONF
  cat > "$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/run/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=${KD_GAT_SLURMDBD_PORT:-6819}
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$DIR/etc/slurmdbd.conf"  # slurmdbd refuses a readable one
}

start_munge() {
  [ -f "$DIR/munge/munge.key" ] || /usr/sbin/mungekey --create --keyfile="$DIR/munge/munge.key"
  chown -R munge:munge "$DIR/munge"; chmod 755 "$DIR/munge" "$DIR/munge/run"
  chmod 700 "$DIR/munge/log" "$DIR/munge/lib"; chmod 600 "$DIR/munge/munge.key"
  runuser -u munge -- /usr/sbin/munged --socket="$DIR/munge/run/munge.socket.2" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/run/munged.pid" --log-file="$DIR/munge/log/munged.log" --seed-file="$DIR/munge/lib/munged.seed"
}

start_accounting() {
  # MariaDB: socket only (no TCP), in a folder only mysql (and root) can enter; no grant tables (see the top).
  # Its data lives in a small tmpfs where mounting is allowed (thrown away by `down` anyway; creating slurmdbd's
  # tables on disk costs 1-3 s of fsyncs), else on disk.
  mountpoint -q "$DIR/db/data" || mount -t tmpfs -o size=256m,mode=700 tmpfs "$DIR/db/data" 2>/dev/null || true
  chown -R mysql:mysql "$DIR/db"; chmod 700 "$DIR/db/run"
  setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/db/data" --socket="$DIR/db/run/mysqld.sock" \
    --skip-networking --skip-grant-tables --pid-file="$DIR/db/run/mysqld.pid" --log-error="$DIR/db/mariadb.log" \
    --innodb-buffer-pool-size=32M --innodb-log-file-size=8M --innodb-flush-log-at-trx-commit=2 \
    --innodb-flush-method=nosync --innodb-doublewrite=0 \
    >/dev/null 2>&1 </dev/null & echo $! >"$DIR/run/mariadb.bgpid"
  for _ in $(seq 1 100); do [ -S "$DIR/db/run/mysqld.sock" ] && break; sleep 0.1; done
  [ -S "$DIR/db/run/mysqld.sock" ] || { echo "mariadb did not start; log $DIR/db/mariadb.log" >&2; tail -5 "$DIR/db/mariadb.log" >&2 || true; down >&2; exit 1; }
  # the MariaDB client library reads the socket's path from MYSQL_UNIX_PORT (slurmdbd.conf has no such setting);
  # slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF
  MYSQL_UNIX_PORT="$DIR/db/run/mysqld.sock" setsid slurmdbd -D -s \
    >>"$DIR/log/slurmdbd.out" 2>&1 </dev/null & echo $! >"$DIR/run/slurmdbd.bgpid"
}

wait_accounting() {  # until slurmdbd answers (slurmctld registers only once, at its start: it must come after)
  local deadline=$((SECONDS + 30))
  until timeout 5 sacctmgr -n list cluster >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || break
    sleep 0.1
  done
  timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 || { echo "slurmdbd did not start; logs in $DIR/log" >&2; tail -n 5 "$DIR"/log/slurmdbd.* >&2 || true; down >&2; exit 1; }
}

up() {
  if [ -f "$DIR/run/slurmctld.bgpid" ] && kill -0 "$(cat "$DIR/run/slurmctld.bgpid")" 2>/dev/null; then
    echo "export SLURM_CONF=$CONF"; return 0
  fi
  install_packages; write_config; start_munge
  start_accounting; wait_accounting
  # slurmctld must find its cluster in the database (else: "no TRES from it", fatal); it registers only at its start
  timeout 10 sacctmgr -i -Q add cluster kdgat >/dev/null 2>&1 || true
  # foreground mode (-D) so that $! is the daemon itself; setsid keeps it out of our process group
  setsid slurmctld -D -s >>"$DIR/log/slurmctld.out" 2>&1 </dev/null & echo $! >"$DIR/run/slurmctld.bgpid"
  setsid slurmd -D -s >>"$DIR/log/slurmd.out" 2>&1 </dev/null & echo $! >"$DIR/run/slurmd.bgpid"
  for _ in $(seq 1 150); do
    kill -0 "$(cat "$DIR/run/slurmctld.bgpid")" 2>/dev/null || break  # it died: say why at once
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then echo "export SLURM_CONF=$CONF"; return 0; fi
    sleep 0.2
  done
  echo "slurm did not become idle; logs in $DIR/log" >&2; tail -n 5 "$DIR"/log/*.log >&2 || true; down >&2; exit 1
}

down() {
  # only while slurmctld lives (without it scancel retries for minutes)
  if [ -f "$DIR/run/slurmctld.bgpid" ] && kill -0 "$(cat "$DIR/run/slurmctld.bgpid")" 2>/dev/null; then
    timeout 10 scancel --state=PENDING,RUNNING 2>/dev/null || true
  fi
  for f in "$DIR/run/slurmd.bgpid" "$DIR/run/slurmctld.bgpid" "$DIR/run/slurmdbd.bgpid" "$DIR/run/mariadb.bgpid" \
           "$DIR/munge/run/munged.pid"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  if mountpoint -q "$DIR/db/data" 2>/dev/null; then umount "$DIR/db/data" || true; fi
  echo "slurm down ($DIR)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo -N -l 2>/dev/null || { echo "not running ($CONF)"; exit 1; } ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
