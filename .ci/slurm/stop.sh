#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by .ci/slurm/start.sh (as root).
#   .ci/slurm/stop.sh               stop slurmd, slurmctld and munged
#   .ci/slurm/stop.sh --keep-munge  leave munged running
#   .ci/slurm/stop.sh --purge       also delete slurmctld/slurmd state (queued jobs, node state)
# Processes are found through their pid files only; nothing else is killed.
set -uo pipefail
export PATH="/usr/sbin:/sbin:/usr/bin:/bin:${PATH:-}"

keep_munge=0; purge=0
for arg in "$@"; do
  case "$arg" in
    --keep-munge) keep_munge=1 ;;
    --purge) purge=1 ;;
    *) echo "usage: $0 [--keep-munge] [--purge]" >&2; exit 2 ;;
  esac
done

stop_pidfile() {  # stop_pidfile PIDFILE NAME
  local pidfile=$1 name=$2 pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile" 2>/dev/null)
  if [[ $pid =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
    echo "[slurm-ci] stopping $name (pid $pid)" >&2
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do
      [[ -e /proc/$pid ]] || break
      sleep 0.2
    done
    if [[ -e /proc/$pid ]]; then
      echo "[slurm-ci] $name did not exit after 10 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  rm -f "$pidfile"
}

stop_pidfile /run/slurmd.pid slurmd
stop_pidfile /run/slurmctld.pid slurmctld
(( keep_munge )) || stop_pidfile /run/munge/munged.pid munged
if (( purge )); then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
  echo "[slurm-ci] purged /var/spool/slurmctld and /var/spool/slurmd" >&2
fi
exit 0
