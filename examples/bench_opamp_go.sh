#!/usr/bin/env bash
# Plain-HTTP benchmark of Corral with real opamp-go clients (examples/opamp-go-load/, the Go
# OpAMP client library that the OpenTelemetry collector's opamp extension and supervisor use),
# a cross-check of `TRANSPORT=http examples/bench_ws.sh`, whose agents are Corral's simulator.
#
#   examples/bench_opamp_go.sh                                       # 3,000 agents polling every 5 s
#   SERVER_ARGS="--keep-alive-timeout 0" examples/bench_opamp_go.sh  # a new connection per poll
#
# Each agent is one opamp-go HTTP client with its own http.Transport, so it keeps its own
# keep-alive connection between polls (Go keeps an idle connection 90 s) as a collector does;
# agents bind 127.0.0.1..127.0.0.N. Each reports a collector-like description, health healthy
# and a 5 KiB effective config (the same for all), and polls every POLL seconds: the server is
# started with --heartbeat-interval POLL, which opamp-go adopts as its polling interval.
#
# Environment (defaults in brackets): AGENTS [3000], POLL [5 s], CONNECT_RATE [1000 agents
# started/s], SETTLE [10 s after all are connected], WINDOW [30 s idle measurement], SERVER_ARGS
# [none: more server flags], SOURCE_IPS [8], CONFIG_SIZE [5120 bytes], DATA [/tmp/bench-data],
# OUT [/tmp/bench-out], OPAMP [127.0.0.1:4320], API [127.0.0.1:4321], BUILD [1: cargo build
# --release of the server first; the simulator is not used], GO_BUILD [1: go build the load
# program first], GO_BIN [${XDG_CACHE_HOME:-~/.cache}/corral-ci/opamp-go-load/opamp-go-load].
#
# Measures: wall time from the load program's start until the admin API reports every agent
# connected; server RSS before the agents and after all are connected and reported (per agent:
# settled − before, / AGENTS); over an idle window, the polls the server counted
# (corral_messages_in_total{transport="http"}) against the server's CPU and the load program's,
# the CPU everything else on the machine used (should be near 0), the server's open file
# descriptors and the agents' established connections (sampled each second); agents still
# connected after the window. Prints one key=value per line; the server log, the load
# program's progress (opamp-go-load.log), its JSON summary (opamp-go-load.json) and the server's
# /metrics after the window (metrics-after-window.txt) stay in $OUT.
set -euo pipefail

AGENTS=${AGENTS:-3000}
POLL=${POLL:-5}
CONNECT_RATE=${CONNECT_RATE:-1000}
SOURCE_IPS=${SOURCE_IPS:-8}
SETTLE=${SETTLE:-10}
WINDOW=${WINDOW:-30}
CONFIG_SIZE=${CONFIG_SIZE:-5120}
DATA=${DATA:-/tmp/bench-data}
OUT=${OUT:-/tmp/bench-out}
GO_BUILD=${GO_BUILD:-1}
GO_BIN=${GO_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/corral-ci/opamp-go-load/opamp-go-load}

cd "$(dirname "$0")/.."
source examples/bench_lib.sh

ulimit -n 20000
if [ "$BUILD" = 1 ]; then
    cargo build --release --quiet
fi
if [ "$GO_BUILD" = 1 ]; then
    mkdir -p "$(dirname "$GO_BIN")"
    (cd examples/opamp-go-load && go build -o "$GO_BIN" .)
fi
[ -x "$GO_BIN" ] || { echo "no load program at $GO_BIN (run with GO_BUILD=1)" >&2; exit 1; }
rm -rf "$DATA" "$OUT"
mkdir -p "$OUT"

# The server's open-connection gauge for plain HTTP.
http_connections() {
    curl -s "http://$API/metrics" | awk '$1 == "corral_connections{transport=\"http\"}" { print $2 }'
}
# Established TCP connections to the OpAMP port (the agents' side of them).
client_connections() { ss -Htn state established "( dport = :${OPAMP##*:} )" | wc -l; }

start_server "$POLL"
sleep 1
RSS_BEFORE=$(rss_kb "$SERVER")
CPU_START=$(cpu_ticks "$SERVER")

