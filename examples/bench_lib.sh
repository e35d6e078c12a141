# Shell functions shared by the benchmark scripts (examples/bench_*.sh). Source it after
# setting DATA and OUT (and, to move off the default ports, OPAMP and API); it defines:
#
#   bench_setup                 raises the open-file limit, builds (unless BUILD=0), empties
#                               DATA and OUT
#   bench_build                 cargo build --release of the server and the simulator, unless BUILD=0
#   start_server [HEARTBEAT]    starts target/release/corral serve on DATA/OPAMP/API (log appended
#                               to $OUT/server.log), sets SERVER to its pid, waits for /healthz
#   start_sim ARGS...           starts the simulator (JSON summary to $OUT/simulate.json, progress
#                               to $OUT/simulate.log), sets SIM to its pid
#   stop_sim / stop_server      SIGTERM and wait (the simulator then prints its summary)
#   wait_connected N [TIMEOUT]  polls the fleet every 0.1 s until by_status.connected == N;
#                               fails if the simulator died or TIMEOUT seconds [600] passed
#   cpu_ticks PID, machine_ticks, rss_kb PID, open_fds PID, connected, messages_in LABEL,
#   metric_sum PREFIX, now, api METHOD PATH [JSON] (with the admin key: api_auth), json_field NAME (first "NAME": value on stdin),
#   percentiles (reads one number per line, prints "median p99" in the same unit)
#   print_costs LOAD            the costs of a run (ramp, RSS, CPU per message over the idle
#                               window, the load's CPU, the rest of the machine's) as key=value
#                               lines, from AGENTS, CONNECT_RATE, T0 T1 (ramp), RSS_BEFORE
#                               RSS_CONNECTED RSS_SETTLED RSS_AFTER_WINDOW, CPU_START
#                               CPU_CONNECTED, and over the window W0 W1, M0 M1 (messages in),
#                               C0 C1 (server), S0 S1 (the load, named LOAD), A0 A1 (machine)
#
# A trap on EXIT stops the simulator and the server the script started.

BUILD=${BUILD:-1}
OPAMP=${OPAMP:-127.0.0.1:4320}
API=${API:-127.0.0.1:4321}
SERVER=""
SIM=""
TCK=$(getconf CLK_TCK)

