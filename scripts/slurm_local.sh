#!/usr/bin/env bash
# A SLURM cluster on this machine, to try `hydra/launcher=slurm` without a real cluster (and for the
# tests marked `slurm`): one node by default, or N nodes in Linux network namespaces. Debian / Ubuntu, as root:
#
#   scripts/slurm_local.sh install   # apt-get install slurm-wlm munge (skipped when already installed)
#   scripts/slurm_local.sh start     # install if needed, write slurm.conf, start munged, slurmctld, slurmd
#   eval "$(scripts/slurm_local.sh env)"   # export SLURM_CONF for sbatch / squeue / scontrol in this shell
#   scripts/slurm_local.sh status    # daemons, nodes and queue
#   scripts/slurm_local.sh stop      # stop slurmd, slurmctld and the munged this script started
#
# `--nodes N` (N >= 2; or FIVEFOLD_SLURM_NODES) after any command selects an N-node cluster, separate from
# the one-node one (own directory, controller port and cluster name: both can run at once). Nodes ffnode1..N
# are one network namespace each, holding one end of a veth pair whose other end is on the bridge
# `ffslurm0` made here: 10.217.0.1 is the controller, 10.217.0.1<i> node i (FIVEFOLD_SLURM_SUBNET changes
# the /24); nothing routes off the machine. Each node's slurmd runs in its namespace under its own host name
# (a UTS namespace), with its own spool dir, pid file and log; /etc/hosts gets a marked line per node.
# One slurmctld (on the bridge address), one munged and munge key serve all nodes. `stop --nodes N` stops
# the daemons and whatever still runs in the node namespaces (by pid), then deletes the namespaces, links
# and /etc/hosts lines it made; they are listed in $DIR/made as they are made, so a `stop` or `start`
# after a crash finishes or reuses what the crashed run left.
#
# Every command is idempotent. State, spool, pid files and logs live under $FIVEFOLD_SLURM_DIR (default
# ${TMPDIR:-/tmp}/fivefold-slurm, or ${TMPDIR:-/tmp}/fivefold-slurm-<N>nodes); slurm.conf is generated there
# from `nproc` and the memory (FIVEFOLD_SLURM_CPUS / FIVEFOLD_SLURM_MEM_MB override them per node, e.g. to
# let more 1-CPU jobs run at once than there are cores). /etc/slurm/slurm.conf is pointed at the one-node
# cluster's file only when no other file is there.
# No accounting database: submitit's status polls fall back to `squeue` (experiments/cluster/slurm_launcher.py),
# and finished jobs stay visible to squeue / scontrol for MinJobAge (1 h).
set -euo pipefail

COMMAND="${1:-}"
[[ $# -gt 0 ]] && shift
NODES="${FIVEFOLD_SLURM_NODES:-1}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) NODES="${2:-}"; shift; [[ $# -gt 0 ]] && shift ;;
        --nodes=*) NODES="${1#--nodes=}"; shift ;;
        *) echo "slurm_local: unknown argument '$1' (usage: $0 COMMAND [--nodes N])" >&2; exit 64 ;;
    esac
done
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || { echo "slurm_local: --nodes takes 1 to 99, not '$NODES'" >&2; exit 64; }

SUBNET="${FIVEFOLD_SLURM_SUBNET:-10.217.0}"
BRIDGE="ffslurm0"
CTLD_ADDR="$SUBNET.1"
if [[ $NODES -eq 1 ]]; then
    DIR="${FIVEFOLD_SLURM_DIR:-${TMPDIR:-/tmp}/fivefold-slurm}"
    CTLD_PORT="${FIVEFOLD_SLURM_CTLD_PORT:-6817}"
    NODE_NAMES=("$(hostname -s)")
else
    DIR="${FIVEFOLD_SLURM_DIR:-${TMPDIR:-/tmp}/fivefold-slurm-${NODES}nodes}"
    CTLD_PORT="${FIVEFOLD_SLURM_CTLD_PORT:-$((6817 + 10 * (NODES - 1)))}"
    NODE_NAMES=()
    for i in $(seq "$NODES"); do NODE_NAMES+=("ffnode$i"); done
fi
CONF="$DIR/slurm.conf"
MADE="$DIR/made"
PARTITION="${FIVEFOLD_SLURM_PARTITION:-debug}"
SLURMD_PORT="${FIVEFOLD_SLURM_SLURMD_PORT:-6818}"
HOSTS_MARK="# fivefold-slurm $DIR"
export SLURM_CONF="$CONF"

say() { echo "slurm_local: $*" >&2; }
die() { say "error: $*"; exit 1; }

