#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on one host, from the local rabbitmq-server binary (no Docker).
#
#   deploy/local-cluster.sh start  [--dir DIR] [--base-port PORT] [--nodes N] [--management]
#   deploy/local-cluster.sh status [--dir DIR]
#   deploy/local-cluster.sh ctl I  [--dir DIR] -- ARGS...   # rabbitmqctl against node I (1..N)
#   deploy/local-cluster.sh stop   [--dir DIR] [--keep]
#
# Each node has its own name (rtc<PORT>-<I>@localhost), AMQP port (PORT+I), distribution port
# (PORT+100+I), management port (PORT+200+I, with --management), data and log directories under
# DIR, and the cluster's own Erlang cookie; all listen on 127.0.0.1 only (guest/guest works).
# Nothing of the machine's own RabbitMQ node is touched. `start` prints the AMQP URLs and writes
# them to DIR/cluster.env. Defaults: DIR=${TMPDIR:-/tmp}/rabbittask-local-cluster, PORT=26000, N=3.
# RABBITMQ_BIN_DIR overrides where rabbitmq-server and rabbitmqctl are looked up.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "local-cluster: $*" >&2; exit 1; }

command=${1:-}; [[ -n $command ]] || usage; shift
target=""
if [[ $command == ctl ]]; then target=${1:-}; [[ $target =~ ^[0-9]+$ ]] || usage; shift; fi
dir=${RT_CLUSTER_DIR:-${TMPDIR:-/tmp}/rabbittask-local-cluster}
base=${RT_CLUSTER_BASE_PORT:-26000}
count=3 management=0 keep=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --base-port) base=$2; shift 2 ;;
        --nodes) count=$2; shift 2 ;;
        --management) management=1; shift ;;
        --keep) keep=1; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) [[ $command == ctl ]] && break; die "unknown option $1" ;;
    esac
done

find_bin() {
    local candidates=("${RABBITMQ_BIN_DIR:-}" /usr/lib/rabbitmq/bin)
    local found; found=$(command -v rabbitmq-server || true)
    # Debian's /usr/sbin entries are wrappers that su to the rabbitmq user; use what they wrap.
    [[ -n $found ]] && candidates=("${RABBITMQ_BIN_DIR:-}" "$(dirname "$(readlink -f "$found")")" /usr/lib/rabbitmq/bin)
    for d in "${candidates[@]}"; do
        [[ -n $d && -x $d/rabbitmq-server && -x $d/rabbitmqctl ]] && { echo "$d"; return; }
    done
    die "rabbitmq-server not found: install it (apt-get install rabbitmq-server) or set RABBITMQ_BIN_DIR"
}

# The state a later stop/status/ctl needs is kept in DIR/cluster.conf.
if [[ $command != start ]]; then
    [[ -f $dir/cluster.conf ]] || die "no cluster in $dir (start one first, or pass --dir)"
    # shellcheck source=/dev/null
    source "$dir/cluster.conf"
fi
bin=$(find_bin)

node_name() { echo "rtc${base}-$1@localhost"; }

node_env() {  # run "$@" with the environment of node $1
    local i=$1; shift
    local n="$dir/n$i"
    env -u RABBITMQ_NODENAME -u RABBITMQ_CONFIG_FILE -u ERL_FLAGS -u ERL_AFLAGS -u ERL_ZFLAGS \
        HOME="$dir/home" ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_NODENAME="$(node_name "$i")" \
        RABBITMQ_NODE_PORT=$((base + i)) \
        RABBITMQ_DIST_PORT=$((base + 100 + i)) \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        RABBITMQ_CONF_ENV_FILE="$n/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$n/rabbitmq.conf" \
        RABBITMQ_CONFIG_FILES="$n/conf.d" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$n/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$n/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$n/mnesia" \
        RABBITMQ_LOG_BASE="$n/log" \
        RABBITMQ_CTL_DIST_PORT_MIN=0 RABBITMQ_CTL_DIST_PORT_MAX=0 \
        "$@"
}

ctl() { local i=$1; shift; node_env "$i" "$bin/rabbitmqctl" -n "$(node_name "$i")" "$@"; }