T0=$(now)
# SIM (bench_lib): wait_connected fails if it exits, stop_sim and the EXIT trap stop it.
"$GO_BIN" -server "http://$OPAMP/v1/opamp" -agents "$AGENTS" -rate "$CONNECT_RATE" \
    -poll "${POLL}s" -source-ips "$SOURCE_IPS" -config-size "$CONFIG_SIZE" \
    > "$OUT/opamp-go-load.json" 2> "$OUT/opamp-go-load.log" &
SIM=$!
wait_connected "$AGENTS" 600
T1=$(now)
CPU_CONNECTED=$(cpu_ticks "$SERVER")
RSS_CONNECTED=$(rss_kb "$SERVER")

# Let full reports reach the store and every agent reach its steady polling.
sleep "$SETTLE"
RSS_SETTLED=$(rss_kb "$SERVER")

FDS=""; CLIENT_CONNS=""
M0=$(messages_in http); C0=$(cpu_ticks "$SERVER"); S0=$(cpu_ticks "$SIM"); A0=$(machine_ticks); W0=$(now)
END=$(awk -v w0="$W0" -v w="$WINDOW" 'BEGIN { printf "%.3f", w0 + w }')
while awk -v t="$(now)" -v e="$END" 'BEGIN { exit !(t + 1 <= e) }'; do
    sleep 1
    FDS="$FDS $(open_fds "$SERVER")"
    CLIENT_CONNS="$CLIENT_CONNS $(client_connections)"
done
sleep "$(awk -v t="$(now)" -v e="$END" 'BEGIN { d = e - t; printf "%.3f", (d > 0 ? d : 0) }')"
M1=$(messages_in http); C1=$(cpu_ticks "$SERVER"); S1=$(cpu_ticks "$SIM"); A1=$(machine_ticks); W1=$(now)
RSS_AFTER_WINDOW=$(rss_kb "$SERVER")
STILL_CONNECTED=$(connected)
HTTP_CONNECTIONS=$(http_connections)
OVERFLOWS=$(metric_sum corral_queue_overflows_total)
DECODE_ERRORS=$(metric_sum corral_decode_errors_total)
STORE_ERRORS=$(metric_sum corral_store_errors_total)
REJECTED=$(metric_sum corral_rejected_requests_total)
CUT=$(metric_sum corral_connections_cut_total)
curl -s "http://$API/metrics" > "$OUT/metrics-after-window.txt"

stop_sim
stop_server

stats() { tr ' ' '\n' | awk 'NF { n++; s += $1; if (n == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1 }
    END { if (n) printf "%d %d %.0f", lo, hi, s / n; else print "0 0 0" }'; }
read -r FD_MIN FD_MAX FD_MEAN <<< "$(stats <<< "$FDS")"
read -r CC_MIN CC_MAX CC_MEAN <<< "$(stats <<< "$CLIENT_CONNS")"

{
    printf "transport=http\nclient=opamp-go\nserver_args=%s\n" "${SERVER_ARGS:-}"
    printf "agents=%d\npoll_interval_s=%d\nconnect_rate_per_s=%d\n" "$AGENTS" "$POLL" "$CONNECT_RATE"
    print_costs client
    printf "server_open_fds_min=%d\nserver_open_fds_max=%d\nserver_open_fds_mean=%d\n" \
        "$FD_MIN" "$FD_MAX" "$FD_MEAN"
    printf "client_connections_min=%d\nclient_connections_max=%d\nclient_connections_mean=%d\n" \
        "$CC_MIN" "$CC_MAX" "$CC_MEAN"
    printf "server_http_connections_after_window=%d\n" "$HTTP_CONNECTIONS"
    printf "connected_after_window=%d\nqueue_overflows=%d\ndecode_errors=%d\nstore_errors=%d\n" \
        "$STILL_CONNECTED" "$OVERFLOWS" "$DECODE_ERRORS" "$STORE_ERRORS"
    printf "rejected_requests=%d\nconnections_cut=%d\n" "$REJECTED" "$CUT"
} | tee "$OUT/results.txt"
echo "opamp-go-load summary: $(cat "$OUT/opamp-go-load.json")" | tee -a "$OUT/results.txt"
