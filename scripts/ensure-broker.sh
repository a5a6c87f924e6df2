#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers at RABBITTASK_BROKER_URL (used by `make demo` and `make test`).
#
# Exit 0 at once if something accepts TCP connections there. Otherwise, for a local broker on
# the standard port: install rabbitmq-server (root only, Debian/Ubuntu), start it and wait up to
# RABBITTASK_BROKER_WAIT_S (60) seconds. Anything else prints what to do and exits 1.
# ENSURE_BROKER_DRY_RUN=1 prints the install/start commands instead of running them.
# The URL's password is never printed.
set -euo pipefail

url="${RABBITTASK_BROKER_URL:-amqp://guest:guest@localhost:5672/}"
wait_s="${RABBITTASK_BROKER_WAIT_S:-60}"
dry_run="${ENSURE_BROKER_DRY_RUN:-}"

say() { printf 'ensure-broker: %s\n' "$*" >&2; }

# --- parse scheme://[user[:password]@]host[:port][/vhost] --------------------------------------
scheme="${url%%://*}"
[[ "$scheme" == "$url" ]] && scheme="amqp"
rest="${url#*://}"
authority="${rest%%/*}"
path=""
[[ "$rest" == */* ]] && path="/${rest#*/}"
userinfo=""
if [[ "$authority" == *@* ]]; then
    userinfo="${authority%@*}"
    authority="${authority##*@}"
fi
default_port=5672
[[ "$scheme" == "amqps" ]] && default_port=5671
if [[ "$authority" == \[* ]]; then # [ipv6]:port
    host="${authority#[}"
    host="${host%%]*}"
    port="${authority##*]}"
    port="${port#:}"
else
    host="${authority%%:*}"
    port=""
    [[ "$authority" == *:* ]] && port="${authority##*:}"
fi
host="${host:-localhost}"
port="${port:-$default_port}"
if ! [[ "$port" =~ ^[0-9]+$ ]]; then
    say "cannot read a port from RABBITTASK_BROKER_URL (got '$port')"
    exit 1
fi
# What may be shown: the URL without its password.
shown="$scheme://"
[[ -n "$userinfo" ]] && shown+="${userinfo%%:*}:***@"
shown+="$authority$path"

# An AMQP answer, not just an open port: some networks accept every TCP connection (proxies).
# The broker replies to the protocol header with connection.start (frame type 01), or with its
# own header ("A") if it speaks another version; for amqps a TCP connection has to do.
# shellcheck disable=SC2016 # $1 and $2 expand in the inner bash, on purpose
answers() {
    local reply
    if [[ "$scheme" == "amqps" ]]; then
        timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
        return
    fi
    reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "AMQP\0\0\011\001" >&3 && head -c 1 <&3 | od -An -tx1' \
        _ "$host" "$port" 2>/dev/null) || return 1
    reply="${reply//[[:space:]]/}"
    [[ "$reply" == 01 || "$reply" == 41 ]]
}

# Partitioned queues (partition_by / fair_by) need the consistent-hash exchange: it ships with
# RabbitMQ but is off by default. Enabling it on a local node is idempotent and needs no restart;
# where that cannot be done here, say what to run (the worker names it too when it is missing).
plugins="rabbitmq_consistent_hash_exchange"
is_local() {
    case "$host" in
        localhost | 127.* | ::1 | 0.0.0.0 | "$(hostname)" | "$(hostname -f 2>/dev/null || hostname)") return 0 ;;
        *) return 1 ;;
    esac
}
enable_plugins() {
    local out
    if ! is_local || ! command -v rabbitmq-plugins >/dev/null 2>&1; then
        return 0 # a remote or containerised broker: its owner enables plugins
    fi
    if [[ -n "$dry_run" ]]; then
        say "would run: rabbitmq-plugins enable $plugins"
        return 0
    fi
    if ! out=$(timeout 60 rabbitmq-plugins enable "$plugins" 2>&1); then
        say "could not enable $plugins here (${out##*$'\n'}); partitioned queues need it:"
        say "  sudo rabbitmq-plugins enable $plugins"
    fi
}

