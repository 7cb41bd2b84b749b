#!/usr/bin/env bash
# Runs a local cluster of kvserver processes, one per node, like the original project's run.sh.
#
#   scripts/run.sh [PREFIX] [COUNT] [NODE OPTIONS...]
#
# Node i listens on 127.0.0.1 at the port spelled PREFIX followed by i: the defaults, 510 and 4,
# give ports 5100, 5101, 5102 and 5103. Because the id is appended as one digit, the scheme only
# works for up to 10 nodes (an 11th node would get port 51010, not 5110); larger counts, and
# prefixes that would give ports over 65535, are refused.
#
# Arguments after COUNT go to every node, e.g. `scripts/run.sh 510 4 --max-memory 64MiB`
# (see `kvserver node --help`). Each node writes the seed keys a and b it owns when it starts.
#
# The release binary is built first (a no-op when it is up to date); set KVSERVER to the path of
# a kvserver binary to skip the build. Node logs go to files in a temporary directory, printed at
# start. Ctrl-C, SIGTERM, or any node exiting stops all the nodes.
#
# The nodes authenticate each other's messages with a cluster secret: KV_CLUSTER_SECRET if it is
# set, else a fresh random one, passed to every node in that environment variable (never on the
# command line, where `ps` would show it). Give `--cluster-secret-file FILE` among the node
# options to use a file instead. With `--tls-cert`, `--tls-key` and `--tls-ca` among the node
# options the nodes serve HTTPS, and the start-up check uses curl with that CA.

set -euo pipefail

usage() {
    echo "usage: $0 [PREFIX] [COUNT] [NODE OPTIONS...]   (defaults: 510 4 -> ports 5100..5103)" >&2
    exit 2
}

die() {
    echo "run.sh: $*" >&2
    exit 1
}

case "${1:-}" in -h | --help) usage ;; esac

prefix=${1:-510}
count=${2:-4}
shift $(($# < 2 ? $# : 2))
[[ $prefix =~ ^[0-9]+$ ]] || die "PREFIX must be a number, got '$prefix'"
[[ $count =~ ^[0-9]+$ ]] || die "COUNT must be a number, got '$count'"
# Base 10 explicitly: a leading zero would otherwise be read as octal.
prefix=$((10#$prefix))
count=$((10#$count))
((count >= 1)) || die "COUNT must be at least 1"
((count <= 10)) || die "COUNT $count is too large: a port is PREFIX followed by a one-digit node id" \
    "(510 + 0 -> 5100), so at most 10 nodes fit; node 10 would get port ${prefix}10." \
    "Use 'kvserver cluster --nodes $count --base-port PORT' for larger clusters."
last_port=$((prefix * 10 + count - 1))
((prefix >= 1 && last_port <= 65535)) ||
    die "PREFIX $prefix gives ports $((prefix * 10))..$last_port, outside 1..65535;" \
        "with $count nodes the prefix must be 1..$(((65536 - count) / 10))"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${KVSERVER:-} ]]; then
    bin=$KVSERVER
else
    command -v cargo >/dev/null || die "cargo is not installed; set KVSERVER to a kvserver binary"
    echo "building kvserver (release)..." >&2
    cargo build --quiet --release -p kvserver --manifest-path "$root/Cargo.toml"
    bin=${CARGO_TARGET_DIR:-$root/target}/release/kvserver
fi
[[ -x $bin ]] || die "no kvserver binary at $bin"

# The node options this script must know about: where the secret comes from, and TLS.
secret_file=
tls_ca=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --cluster-secret-file | --cluster-secret-file=*) secret_file=1 ;;
        --tls-ca) tls_ca=${args[i + 1]:-} ;;
        --tls-ca=*) tls_ca=${args[i]#--tls-ca=} ;;
    esac
done
if [[ -z $secret_file && -z ${KV_CLUSTER_SECRET:-} ]]; then
    # 32 random bytes as 64 hex digits; od is in coreutils, so on every Debian.
    KV_CLUSTER_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    ((${#KV_CLUSTER_SECRET} == 64)) || die "could not read a random secret from /dev/urandom"
fi
if [[ -z $secret_file ]]; then
    export KV_CLUSTER_SECRET
else
    # The node refuses a secret given both ways.
    unset KV_CLUSTER_SECRET
fi
scheme=http
if [[ -n $tls_ca ]]; then
    scheme=https
    command -v curl >/dev/null || die "checking HTTPS nodes needs curl"
fi

ports=()
peers=()
for ((i = 0; i < count; i++)); do
    ports+=($((prefix * 10 + i)))
    peers+=("127.0.0.1:${ports[i]}")
done
peer_list=$(
    IFS=,
    echo "${peers[*]}"
)
log_dir=$(mktemp -d "${TMPDIR:-/tmp}/kvserver-run.XXXXXX")

pids=()
stopping=
# shellcheck disable=SC2317 # only ever called by the EXIT trap
stop_nodes() {
    [[ -z $stopping ]] || return 0
    stopping=1
    ((${#pids[@]} > 0)) || return 0
    echo "stopping ${#pids[@]} nodes..." >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    # Nodes drain in-flight requests for a few seconds at most; wait so that the ports are free
    # once this script returns.
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop_nodes EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((i = 0; i < count; i++)); do
    NO_COLOR=1 "$bin" node --id "$i" --listen "${peers[i]}" --peers "$peer_list" "$@" \
        >"$log_dir/node-$i.log" 2>&1 &
    pids+=($!)
done

# True once the node on port $1 answers GET /health with 200.
healthy() {
    if [[ $scheme == https ]]; then
        curl -fsS -o /dev/null --max-time 1 --cacert "$tls_ca" "https://127.0.0.1:$1/health" 2>/dev/null
        return
    fi
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/health" 2>/dev/null
        return
    fi
    local status
    exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
    printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    read -r -t 1 _ status _ <&3 || status=
    exec 3<&-
    [[ $status == 200 ]]
}

deadline=$((SECONDS + ${KV_START_TIMEOUT:-20}))
for ((i = 0; i < count; i++)); do
    until healthy "${ports[i]}"; do
        if ! kill -0 "${pids[i]}" 2>/dev/null; then
            tail -n 5 "$log_dir/node-$i.log" >&2
            die "node $i (port ${ports[i]}) exited during start-up; log: $log_dir/node-$i.log"
        fi
        ((SECONDS < deadline)) ||
            die "node $i (port ${ports[i]}) did not answer /health in time; log: $log_dir/node-$i.log"
        sleep 0.1
    done
done

echo "kvserver: $count nodes up (logs in $log_dir)"
for ((i = 0; i < count; i++)); do
    echo "  node $i: $scheme://localhost:${ports[i]}"
done
curl_tls=
[[ $scheme == http ]] || curl_tls="--cacert $tls_ca "
cat <<EOF
try:
  curl ${curl_tls}-H "Content-Type: application/json" -d '{"key": "d", "value": "onto", "encoding": "string"}' $scheme://localhost:${ports[0]}/set
  curl ${curl_tls}$scheme://localhost:${ports[count - 1]}/get/d
  curl ${curl_tls}$scheme://localhost:${ports[count - 1]}/get/a
Ctrl-C stops the cluster.
EOF

# A node that exits on its own (crash, port taken later) takes the cluster down with it, so a
# half-running cluster is never mistaken for a healthy one.
set +e
wait -n "${pids[@]}"
status=$?
set -e
echo "run.sh: a node exited (status $status); stopping the others" >&2
exit 1
