#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian's slurm-wlm 22.05 + munge), as root.
# Installs nothing: needs `apt-get install slurm-wlm munge` done before.
# Idempotent: daemons already running are left alone; waits until the node is idle.
#
#   ATP_SLURM_DIR  state/log/pid folder (default /tmp/atp-slurm); the conf is written there.
#
# /etc/slurm/slurm.conf becomes a symlink to $ATP_SLURM_DIR/slurm.conf: SLURM_CONF alone is not
# enough, because snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable (SLURM_CONF
# too) from the environment of the srun it starts inside each job ("srun: fatal: Could not establish
# a configuration source").
set -euo pipefail

DIR=${ATP_SLURM_DIR:-/tmp/atp-slurm}
CONF=$DIR/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf

[ "$(id -u)" = 0 ] || { echo "start_slurm.sh: must run as root" >&2; exit 2; }
for exe in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sinfo; do
    [ -x "$exe" ] || { echo "start_slurm.sh: $exe missing (apt-get install slurm-wlm munge)" >&2; exit 2; }
done

mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/log

# --- munge ---------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null
fi

# --- slurm.conf ----------------------------------------------------------------------------
NODE=$(hostname -s)
CPUS=$(nproc)
# Leave a quarter of the memory to the submitting Snakemake and the system.
MEM=$(( $(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo) * 3 / 4 ))
cat > "$CONF.tmp" <<EOF
ClusterName=atp
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# No cgroups: plain process tracking, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# No accounting (no slurmdbd): sacct fails ("Slurm accounting storage is disabled"), so Snakemake's
# plugin must poll with squeue (--slurm-status-command squeue), which needs finished jobs kept in
# slurmctld's memory long enough: MinJobAge >= 120 s (the plugin's threshold, 3 x its 40 s first check).
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"
if [ -e "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF" || true)" != "$CONF" ]; then
    echo "start_slurm.sh: $ETC_CONF exists and is not ours; refusing to replace it" >&2
    exit 2
fi
ln -sfn "$CONF" "$ETC_CONF"

# --- daemons -------------------------------------------------------------------------------
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF"
alive "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"

for _ in $(seq 60); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated) echo "start_slurm.sh: node $NODE $state"; exit 0 ;;
        *drain*|*down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "start_slurm.sh: node $NODE not idle after 60 s (state '${state:-none}'); logs in $DIR/log" >&2
exit 1
