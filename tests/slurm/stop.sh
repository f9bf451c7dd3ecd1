#!/usr/bin/env bash
# Stop the cluster started by start.sh DIR: cancel its jobs, then end slurmd, slurmctld and munged by pid file.
set -uo pipefail
D=$(realpath -m "${1:?usage: stop.sh DIR}")
export SLURM_CONF="$D/slurm.conf"
[[ -f $SLURM_CONF ]] && scancel --quiet --full --user "$(id -un)" 2>/dev/null
for pidfile in "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munge/munged.pid"; do
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
done
exit 0