# One start or stop at a time on this machine (the clusters share munged; test workers may start at once).
# The daemons are started without fd 9, so the lock ends with this script.
serialise() {
    command -v flock >/dev/null || return 0
    exec 9>"${TMPDIR:-/tmp}/fivefold-slurm.lock"
    flock -w 900 9 || die "another slurm_local.sh start/stop held ${TMPDIR:-/tmp}/fivefold-slurm.lock for 15 minutes"
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts munged, slurmctld, slurmd as root)"
}

installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; }

cmd_install() {
    if installed; then return 0; fi
    need_root
    command -v apt-get >/dev/null || die "no apt-get: install slurm (slurmctld, slurmd, client commands) and munge by hand"
    say "installing slurm-wlm and munge with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >"$DIR/apt.log" 2>&1 \
        || { tail -5 "$DIR/apt.log" >&2; die "apt-get install slurm-wlm munge failed (log: $DIR/apt.log; run apt-get update first?)"; }
    installed || die "slurm-wlm installed but slurmctld / slurmd / sbatch / munged are not on PATH"
}

mem_mb() {
    local total
    total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    echo $(( total * 9 / 10 / NODES ))  # leave a tenth to the system, the rest shared by the nodes
}

node_addr() { echo "$SUBNET.$((10 + $1))"; }

slurmd_pidfile() { if [[ $NODES -eq 1 ]]; then echo "$DIR/slurmd.pid"; else echo "$DIR/slurmd-$1.pid"; fi; }

slurmd_log() { if [[ $NODES -eq 1 ]]; then echo "$DIR/log/slurmd.log"; else echo "$DIR/log/slurmd-$1.log"; fi; }

# The lines that differ between one node on the loopback and N nodes in namespaces.
conf_nodes() {
    local cpus="$1" mem="$2" i
    if [[ $NODES -eq 1 ]]; then
        echo "ClusterName=fivefold"
        echo "SlurmctldHost=${NODE_NAMES[0]}(127.0.0.1)"
        echo "SlurmdPidFile=$DIR/slurmd.pid"
        echo "SlurmdSpoolDir=$DIR/spool"
        echo "SlurmdLogFile=$DIR/log/slurmd.log"
        echo "SlurmdTimeout=60"
        echo "NodeName=${NODE_NAMES[0]} NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        echo "PartitionName=$PARTITION Nodes=${NODE_NAMES[0]} Default=YES MaxTime=INFINITE State=UP"
        return
    fi
    echo "ClusterName=fivefold${NODES}n"
    echo "SlurmctldHost=$(hostname -s)($CTLD_ADDR)"
    echo "SlurmdPidFile=$DIR/slurmd-%n.pid"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
    echo "# A node whose slurmd stops answering is set DOWN after this many seconds and its jobs are requeued."
    echo "SlurmdTimeout=20"
    for i in $(seq "$NODES"); do
        echo "NodeName=${NODE_NAMES[$((i - 1))]} NodeAddr=$(node_addr "$i") CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    echo "# LLN: each job goes to the least loaded node, so a sweep spreads over the nodes."
    echo "PartitionName=$PARTITION Nodes=ffnode[1-$NODES] Default=YES MaxTime=INFINITE State=UP LLN=YES"
}

write_conf() {
    local cpus="${FIVEFOLD_SLURM_CPUS:-$(nproc)}" mem="${FIVEFOLD_SLURM_MEM_MB:-$(mem_mb)}" name
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    if [[ $NODES -gt 1 ]]; then for name in "${NODE_NAMES[@]}"; do mkdir -p "$DIR/spool/$name"; done; fi
    {
        echo "# Generated by scripts/slurm_local.sh: $NODES node(s) (${NODE_NAMES[*]}), $cpus CPUs and $mem MB each, state and logs in $DIR."
        conf_nodes "$cpus" "$mem"
        cat <<EOF
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
# No cgroups needed (containers, workstations): processes tracked by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( mem / cpus ))
# The declared CPUs win over what slurmd detects (FIVEFOLD_SLURM_CPUS may differ from the hardware).
SlurmdParameters=config_overrides
ReturnToService=2
# Refuse at submission what the nodes can never run (instead of a job pending forever).
EnforcePartLimits=ALL
# Finished jobs stay visible to squeue / scontrol (the status source without accounting) for an hour.
MinJobAge=3600
KillWait=30
SlurmctldTimeout=30
InactiveLimit=0
Waittime=0
SchedulerParameters=sched_interval=2
EOF
    } >"$CONF.tmp"
    if [[ -f "$CONF" ]] && cmp -s "$CONF" "$CONF.tmp"; then rm -f "$CONF.tmp"; else mv "$CONF.tmp" "$CONF"; CONF_CHANGED=1; fi
    # Plain `sbatch` in a new shell finds the one-node cluster too, unless an admin's own slurm.conf is there.
    [[ $NODES -eq 1 ]] || return 0
    if [[ ! -e /etc/slurm/slurm.conf || "$(readlink /etc/slurm/slurm.conf || true)" == "$CONF" ]]; then
        mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf
    fi
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

munge_socket() { echo /run/munge/munge.socket.2; }

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 0755 /run/munge
    [[ -s /etc/munge/munge.key ]] || { (command -v mungekey >/dev/null && mungekey --create) || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; \
        chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key; }
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid 9>&-
    else
        /usr/sbin/munged --force --pid-file=/run/munge/munged.pid 9>&-
    fi
    echo started >"$DIR/munged.ours"
    for _ in $(seq 30); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "munged does not answer on $(munge_socket) (log: /var/log/munge/munged.log)"
}

