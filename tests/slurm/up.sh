#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_sweep_slurm.py and for trying sweeps.
#
#   tests/slurm/up.sh        install slurm-wlm + munge if missing, write the config, start
#                            munged, slurmctld and slurmd (each only if not already running),
#                            wait until the node is idle. Safe to rerun.
#   tests/slurm/up.sh down   stop the three daemons this script started.
#
# No systemd here, so the daemons are started directly. One node named after this host with
# NodeAddr 127.0.0.1 and 2 CPUs; no accounting daemon (the sweep reads run state from each
# workdir and from squeue/scontrol, never sacct); no cgroups (proctrack/linuxproc, task/none);
# config_overrides: the node has 2 CPUs whatever the machine has (the 2-task test needs 2).
# It refuses to overwrite a slurm.conf it did not write, so it never clobbers a real cluster's.
# On failure it prints the daemons' logs and exits 1.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by pretrax tests/slurm/up.sh"
LOG_DIR=/var/log/slurm
NODE=$(hostname -s)
CPUS=${SLURM_TEST_CPUS:-2}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

logs() {
  for f in /var/log/munge/munged.log $LOG_DIR/slurmctld.log $LOG_DIR/slurmd.log; do
    if [ -f "$f" ]; then echo "----- last lines of $f -----" >&2; $SUDO tail -n 40 "$f" >&2; fi
  done
}
die() { echo "tests/slurm/up.sh: $*" >&2; logs; exit 1; }

# A daemon is ours and running if its pid file names a live process with that name.
running() {  # running NAME PIDFILE
  local pid
  [ -f "$2" ] || return 1
  pid=$($SUDO cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

stop() {  # stop NAME PIDFILE
  if running "$1" "$2"; then
    local pid; pid=$($SUDO cat "$2")
    $SUDO kill "$pid"
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    echo "stopped $1 (pid $pid)"
  fi
}

if [ "${1:-up}" = down ]; then
  stop slurmd /run/slurmd.pid
  stop slurmctld /run/slurmctld.pid
  stop munged /run/munge/munged.pid
  exit 0
fi
[ "${1:-up}" = up ] || { echo "usage: $0 [up|down]" >&2; exit 2; }

# jax.distributed reaches process 0 by the host name SLURM gives it.
getent hosts "$NODE" >/dev/null || {
  echo "tests/slurm/up.sh: host name '$NODE' does not resolve; multi-task jobs need it" \
    "(add '127.0.1.1 $NODE' to /etc/hosts)" >&2; exit 1; }

# ----- packages -----
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
  echo "installing slurm-wlm and munge (apt)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# ----- config -----
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "tests/slurm/up.sh: $CONF exists and was not written by this script; not touching it." >&2
  echo "If this machine is a SLURM cluster already, run the tests against it as it is." >&2
  exit 1
fi
$SUDO mkdir -p $CONF_DIR $LOG_DIR /var/spool/slurmctld /var/spool/slurmd /run/munge
NEW_CONF=$(cat <<CONF
$MARK
ClusterName=pretrax
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)
CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  echo "$NEW_CONF" | $SUDO tee "$CONF" >/dev/null
  CHANGED=1
fi

# ----- munge -----
if [ ! -s /etc/munge/munge.key ]; then
  $SUDO mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  $SUDO chown munge:munge /etc/munge/munge.key
  $SUDO chmod 400 /etc/munge/munge.key
fi
$SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! running munged /run/munge/munged.pid; then
  $SUDO runuser -u munge -- /usr/sbin/munged || die "munged did not start"
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not answer"

# ----- slurmctld, slurmd (restarted when the config changed) -----
if [ "$CHANGED" = 1 ]; then
  stop slurmd /run/slurmd.pid
  stop slurmctld /run/slurmctld.pid
fi
if ! running slurmctld /run/slurmctld.pid; then
  $SUDO /usr/sbin/slurmctld || die "slurmctld did not start"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer"
if ! running slurmd /run/slurmd.pid; then
  $SUDO /usr/sbin/slurmd -N "$NODE" || die "slurmd did not start"
fi

# ----- wait for the node -----
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated) break ;;
    down*|drain*) $SUDO scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated) echo "SLURM up: node $NODE ($CPUS CPUs) $state" ;;
  *) die "node $NODE is '$state', not idle" ;;
esac
