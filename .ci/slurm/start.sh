#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munged + slurmctld + slurmd) on this machine.
#
#   sudo .ci/slurm/start.sh          # installs slurm-wlm + munge from Debian if missing
#
# Meant for CI and for trying the SLURM profile on a laptop/VM; needs root and Debian/Ubuntu.
# Idempotent: if the cluster already runs with the same configuration it only checks that
# the node is up. If the configuration changed (other host, CPUs, memory) it restarts.
# No systemd needed: the daemons are started directly and daemonize themselves.
#
# Environment (all optional):
#   SLURM_CI_PARTITION   partition name                      (default: debug)
#   SLURM_CI_CPUS        CPUs offered to jobs                (default: nproc)
#   SLURM_CI_MEM_MB      memory offered to jobs in MB        (default: total - max(1 GiB, 10 %))
#   SLURM_CI_GPUS        fake GPUs (gres gpu) on the node    (default: 2; 0 = none)
#   SLURM_CI_TIMEOUT     seconds to wait for an idle node    (default: 60)
set -euo pipefail

export PATH="/usr/sbin:/sbin:/usr/bin:/bin:${PATH:-}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PARTITION="${SLURM_CI_PARTITION:-debug}"
TIMEOUT="${SLURM_CI_TIMEOUT:-60}"
GPUS="${SLURM_CI_GPUS:-2}"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
T0=$(date +%s.%N)

log() { echo "[slurm-ci] $*" >&2; }

show_logs() {
  local f
  for f in /var/log/munge/munged.log /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
    if [[ -f $f ]]; then
      echo "----- last lines of $f -----" >&2
      tail -n 25 "$f" >&2 || true
    fi
  done
  echo "----- sinfo -----" >&2
  sinfo -N -l 2>&1 | head -n 20 >&2 || true
}

die() {
  log "ERROR: $*"
  show_logs
  exit 1
}

# pid_alive PIDFILE NAME: true if PIDFILE names a live process called NAME
pid_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/comm && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

[[ $(id -u) -eq 0 ]] || { log "ERROR: must run as root (slurmctld/slurmd run as root here)"; exit 1; }

# ---------------------------------------------------------------- 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge from the Debian archive"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || die "apt-get install slurmctld slurmd slurm-client munge failed"
fi

# ---------------------------------------------------------------- 2. munge
getent passwd munge >/dev/null || die "user 'munge' missing (the munge package creates it)"
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  if ! mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if pid_alive /run/munge/munged.pid munged; then
    die "munged runs but credentials do not round-trip (munge -n | unmunge)"
  fi
  rm -f /run/munge/munged.pid
  log "starting munged"
  runuser -u munge -- munged || die "munged did not start"
  for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.2
  done
  munge -n | unmunge >/dev/null 2>&1 || die "munge -n | unmunge fails after starting munged"
fi

# ---------------------------------------------------------------- 3. slurm.conf
NODE="$(hostname -s)"
CPUS="${SLURM_CI_CPUS:-$(nproc)}"
if [[ -z ${SLURM_CI_MEM_MB:-} ]]; then
  total_mb=$(free -m | awk '/^Mem:/ {print $2}')
  headroom=$(( total_mb / 10 )); (( headroom < 1024 )) && headroom=1024
  MEM_MB=$(( total_mb - headroom )); (( MEM_MB < 512 )) && MEM_MB=512
else
  MEM_MB="$SLURM_CI_MEM_MB"
fi
[[ $NODE =~ ^[A-Za-z0-9._-]+$ ]] || die "unusable short hostname '$NODE'"

install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# Fake GPUs: character devices equal to /dev/null (major 1, minor 3). Where mknod is not
# allowed, /dev/null itself serves as a single fake GPU.
NODE_GRES=""
new_gres=""
if [[ $GPUS =~ ^[0-9]+$ ]] && (( GPUS > 0 )); then
  gpu_dir=/run/slurm-fake-gpu
  install -d -m 0755 "$gpu_dir"
  ok=1
  for (( i = 0; i < GPUS; i++ )); do
    [[ -c $gpu_dir/gpu$i ]] && continue
    rm -f "$gpu_dir/gpu$i"
    mknod -m 0666 "$gpu_dir/gpu$i" c 1 3 2>/dev/null || { ok=0; break; }
  done
  if (( ok )); then
    files="$gpu_dir/gpu[0-$(( GPUS - 1 ))]"; (( GPUS == 1 )) && files="$gpu_dir/gpu0"
  else
    log "mknod not permitted: using /dev/null as one fake GPU"
    GPUS=1; files=/dev/null
  fi
  NODE_GRES=" Gres=gpu:$GPUS"
  new_gres="# written by .ci/slurm/start.sh: fake GPUs (null devices) for CI
