#!/usr/bin/env bash
# Install a single-node SLURM (slurmctld + slurmd) and MUNGE if they are missing (Debian/Ubuntu, as root).
# Exit 0: installed (or already present); exit 3: cannot be installed here (not root, no apt-get, no network).
set -uo pipefail
need=(slurmctld slurmd sbatch squeue sinfo scontrol munged)
missing() { for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || return 0; done; return 1; }
missing || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install SLURM: need root and apt-get (uid=$(id -u))" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; } >&2 || {
    echo "apt-get install slurm-wlm munge failed" >&2
    exit 3
}
missing && { echo "SLURM commands still missing after apt-get install" >&2; exit 3; }
exit 0
