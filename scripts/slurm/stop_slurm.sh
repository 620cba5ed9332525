#!/usr/bin/env bash
# Stop what start_slurm.sh started: cancel jobs, stop slurmd, slurmctld and munged, remove the
# /etc/slurm/slurm.conf symlink if it is ours. Idempotent.
set -uo pipefail

DIR=${ATP_SLURM_DIR:-/tmp/atp-slurm}
CONF=$DIR/slurm.conf

stop_pidfile() {  # pidfile name
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "stop_slurm.sh: $2 ($pid) still running, KILL" >&2; kill -KILL "$pid"; }
    rm -f "$1"
}

[ -e "$CONF" ] && scancel --full --user=root 2>/dev/null || true
stop_pidfile "$DIR/slurmd.pid" slurmd
stop_pidfile "$DIR/slurmctld.pid" slurmctld
# munged writes its pid here (Debian default).
stop_pidfile /run/munge/munged.pid munged
[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)" = "$CONF" ] && rm -f /etc/slurm/slurm.conf
exit 0