AutoDetect=off
NodeName=$NODE Name=gpu File=$files"
fi

new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
sed -e "s/@NODE@/$NODE/g" -e "s/@CPUS@/$CPUS/g" -e "s/@MEM_MB@/$MEM_MB/g" \
    -e "s/@PARTITION@/$PARTITION/g" -e "s/@NODE_GRES@/$NODE_GRES/g" \
    "$HERE/slurm.conf.in" > "$new_conf"
conf_changed=0
if ! cmp -s "$new_conf" "$CONF"; then
  conf_changed=1
  install -m 0644 "$new_conf" "$CONF"
  log "wrote $CONF: node $NODE, CPUs=$CPUS, RealMemory=${MEM_MB} MB, ${GPUS} fake GPUs, partition $PARTITION"
fi
if [[ -n $new_gres ]]; then
  if [[ "$(cat "$GRES_CONF" 2>/dev/null)" != "$new_gres" ]]; then
    printf '%s\n' "$new_gres" > "$GRES_CONF"; conf_changed=1
  fi
elif [[ -e $GRES_CONF ]]; then
  rm -f "$GRES_CONF"; conf_changed=1
fi
log "$(sinfo --version 2>/dev/null || echo 'slurm ?'), $(munged --version 2>&1 | head -n1)"

# ---------------------------------------------------------------- 4. daemons
ctld_up=0; slurmd_up=0
pid_alive /run/slurmctld.pid slurmctld && ctld_up=1
pid_alive /run/slurmd.pid slurmd && slurmd_up=1
if (( conf_changed && (ctld_up || slurmd_up) )); then
  log "configuration changed: restarting slurmctld and slurmd"
  "$HERE/stop.sh" --keep-munge
  ctld_up=0; slurmd_up=0
fi
if (( ! ctld_up )); then
  log "starting slurmctld"
  rm -f /run/slurmctld.pid
  slurmctld || die "slurmctld failed to start"
fi
if (( ! slurmd_up )); then
  log "starting slurmd"
  rm -f /run/slurmd.pid
  slurmd -N "$NODE" || die "slurmd failed to start"
fi

# ---------------------------------------------------------------- 5. wait for an idle node
deadline=$(( $(date +%s) + TIMEOUT ))
last_resume=0
state=""
while :; do
  state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mix|mixed|alloc|allocated|comp|completing) break ;;
    down|drain|drng|drained|fail|down~|drain~)
      # registered but marked down/drained (e.g. stale state from an earlier run)
      if (( $(date +%s) - last_resume >= 3 )); then
        reason=$(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null | head -n1 || true)
        log "node $NODE is '$state' (${reason:-no reason}); resuming it"
        scontrol update nodename="$NODE" state=resume 2>/dev/null || true
        last_resume=$(date +%s)
      fi ;;
  esac
  if (( $(date +%s) >= deadline )); then
    die "node $NODE not idle after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
  fi
  sleep 0.5
done

# ---------------------------------------------------------------- 6. smoke test: one real job
gpu_arg=(); [[ -n $NODE_GRES ]] && gpu_arg=(--gpus=1)
if ! out=$(timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 --mem=100 "${gpu_arg[@]}" \
             bash -c 'echo "job $SLURM_JOB_ID on $SLURMD_NODENAME gpus=${SLURM_GPUS_ON_NODE:-0}"' 2>&1); then
  die "smoke-test job (srun) failed: $out"
fi
elapsed=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
log "cluster up in ${elapsed}s: node $NODE ($state), partition $PARTITION; test $out"
sinfo -N -o '%N %P %t %c %m %G' >&2
