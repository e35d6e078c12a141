#!/usr/bin/env bash
# End-to-end WebSocket benchmark of Corral with the agent simulator (examples/simulate/).
#
#   examples/bench_ws.sh                      # 10,000 agents, server heartbeat 30 s
#   HEARTBEAT=5 examples/bench_ws.sh          # same, agents heartbeat every 5 s
#
# Environment (defaults in brackets): AGENTS [10000], HEARTBEAT [30] (server
# --heartbeat-interval, which agents accepting connection settings adopt), CONNECT_RATE
# [1000 agents/s], SETTLE [15 s after all are connected], WINDOW [60 s idle measurement],
# DATA [/tmp/bench-data], OUT [/tmp/bench-out], OPAMP [127.0.0.1:4320], API [127.0.0.1:4321],
# BUILD [1: cargo build --release first], TRANSPORT [ws; or http for polling agents, where
# "heartbeats" are idle polls], CONFIG_SIZE [5120: bytes of each agent's effective config; 0
# gives the built-in 941-byte YAML of the runs before this knob], SIM_ARGS [none: more simulator
# options, e.g. "--label k8s.cluster.name=prod" for larger descriptions], SOURCE_IPS [8: agents
# bind 127.0.0.1..127.0.0.N, so that the connections the server paces away, each a new one, do
# not run one address out of ports].
#
# Measures: wall time from simulator start until the admin API reports every agent connected;
# server RSS before the agents and after all are connected and reported; server and simulator
# CPU over an idle window against the heartbeats counted by the server in that window, and
# the CPU everything else on the machine used in that window (should be near 0).
# Prints one key=value per line; the server log and simulator output stay in $OUT.
set -euo pipefail

AGENTS=${AGENTS:-10000}
HEARTBEAT=${HEARTBEAT:-30}
CONNECT_RATE=${CONNECT_RATE:-1000}
SOURCE_IPS=${SOURCE_IPS:-8}
SETTLE=${SETTLE:-15}
WINDOW=${WINDOW:-60}
DATA=${DATA:-/tmp/bench-data}
OUT=${OUT:-/tmp/bench-out}
TRANSPORT=${TRANSPORT:-ws}
CONFIG_SIZE=${CONFIG_SIZE:-5120}
case "$TRANSPORT" in
    ws) SCHEME=ws; LABEL=websocket ;;
    http) SCHEME=http; LABEL=http ;;
    *) echo "TRANSPORT must be ws or http" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
source examples/bench_lib.sh
bench_setup

start_server "$HEARTBEAT"
sleep 1
RSS_BEFORE=$(rss_kb "$SERVER")
CPU_START=$(cpu_ticks "$SERVER")

T0=$(now)
# shellcheck disable=SC2086 # SIM_ARGS holds several options
start_sim --server "$SCHEME://$OPAMP/v1/opamp" --agents "$AGENTS" \
    --connect-rate "$CONNECT_RATE" --config-size "$CONFIG_SIZE" --source-ips "$SOURCE_IPS" \
    ${SIM_ARGS:-}
wait_connected "$AGENTS" 3600
T1=$(now)
CPU_CONNECTED=$(cpu_ticks "$SERVER")
RSS_CONNECTED=$(rss_kb "$SERVER")

# Let full reports reach the store and every agent reach its steady heartbeat.
sleep "$SETTLE"
RSS_SETTLED=$(rss_kb "$SERVER")

M0=$(messages_in "$LABEL"); C0=$(cpu_ticks "$SERVER"); S0=$(cpu_ticks "$SIM"); A0=$(machine_ticks); W0=$(now)
sleep "$WINDOW"
M1=$(messages_in "$LABEL"); C1=$(cpu_ticks "$SERVER"); S1=$(cpu_ticks "$SIM"); A1=$(machine_ticks); W1=$(now)
RSS_AFTER_WINDOW=$(rss_kb "$SERVER")
STILL_CONNECTED=$(connected)
OVERFLOWS=$(metric_sum corral_queue_overflows_total)
DECODE_ERRORS=$(metric_sum corral_decode_errors_total)
STORE_ERRORS=$(metric_sum corral_store_errors_total)

stop_sim
stop_server

{
    printf "transport=%s\nagents=%d\nserver_heartbeat_interval_s=%d\nconnect_rate_per_s=%d\n" \
        "$LABEL" "$AGENTS" "$HEARTBEAT" "$CONNECT_RATE"
    print_costs simulator
    printf "connected_after_window=%d\nqueue_overflows=%d\ndecode_errors=%d\nstore_errors=%d\n" \
        "$STILL_CONNECTED" "$OVERFLOWS" "$DECODE_ERRORS" "$STORE_ERRORS"
} | tee "$OUT/results.txt"
echo "simulator summary: $(cat "$OUT/simulate.json")" | tee -a "$OUT/results.txt"