if answers; then
    enable_plugins
    exit 0
fi
say "nothing answers at $shown"

alternatives() {
    say "  - Debian/Ubuntu: sudo apt-get install -y rabbitmq-server && sudo service rabbitmq-server start"
    say "  - Docker:        docker run -d --name rabbitmq -p 5672:5672 rabbitmq:3"
    say "  - elsewhere:     export RABBITTASK_BROKER_URL=amqp://USER:PASSWORD@HOST:5672/"
}

case "$host" in
    localhost | 127.* | ::1 | 0.0.0.0 | "$(hostname)" | "$(hostname -f 2>/dev/null || hostname)") ;;
    *)
        say "$host is not this machine, so this script cannot start it: start that broker, or use one of"
        alternatives
        exit 1
        ;;
esac
if [[ "$port" != 5672 ]]; then
    # A packaged broker listens on 5672; starting it would not make $port answer.
    say "only a broker on the standard port 5672 can be started here; start one on $port yourself, or use one of"
    alternatives
    exit 1
fi
# A node already running (pid file or beam process) whose port does not answer must not get a
# second node started on top of its data directory: that is a broken broker, not a missing one.
if pid=$(pgrep -u rabbitmq -x beam.smp 2>/dev/null | head -n1) && [[ -n "$pid" ]]; then
    say "a RabbitMQ node is running (pid $pid) but does not listen on $host:$port."
    say "check its listeners and logs (rabbitmqctl status; /var/log/rabbitmq/) instead of starting another."
    exit 1
fi

run() {
    if [[ -n "$dry_run" ]]; then
        say "would run: $*"
    else
        "$@"
    fi
}

is_root=""
[[ "$(id -u)" == 0 ]] && is_root=1

if ! command -v rabbitmq-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/rabbitmq-server ]]; then
    if [[ -z "$is_root" ]] || ! command -v apt-get >/dev/null 2>&1; then
        say "rabbitmq-server is not installed and this script can install it only as root on Debian/Ubuntu."
        say "get a broker one of these ways, then run this again:"
        alternatives
        exit 1
    fi
    say "installing rabbitmq-server with apt-get"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
    # The package may have started the service itself.
    if [[ -z "$dry_run" ]] && answers; then
        say "rabbitmq-server installed and answering at $shown"
        enable_plugins
        exit 0
    fi
fi

if [[ -z "$is_root" ]]; then
    say "rabbitmq-server is installed but not running, and only root (or the rabbitmq user) may start it:"
    say "  - sudo service rabbitmq-server start      (or: sudo systemctl start rabbitmq-server)"
    alternatives
    exit 1
fi

say "starting rabbitmq-server"
# Without systemd (whose unit sets LimitNOFILE) the node inherits this shell's open-file limit, often
# 1024: a node that runs hundreds of quorum queues then runs out of file handles and stops answering.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ -d /run/systemd/system ]]; then
    run systemctl start rabbitmq-server
elif [[ -x /etc/init.d/rabbitmq-server ]]; then
    run /etc/init.d/rabbitmq-server start # no systemd (containers): Debian's init script
else
    run rabbitmq-server -detached
fi
[[ -n "$dry_run" ]] && exit 0

deadline=$((SECONDS + wait_s))
until answers; do
    if ((SECONDS >= deadline)); then
        say "rabbitmq-server did not answer at $host:$port within ${wait_s}s; the end of its logs:"
        for log in /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log /var/log/rabbitmq/rabbit@*.log; do
            [[ -s "$log" ]] || continue
            say "--- $log"
            tail -n 30 "$log" >&2
        done
        exit 1
    fi
    sleep 0.5
done
say "rabbitmq-server answers at $shown (after $((SECONDS - deadline + wait_s))s)"
enable_plugins
