#!/usr/bin/env bash
# Benchmarks kvserver against the limits of this machine and against Redis, in one run, and
# prints one table of ratios (see docs/performance.md).
#
#   scripts/bench.sh
#
# Every throughput figure comes from the same load generator (examples/examples/load.rs), with
# the same concurrency and duration, against servers started here on free high ports:
#   - a bare hyper server returning a fixed JSON body (the one-hop HTTP limit),
#   - a bare forwarding server in front of it (the two-hop limit: server -> pooled client ->
#     server), and the hop mix of a 4-node cluster (1/4 of requests to the bare server, 3/4
#     through the forwarder),
#   - kvserver: one node (R=1), and 4-node clusters at R=1 and R=3, keys preloaded,
#   - Redis via redis-benchmark (same concurrency, keep-alive, no pipelining), if installed or
#     installable with apt-get; its rows are skipped otherwise.
# Then memory per key: RSS growth of one kvserver node, and Redis's used_memory and RSS growth,
# when each loads the same 1M keys of 16 bytes with 32-byte values.
#
# The load generator and the servers share this machine's cores, which caps every figure; the
# ratios are what carries over to other machines. Because the client competes with the server
# for the same cores, the client thread count that gives the most throughput differs by server
# (one thread suits the cheap bare server, two suit kvserver): every row is therefore measured
# with each count in BENCH_THREADS and keeps the best, so no side is held back. Settings (environment):
#   BENCH_SECS         seconds per measured run (default 8; each run also has 1 s of warm-up)
#   BENCH_CONCURRENCY  requests in flight (default 64)
#   BENCH_KEYS         keys of the throughput runs (default 100000)
#   BENCH_MEM_KEYS     keys of the memory test (default 1000000)
#   BENCH_THREADS      thread counts of the load generator (and of redis-benchmark) to try; each
#                      row is the best of them (default "1 2"; "2" halves the run time)
#   BENCH_OUT          directory for the raw results (default: a new temporary directory)
#   BENCH_SKIP_REDIS   set to 1 to leave Redis out
#   CARGO_TARGET_DIR   honoured, as by cargo
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${BENCH_SECS:-8}
CONC=${BENCH_CONCURRENCY:-64}
KEYS=${BENCH_KEYS:-100000}
MEM_KEYS=${BENCH_MEM_KEYS:-1000000}
THREADS=${BENCH_THREADS:-1 2}
OUT=${BENCH_OUT:-$(mktemp -d -t kvbench.XXXXXX)}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VALUE_SIZE=32
mkdir -p "$OUT"

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v python3 >/dev/null || die "python3 is needed (free ports, the loaders and the table)"

# --- processes we start, all stopped on exit --------------------------------------------------
PIDS=()
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# A base port such that base .. base+N-1 are all free.
free_ports() {
    python3 - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    base = random.randint(20000, 60000 - n)
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no free port range found")
EOF
}