# --- N nodes: namespaces, links, host names (each recorded in $MADE before it is made) ---

made() { grep -qxF "$*" "$MADE" 2>/dev/null || echo "$*" >>"$MADE"; }

netns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$1"; }

hosts_lines() {
    local i
    for i in $(seq "$NODES"); do echo "$(node_addr "$i") ${NODE_NAMES[$((i - 1))]} $HOSTS_MARK"; done
}

# /etc/hosts is rewritten in place (it may be a bind mount that a rename would not reach).
drop_hosts_lines() {
    grep -qF "$HOSTS_MARK" /etc/hosts 2>/dev/null || return 0
    local kept; kept="$(grep -vF "$HOSTS_MARK" /etc/hosts || true)"
    printf '%s\n' "$kept" >/etc/hosts
}

make_network() {
    command -v ip >/dev/null || die "no \`ip\` command (iproute2): needed for the node namespaces"
    command -v unshare >/dev/null && command -v nsenter >/dev/null \
        || die "no \`unshare\` / \`nsenter\` (util-linux): needed to run each slurmd in its node's namespaces"
    made "link $BRIDGE"
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge \
        || die "cannot create the bridge $BRIDGE (network namespaces need CAP_NET_ADMIN)"
    ip -4 addr show dev "$BRIDGE" | grep -qF "inet $CTLD_ADDR/24" || ip addr add "$CTLD_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local i name veth addr
    for i in $(seq "$NODES"); do
        name="${NODE_NAMES[$((i - 1))]}" veth="${BRIDGE}v$i" addr="$(node_addr "$i")"
        made "netns $name"
        netns_exists "$name" || ip netns add "$name" || die "cannot create the network namespace $name"
        made "link $veth"
        if ! ip netns exec "$name" ip link show eth0 >/dev/null 2>&1; then
            ip link del "$veth" 2>/dev/null || true  # a half-made pair from a crashed start
            ip link add "$veth" type veth peer name eth0 netns "$name"
        fi
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        ip netns exec "$name" ip link set lo up
        ip netns exec "$name" ip -4 addr show dev eth0 | grep -qF "inet $addr/24" || ip netns exec "$name" ip addr add "$addr/24" dev eth0
        ip netns exec "$name" ip link set eth0 up
    done
    made "hosts"
    drop_hosts_lines
    hosts_lines >>/etc/hosts
}

# Pids of the processes in a node's namespace (its slurmd, slurmstepd and job tasks).
netns_pids() { netns_exists "$1" && ip netns pids "$1" 2>/dev/null || true; }

kill_netns_processes() {
    local name="$1" pids
    pids="$(netns_pids "$name")"
    [[ -n "$pids" ]] || return 0
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for _ in $(seq 30); do [[ -z "$(netns_pids "$name")" ]] && return 0; sleep 1; done
    pids="$(netns_pids "$name")"
    # shellcheck disable=SC2086
    [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
}

remove_network() {
    [[ -f "$MADE" ]] || return 0
    local kind name
    # Reverse order: the hosts lines, the namespaces' processes and links, the namespaces, the bridge.
    tac "$MADE" | while read -r kind name; do
        case "$kind" in
            hosts) drop_hosts_lines ;;
            netns) kill_netns_processes "$name"; if netns_exists "$name"; then ip netns del "$name" || say "cannot delete namespace $name"; fi ;;
            link) if ip link show "$name" >/dev/null 2>&1; then ip link del "$name" || say "cannot delete link $name"; fi ;;
        esac
    done
    rm -f "$MADE"
}

# --- daemons ---

node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -1; }

start_slurmd() {
    local i="$1" name="${NODE_NAMES[$(($1 - 1))]}"
    alive "$(slurmd_pidfile "$name")" && return 0
    if [[ $NODES -eq 1 ]]; then
        /usr/sbin/slurmd -f "$CONF" -N "$name" 9>&- || die "slurmd did not start (log: $(slurmd_log "$name"))"
    else
        # nsenter, not `ip netns exec`: that remounts /sys, and slurmd needs the host's /sys/fs/cgroup.
        nsenter --net="/run/netns/$name" unshare --uts sh -c 'hostname "$1" && exec /usr/sbin/slurmd -f "$2" -N "$1"' sh "$name" "$CONF" 9>&- \
            || die "slurmd of $name did not start (log: $(slurmd_log "$name"))"
    fi
}