wait_port() {  # wait until 127.0.0.1:$1 accepts connections, or fail after $2 seconds
    local deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

prepare() {
    mkdir -p "$dir/home"
    [[ -f $dir/home/.erlang.cookie ]] || {
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/home/.erlang.cookie"
        chmod 400 "$dir/home/.erlang.cookie"  # Erlang refuses a cookie others can read
    }
    for i in $(seq 1 "$count"); do
        local n="$dir/n$i"
        mkdir -p "$n/mnesia" "$n/log" "$n/conf.d"
        : > "$n/rabbitmq-env.conf"
        {
            echo "listeners.tcp.1 = 127.0.0.1:$((base + i))"
            echo "loopback_users = none"
            if ((management)); then
                echo "management.tcp.port = $((base + 200 + i))"
                echo "management.tcp.ip = 127.0.0.1"
            fi
        } > "$n/rabbitmq.conf"
        cp "$(dirname "${BASH_SOURCE[0]}")/compose/advanced.config" "$n/advanced.config"
        if ((management)); then echo "[rabbitmq_management]." > "$n/enabled_plugins"; else echo "[]." > "$n/enabled_plugins"; fi
    done
    printf 'base=%q\ncount=%q\nmanagement=%q\n' "$base" "$count" "$management" > "$dir/cluster.conf"
}

start() {
    [[ -f $dir/cluster.conf ]] && die "$dir already holds a cluster: stop it first (or use another --dir)"
    for i in $(seq 1 "$count"); do
        for port in $((base + i)) $((base + 100 + i)); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is in use: pick another --base-port"
        done
    done
    prepare
    for i in $(seq 1 "$count"); do
        # setsid: each node leads its own process group, so stop can end beam and its helpers at once;
        # the group's id is written from inside, as the server script replaces that shell.
        # shellcheck disable=SC2016 # $$ is for the inner shell
        node_env "$i" setsid /bin/sh -c 'echo $$ > "$1"; exec "$2"' sh "$dir/n$i/pid" "$bin/rabbitmq-server" \
            > "$dir/n$i/log/startup.log" 2>&1 < /dev/null &
    done
    for i in $(seq 1 "$count"); do
        for _ in $(seq 1 50); do [[ -s $dir/n$i/pid ]] && break; sleep 0.1; done
        wait_port $((base + i)) 90 || { tail -20 "$dir/n$i/log/startup.log" >&2; die "node $i did not start"; }
        ctl "$i" await_startup --timeout 90 > /dev/null
    done
    for i in $(seq 2 "$count"); do
        ctl "$i" stop_app > /dev/null
        ctl "$i" join_cluster "$(node_name 1)" > /dev/null
        ctl "$i" start_app > /dev/null
    done
    ctl 1 await_online_nodes "$count" --timeout 90 > /dev/null
    : > "$dir/cluster.env"
    for i in $(seq 1 "$count"); do
        echo "RABBITTASK_BROKER_URL_$i=amqp://guest:guest@127.0.0.1:$((base + i))/" >> "$dir/cluster.env"
    done
    echo "RABBITTASK_BROKER_URL=amqp://guest:guest@127.0.0.1:$((base + 1))/" >> "$dir/cluster.env"
    ((management)) && echo "RABBITTASK_MANAGEMENT_URL=http://guest:guest@127.0.0.1:$((base + 201))/" >> "$dir/cluster.env"
    echo "cluster of $count nodes is up ($dir):"
    cat "$dir/cluster.env"
}

stop() {
    for i in $(seq 1 "$count"); do
        [[ -f $dir/n$i/pid ]] || continue
        local pid; pid=$(cat "$dir/n$i/pid")
        kill -TERM -- "-$pid" 2>/dev/null || true  # the server script turns TERM into a clean stop
    done
    for i in $(seq 1 "$count"); do
        [[ -f $dir/n$i/pid ]] || continue
        local pid; pid=$(cat "$dir/n$i/pid")
        for _ in $(seq 1 150); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$dir/n$i/pid"
    done
    if ((keep)); then echo "cluster stopped; data kept in $dir"; else rm -rf "$dir"; echo "cluster stopped and removed"; fi
}

case $command in
    start) start ;;
    stop) stop ;;
    status) ctl 1 cluster_status ;;
    ctl) ctl "$target" "$@" ;;
    *) usage ;;
esac