# Waits until a line matching $2 appears in file $1 (a server's output), or fails after 60 s.
wait_for_line() {
    local i
    for i in $(seq 600); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "server did not start; its output: $(cat "$1")"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# --- build and tools ---------------------------------------------------------------------------
say "building (release)"
(cd "$ROOT" && cargo build --release --quiet -p kvserver --bin kvserver \
    -p examples --example load --example bare_server)
KV="$TARGET_DIR/release/kvserver"
LOAD="$TARGET_DIR/release/examples/load"
BARE="$TARGET_DIR/release/examples/bare_server"

REDIS=1
if [[ "${BENCH_SKIP_REDIS:-0}" == 1 ]]; then
    REDIS=0
elif ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        say "installing redis-server and redis-tools with apt-get"
        { apt-get install -y -qq redis-server redis-tools ||
            { apt-get update -qq && apt-get install -y -qq redis-server redis-tools; }; } \
            >"$OUT/apt.log" 2>&1 || true
    fi
    if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
        say "Redis is not installed and could not be installed: skipping the Redis rows"
        REDIS=0
    fi
fi

# --- helpers -------------------------------------------------------------------------------------
# run_load NAME TARGETS ARGS...: one measured run per client thread count, each report saved
# as $OUT/NAME-tN.json and the best one as $OUT/NAME.json.
run_load() {
    local name=$1 targets=$2 t
    shift 2
    for t in $THREADS; do
        say "run $name (load generator threads: $t)"
        "$LOAD" --json --targets "$targets" --duration "${SECS}s" --warmup 1s \
            --concurrency "$CONC" --threads "$t" --keys "$KEYS" --value-size "$VALUE_SIZE" \
            --uniform "$@" >"$OUT/$name-t$t.json"
    done
    python3 - "$OUT" "$name" <<'EOF'
import glob, json, os, sys
out, name = sys.argv[1:]
runs = [json.load(open(p)) for p in glob.glob(os.path.join(out, name + "-t*.json"))]
json.dump(max(runs, key=lambda r: r["throughput"]), open(os.path.join(out, name + ".json"), "w"))
EOF
}

preload() {
    local name=$1 targets=$2 keys=$3
    say "preload $keys keys ($name)"
    "$LOAD" --json --targets "$targets" --duration 0 --preload --concurrency "$CONC" \
        --threads 2 --keys "$keys" --value-size "$VALUE_SIZE" >"$OUT/$name.json"
}

# start_kv NODES REPLICAS: a kvserver cluster in one process; sets KV_PID and KV_TARGETS.
start_kv() {
    local nodes=$1 replicas=$2 base log
    base=$(free_ports "$nodes")
    log="$OUT/kvserver-$nodes-$replicas.log"
    RUST_LOG=warn "$KV" cluster --nodes "$nodes" --replicas "$replicas" --base-port "$base" \
        --no-seed >"$log" 2>&1 &
    KV_PID=$!
    PIDS+=("$KV_PID")
    wait_for_line "$log" "nodes up"
    KV_TARGETS=$(seq -s, -f "http://127.0.0.1:%g" "$base" $((base + nodes - 1)))
}

# start_bare NAME [--forward-to ADDR]: sets BARE_ADDR (host:port).
start_bare() {
    local name=$1 port
    shift
    port=$(free_ports 1)
    "$BARE" --listen "127.0.0.1:$port" "$@" >"$OUT/$name.log" 2>&1 &
    PIDS+=("$!")
    wait_for_line "$OUT/$name.log" "listening"
    BARE_ADDR="127.0.0.1:$port"
}

start_redis() {
    REDIS_PORT=$(free_ports 1)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --protected-mode no --daemonize no --logfile "" >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    local i
    for i in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "redis-server did not start: $(cat "$OUT/redis.log")"
}

{
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: ${SECS}s per run, concurrency $CONC, $KEYS uniform keys, ${VALUE_SIZE}-byte values, best of load generator threads: $THREADS"
} >"$OUT/machine.txt"

# --- 1. the HTTP limits: bare server, bare two-hop ----------------------------------------------
start_bare bare
run_load bare-get "http://$BARE_ADDR" --get-ratio 1
run_load bare-set "http://$BARE_ADDR" --get-ratio 0
ONE_HOP="http://$BARE_ADDR"
start_bare twohop --forward-to "$BARE_ADDR"
TWO_HOP="http://$BARE_ADDR"
run_load twohop-get "$TWO_HOP" --get-ratio 1
run_load twohop-set "$TWO_HOP" --get-ratio 0
# The hop mix of a 4-node R=1 cluster whose clients spread requests over every node: a quarter
# reach the key's owner directly (one hop), three quarters are forwarded (two hops).
MIX="$ONE_HOP,$TWO_HOP,$TWO_HOP,$TWO_HOP"
run_load mix-get "$MIX" --get-ratio 1
run_load mix-set "$MIX" --get-ratio 0
stop_all

# --- 2. one kvserver node -------------------------------------------------------------------------
start_kv 1 1
preload single-preload "$KV_TARGETS" "$KEYS"
run_load single-get "$KV_TARGETS" --get-ratio 1
run_load single-set "$KV_TARGETS" --get-ratio 0
stop_all

# --- 3. 4-node clusters at R=1 and R=3, requests spread over every node --------------------------
for r in 1 3; do
    start_kv 4 "$r"
    preload "r$r-preload" "$KV_TARGETS" "$KEYS"
    run_load "r$r-get" "$KV_TARGETS" --get-ratio 1
    run_load "r$r-set" "$KV_TARGETS" --get-ratio 0
    stop_all
done

# --- 4. Redis, same concurrency, keep-alive, no pipelining ---------------------------------------
if [[ $REDIS == 1 ]]; then
    start_redis
    rb=(redis-benchmark -p "$REDIS_PORT" -c "$CONC" -P 1 -k 1 -r "$KEYS" -d "$VALUE_SIZE" --csv)
    redis_threads=$THREADS
    if ! redis-benchmark --help 2>&1 | grep -q -- '--threads'; then
        redis_threads=1
    fi
    for op in set get; do
        for t in $redis_threads; do
            threads=()
            [[ $t == 1 ]] || threads=(--threads "$t")
            # A short calibration run sizes -n so the measured run lasts about BENCH_SECS.
            say "run redis-$op (redis-benchmark threads: $t)"
            "${rb[@]}" "${threads[@]}" -t "$op" -n 50000 >"$OUT/redis-$op-t$t-calibrate.csv" 2>/dev/null
            n=$(python3 -c 'import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(max(50000, int(float(r[0]["rps"]) * float(sys.argv[2]))))' \
                "$OUT/redis-$op-t$t-calibrate.csv" "$SECS")
            "${rb[@]}" "${threads[@]}" -t "$op" -n "$n" >"$OUT/redis-$op-t$t.csv" 2>/dev/null
        done
        python3 - "$OUT" "$op" <<'EOF'
import csv, glob, os, shutil, sys
out, op = sys.argv[1:]
rps = lambda p: float(list(csv.DictReader(open(p)))[0]["rps"])
runs = [p for p in glob.glob(os.path.join(out, "redis-%s-t*.csv" % op)) if "calibrate" not in p]
shutil.copy(max(runs, key=rps), os.path.join(out, "redis-%s.csv" % op))
EOF
    done
    stop_all
fi

# --- 5. memory per key ------------------------------------------------------------------------------
start_kv 1 1
sleep 1
before=$(rss_kib "$KV_PID")
preload mem-kv "$KV_TARGETS" "$MEM_KEYS"
sleep 1
after=$(rss_kib "$KV_PID")
echo "{\"rss_before_kib\": $before, \"rss_after_kib\": $after, \"keys\": $MEM_KEYS}" >"$OUT/mem-kv-rss.json"
stop_all

if [[ $REDIS == 1 ]]; then
    start_redis
    used() { redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }
    before_used=$(used)
    before=$(rss_kib "$REDIS_PID")
    say "load $MEM_KEYS keys into Redis"
    # The same keys and values as the load generator's, as pipelined RESP.
    python3 - "$MEM_KEYS" "$VALUE_SIZE" <<'EOF' | redis-cli -p "$REDIS_PORT" --pipe >"$OUT/redis-pipe.log"
import sys
n, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
chunk = []
for i in range(n):
    k = b"key:%012d" % i
    v = (b"%d" % i).rjust(size, b"0")[-size:]
    chunk.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
    if len(chunk) == 10000:
        out.write(b"".join(chunk))
        chunk = []
out.write(b"".join(chunk))
EOF
    sleep 1
    after_used=$(used)
    after=$(rss_kib "$REDIS_PID")
    keys=$(redis-cli -p "$REDIS_PORT" dbsize | tr -d '\r')
    echo "{\"used_before\": $before_used, \"used_after\": $after_used, \"rss_before_kib\": $before, \"rss_after_kib\": $after, \"keys\": $keys}" >"$OUT/mem-redis.json"
    stop_all
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

# --- the table ----------------------------------------------------------------------------------
python3 - "$OUT" <<'EOF' | tee "$OUT/table.txt"
import csv, json, os, sys

out = sys.argv[1]

def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None

def redis(t):
    path = os.path.join(out, "redis-%s.csv" % t)
    if not os.path.exists(path):
        return None
    row = list(csv.DictReader(open(path)))[0]
    return {"throughput": float(row["rps"]),
            "p50": float(row["p50_latency_ms"]), "p99": float(row["p99_latency_ms"])}

rows = {}
for name in ["bare-get", "bare-set", "twohop-get", "twohop-set", "mix-get", "mix-set",
             "single-get", "single-set",
             "r1-get", "r1-set", "r3-get", "r3-set"]:
    r = load(name)
    if r:
        errors = sum(r["errors"].values())
        rows[name] = {"throughput": r["throughput"], "p50": r["latency_us"]["p50"] / 1000,
                      "p99": r["latency_us"]["p99"] / 1000, "errors": errors,
                      "threads": r["threads"]}
for t in ["get", "set"]:
    r = redis(t)
    if r:
        rows["redis-" + t] = dict(r, errors=0)

labels = {
    "bare-get": "bare hyper server, GET", "bare-set": "bare hyper server, SET",
    "twohop-get": "bare two-hop, GET", "twohop-set": "bare two-hop, SET",
    "mix-get": "bare hop mix (1/4 one, 3/4 two), GET", "mix-set": "bare hop mix, SET",
    "redis-get": "Redis (redis-benchmark), GET", "redis-set": "Redis (redis-benchmark), SET",
    "single-get": "kvserver 1 node, GET", "single-set": "kvserver 1 node, SET",
    "r1-get": "kvserver 4 nodes R=1, GET", "r1-set": "kvserver 4 nodes R=1, SET",
    "r3-get": "kvserver 4 nodes R=3, GET", "r3-set": "kvserver 4 nodes R=3, SET",
}
print(open(os.path.join(out, "machine.txt")).read().rstrip())
print()
print("%-40s %10s %8s %8s %7s %8s" % ("measured", "ops/s", "p50 ms", "p99 ms", "errors",
                                       "threads"))
for key, label in labels.items():
    r = rows.get(key)
    if r:
        print("%-40s %10.0f %8.2f %8.2f %7d %8s" % (label, r["throughput"], r["p50"], r["p99"],
                                                  r["errors"], r.get("threads", "")))

ratios = [
    ("1 node GET / bare GET", "single-get", "bare-get", ">= 0.85"),
    ("1 node GET / Redis GET", "single-get", "redis-get", ">= 1.0"),
    ("1 node SET / bare SET", "single-set", "bare-set", ""),
    ("1 node SET / Redis SET", "single-set", "redis-set", ">= 1.0"),
    ("4 nodes R=1 GET / hop mix GET", "r1-get", "mix-get", ">= 0.8"),
    ("4 nodes R=1 SET / hop mix SET", "r1-set", "mix-set", ""),
    ("4 nodes R=1 GET / two-hop GET", "r1-get", "twohop-get", ""),
    ("4 nodes R=1 SET / two-hop SET", "r1-set", "twohop-set", ""),
    ("4 nodes R=3 GET / two-hop GET", "r3-get", "twohop-get", ""),
    ("4 nodes R=3 SET / two-hop SET", "r3-set", "twohop-set", ""),
    ("R=3 GET / R=1 GET", "r3-get", "r1-get", ">= 0.5"),
    ("R=3 SET / R=1 SET", "r3-set", "r1-set", ">= 0.5"),
]
print()
print("%-34s %7s  %-8s %s" % ("ratio", "value", "target", ""))

def verdict(value, target):
    if not target:
        return ""
    want = float(target.split()[1])
    return "met" if (value >= want if target.startswith(">=") else value <= want) else "MISSED"

for label, a, b, target in ratios:
    if a in rows and b in rows and rows[b]["throughput"] > 0:
        v = rows[a]["throughput"] / rows[b]["throughput"]
        print("%-34s %7.2f  %-8s %s" % (label, v, target, verdict(v, target)))
    else:
        print("%-34s %7s  %-8s %s" % (label, "-", target, "skipped"))

kv = load("mem-kv-rss")
stored = load("mem-kv")
rd = load("mem-redis")
if kv:
    kv_per_key = (kv["rss_after_kib"] - kv["rss_before_kib"]) * 1024 / kv["keys"]
    print()
    print("memory per key, %d keys of 16 bytes with %d-byte values:" % (kv["keys"], 32))
    print("  kvserver RSS growth          %7.1f bytes/key (loaded at %.0f keys/s)"
          % (kv_per_key, stored["preload"]["ops_per_sec"]))
    if rd:
        used = (rd["used_after"] - rd["used_before"]) / rd["keys"]
        rss = (rd["rss_after_kib"] - rd["rss_before_kib"]) * 1024 / rd["keys"]
        print("  Redis used_memory growth     %7.1f bytes/key" % used)
        print("  Redis RSS growth             %7.1f bytes/key" % rss)
        v = kv_per_key / used
        print("%-34s %7.2f  %-8s %s" % ("kvserver RSS / Redis used_memory", v, "<= 0.7",
                                         verdict(v, "<= 0.7")))
        print("%-34s %7.2f" % ("kvserver RSS / Redis RSS", kv_per_key / rss))
print()
print("raw results: " + out)
EOF