bench_cleanup() {
    [ -n "$SIM" ] && kill -TERM "$SIM" 2>/dev/null || true
    [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap bench_cleanup EXIT

bench_build() {
    if [ "$BUILD" = 1 ]; then
        cargo build --release --quiet
        cargo build --release --quiet --example simulate
    fi
}

bench_setup() {
    ulimit -n 20000
    bench_build
    rm -rf "$DATA" "$OUT"
    mkdir -p "$OUT"
}

# utime+stime of a process, in clock ticks
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# busy ticks of the whole machine (all cores), to see whether anything else ran
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
open_fds() { ls "/proc/$1/fd" | wc -l; }
# The admin API key: CORRAL_API_KEY, else the one the server wrote to DATA on its first start.
api_auth() { echo "Authorization: Bearer ${CORRAL_API_KEY:-$(cat "$DATA/admin.key" 2> /dev/null)}"; }
connected() { curl -s -H "$(api_auth)" "http://$API/api/v1/fleet" | sed -n 's/.*"connected":\([0-9]*\).*/\1/p'; }
messages_in() { curl -s "http://$API/metrics" | awk -v l="$1" '$1 == "corral_messages_in_total{transport=\"" l "\"}" { print $2 }'; }
metric_sum() { curl -s "http://$API/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'; }
now() { date +%s.%N; }

# api METHOD PATH [JSON]: the response body on stdout, with the admin key; fails on an HTTP error.
api() {
    if [ $# -ge 3 ]; then
        curl -sf -X "$1" -H "$(api_auth)" -H 'Content-Type: application/json' --data-binary "$3" "http://$API$2"
    else
        curl -sf -X "$1" -H "$(api_auth)" "http://$API$2"
    fi
}

# The first value of "NAME": in the JSON on stdin (strings without their quotes).
json_field() { grep -o "\"$1\":[^,}]*" | head -1 | sed 's/^"[^"]*"://; s/^"//; s/"$//'; }

# Median and 99th percentile (nearest rank) of the numbers on stdin.
percentiles() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan nan"; exit }
        m = int((NR + 1) / 2); p = int(NR * 0.99 + 0.999999); if (p > NR) p = NR
        print v[m], v[p]
    }'
}

start_server() {
    local heartbeat=${1:-30}
    # SERVER_ARGS: more flags for the server, e.g. "--max-new-connections-per-second 0".
    # shellcheck disable=SC2086
    target/release/corral serve --data-dir "$DATA" --opamp-listen "$OPAMP" --api-listen "$API" \
        --heartbeat-interval "$heartbeat" ${SERVER_ARGS:-} >> "$OUT/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 300); do
        curl -sf "http://$API/healthz" > /dev/null && return 0
        kill -0 "$SERVER" 2> /dev/null || { echo "server exited; see $OUT/server.log" >&2; return 1; }
        sleep 0.1
    done
    echo "server did not answer /healthz within 30 s" >&2
    return 1
}

stop_server() {
    [ -n "$SERVER" ] || return 0
    kill -TERM "$SERVER" 2> /dev/null || true
    wait "$SERVER" 2> /dev/null || true
    SERVER=""
}

start_sim() {
    target/release/examples/simulate --json "$@" > "$OUT/simulate.json" 2> "$OUT/simulate.log" &
    SIM=$!
}

stop_sim() {
    [ -n "$SIM" ] || return 0
    kill -TERM "$SIM" 2> /dev/null || true
    wait "$SIM" 2> /dev/null || true
    SIM=""
}

wait_connected() {
    local want=$1 limit=${2:-600} start
    start=$(date +%s)
    while [ "$(connected)" != "$want" ]; do
        if [ -n "$SIM" ] && ! kill -0 "$SIM" 2> /dev/null; then
            echo "simulator exited early; see $OUT/simulate.log" >&2
            return 1
        fi
        if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
            echo "not all $want agents connected within $limit s (connected: $(connected))" >&2
            return 1
        fi
        sleep 0.1
    done
}

# A collector YAML that the simulated agents' default components can run, padded with
# comments to $1 bytes (at least its natural size), tagged with $2 so versions differ.
collector_yaml() {
    local size=$1 tag=${2:-1} yaml
    yaml=$(printf '%s\n' "# corral benchmark configuration $tag" \
        'receivers:' '  otlp:' '    protocols:' '      grpc:' '        endpoint: 0.0.0.0:4317' \
        'processors:' '  memory_limiter:' '    check_interval: 1s' '    limit_percentage: 80' \
        '  batch:' '    timeout: 5s' \
        'exporters:' '  otlphttp:' '    endpoint: https://otlp.example.com:4318' \
        'service:' '  pipelines:' '    traces:' '      receivers: [otlp]' \
        '      processors: [memory_limiter, batch]' '      exporters: [otlphttp]')
    printf '%s\n' "$yaml"
    awk -v have="$(( ${#yaml} + 1 ))" -v size="$size" 'BEGIN {
        line = "# padding ......................................................................"
        while (have + length(line) + 1 <= size) { print line; have += length(line) + 1 }
    }'
}

# put_configuration NAME SELECTOR [SIZE] [TAG]: PUT a configuration of one YAML file; prints
# the response ({"name","version","hash","created","changed",...}).
put_configuration() {
    local body
    body=$(collector_yaml "${3:-5120}" "${4:-1}" | awk '{ gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); printf "%s\\n", $0 }')
    api PUT "/api/v1/configurations/$1" \
        "{\"selector\":\"$2\",\"files\":{\"\":{\"body\":\"$body\",\"content_type\":\"text/yaml\"}}}"
}

# wait_rollout ID [TIMEOUT]: polls the rollout every 0.1 s until it is stable, error, cancelled
# or replaced; prints its last JSON; fails after TIMEOUT seconds [600].
wait_rollout() {
    local id=$1 limit=${2:-600} start body state
    start=$(date +%s)
    while true; do
        body=$(api GET "/api/v1/rollouts/$id" || true)
        state=$(json_field state <<< "$body")
        case "$state" in stable|error|cancelled|replaced) break ;; esac
        if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
            echo "rollout $id not finished within $limit s (state: $state)" >&2
            printf '%s\n' "$body"
            return 1
        fi
        sleep 0.1
    done
    printf '%s\n' "$body"
}

print_costs() {
    awk -v load="$1" -v agents="$AGENTS" -v tck="$TCK" -v t0="$T0" -v t1="$T1" -v w0="$W0" -v w1="$W1" \
        -v rb="$RSS_BEFORE" -v rc="$RSS_CONNECTED" -v rs="$RSS_SETTLED" -v rw="$RSS_AFTER_WINDOW" \
        -v cs="$CPU_START" -v cc="$CPU_CONNECTED" -v c0="$C0" -v c1="$C1" -v s0="$S0" -v s1="$S1" \
        -v a0="$A0" -v a1="$A1" -v m0="$M0" -v m1="$M1" 'BEGIN {
        hbs = m1 - m0; win = w1 - w0
        printf "time_to_all_connected_s=%.2f\n", t1 - t0
        printf "server_cpu_during_ramp_s=%.2f\n", (cc - cs) / tck
        printf "server_cpu_per_connect_us=%.0f\n", (cc - cs) / tck * 1e6 / agents
        printf "rss_before_kb=%d\nrss_all_connected_kb=%d\nrss_settled_kb=%d\nrss_after_window_kb=%d\n", rb, rc, rs, rw
        printf "rss_per_agent_bytes=%.0f\n", (rs - rb) * 1024 / agents
        printf "window_s=%.1f\nheartbeats_in_window=%d\nheartbeats_per_s=%.1f\n", win, hbs, hbs / win
        printf "server_cpu_in_window_s=%.2f\nserver_cpu_share_of_one_core=%.1f%%\n", (c1 - c0) / tck, (c1 - c0) / tck / win * 100
        printf "server_cpu_per_heartbeat_us=%.1f\n", (c1 - c0) / tck * 1e6 / hbs
        printf "%s_cpu_in_window_s=%.2f\n%s_cpu_per_heartbeat_us=%.1f\n", load, (s1 - s0) / tck, load, (s1 - s0) / tck * 1e6 / hbs
        printf "other_cpu_in_window_s=%.2f\n", ((a1 - a0) - (c1 - c0) - (s1 - s0)) / tck
    }'
}