wait_node() {
    local name="$1" state=""
    for _ in $(seq 90); do
        state="$(node_state "$name")"
        case "$state" in
            idle*|mixed*|allocated*|completing*) return 0 ;;
            down*|drain*) scontrol update NodeName="$name" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "node $name is '${state:-unknown}' (logs: $(slurmd_log "$name"), $DIR/log/slurmctld.log)"
}

stop_pidfile() {
    local pidfile="$1" name="$2"
    alive "$pidfile" || return 0
    local pid; pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }; sleep 1; done
    say "$name (pid $pid) did not stop within 30 s"
    return 1
}

stop_slurmds() {
    local name
    for name in "${NODE_NAMES[@]}"; do stop_pidfile "$(slurmd_pidfile "$name")" "slurmd of $name"; done
}

cmd_start() {
    need_root
    serialise
    mkdir -p "$DIR"
    cmd_install
    CONF_CHANGED=0
    write_conf
    start_munge
    [[ $NODES -eq 1 ]] || make_network
    local name any_alive=0
    for name in "${NODE_NAMES[@]}"; do alive "$(slurmd_pidfile "$name")" && any_alive=1; done
    if [[ $CONF_CHANGED -eq 1 ]] && { [[ $any_alive -eq 1 ]] || alive "$DIR/slurmctld.pid"; }; then
        say "slurm.conf changed: restarting slurmctld and slurmd"
        stop_slurmds
        stop_pidfile "$DIR/slurmctld.pid" slurmctld
    fi
    # After a crash the old controller's port may stay taken for a moment: a slurmctld that exits is retried.
    for _ in $(seq 60); do
        scontrol ping 2>/dev/null | grep -q "UP" && break
        if ! alive "$DIR/slurmctld.pid"; then
            /usr/sbin/slurmctld -f "$CONF" 9>&- || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
        fi
        sleep 1
    done
    scontrol ping 2>/dev/null | grep -q "UP" || die "slurmctld does not answer (log: $DIR/log/slurmctld.log)"
    local i
    for i in $(seq "$NODES"); do start_slurmd "$i"; done
    for name in "${NODE_NAMES[@]}"; do wait_node "$name"; done
    say "up: partition $PARTITION on ${NODE_NAMES[*]} ($(sinfo -h -N -o '%N: %c CPUs, %m MB' | sort | paste -sd ';' -)); export SLURM_CONF=$CONF"
}

# munged is shared by every cluster of this script: the last one to stop it stops it.
other_cluster_alive() {
    local pidfile
    for pidfile in "${TMPDIR:-/tmp}"/fivefold-slurm*/slurmctld.pid; do
        [[ "$pidfile" == "$DIR/slurmctld.pid" ]] && continue
        if alive "$pidfile"; then echo "$(dirname "$pidfile")"; return 0; fi
    done
    return 1
}

cmd_stop() {
    need_root
    serialise
    stop_slurmds
    stop_pidfile "$DIR/slurmctld.pid" slurmctld
    [[ $NODES -eq 1 ]] || remove_network
    if [[ -f "$DIR/munged.ours" ]]; then
        local other
        if other="$(other_cluster_alive)"; then
            mv "$DIR/munged.ours" "$other/munged.ours"  # still in use there; that cluster's stop stops it
        else
            stop_pidfile /run/munge/munged.pid munged && rm -f "$DIR/munged.ours"
        fi
    fi
    say "stopped (state and logs kept in $DIR)"
}

cmd_status() {
    local rc=0 name
    if alive "$DIR/slurmctld.pid"; then echo "slurmctld: running (pid $(cat "$DIR/slurmctld.pid"))"; else echo "slurmctld: stopped"; rc=1; fi
    for name in "${NODE_NAMES[@]}"; do
        local label="slurmd"; [[ $NODES -eq 1 ]] || label="slurmd $name"
        if alive "$(slurmd_pidfile "$name")"; then echo "$label: running (pid $(cat "$(slurmd_pidfile "$name")"))"; else echo "$label: stopped"; rc=1; fi
    done
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munged: running"; else echo "munged: stopped"; rc=1; fi
    if [[ $rc -eq 0 ]]; then
        sinfo -N -o "%N %P %T %c %m" || rc=1
        squeue -o "%.10i %.12P %.20j %.10T %.10M %R" || rc=1
    fi
    echo "SLURM_CONF=$CONF"
    return $rc
}

case "$COMMAND" in
    install) mkdir -p "$DIR"; cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) (cmd_stop); cmd_start ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 install|start|stop|restart|status|env [--nodes N]   (state in $DIR)" >&2; exit 64 ;;
esac
