#!/usr/bin/env bash
# Reconnect storm: AGENTS WebSocket agents connected and running a rolled-out configuration;
# the server is killed (SIGKILL) and restarted on the same data dir and ports; how long until
# every agent is connected again, and whether any agent is sent again the config it applied.
#
#   examples/bench_storm.sh                   # 19,000 agents
#   AGENTS=2000 examples/bench_storm.sh       # a quick run
#
# Environment (defaults in brackets): AGENTS [19000], HEARTBEAT [30] (server
# --heartbeat-interval), CONNECT_RATE [5000 agents/s for the first connection], SOURCE_IPS
# [4: agents bind 127.0.0.1..127.0.0.N], CONFIG_SIZE [5120], APPLY_DELAY_MS [500],
# DOWN [1 s the server stays dead], SETTLE [5 s after the storm before the simulator is
# stopped], DATA [/tmp/bench-storm-data], OUT [/tmp/bench-storm-out], OPAMP [127.0.0.1:4320],
# API [127.0.0.1:4321], BUILD [1: cargo build --release first].
#
# Steps: start the server and the simulator; wait until all are connected; PUT configuration
# "storm" (selector: every agent) and roll it out in one wave; wait until the rollout is stable
# and the simulator has applied it AGENTS times; SIGKILL the server, wait DOWN seconds, start it
# again; measure the wall time from the restart (the new process started) until the admin API
# reports by_status.connected == AGENTS; the server's CPU over that time (from its start, so
# loading the store counts; server_cpu_startup_s is the part before /healthz answered) and RSS
# once all are back; then stop
# the simulator (it reconnects by itself with 0.5 s..30 s jittered exponential backoff, the same
# process throughout) and take from its summary the configs re-sent to agents that had already
# applied them (configs_resent, expected 0). The server paces new connections
# (--max-new-connections-per-second, default 2000, and --max-pending-handshakes): the excess is
# answered 503 with a Retry-After of 1-30 s, which the simulator waits out (sim_told_to_wait);
# refused_for_good counts agents never back (expected 0). SERVER_ARGS passes other flags, e.g.
# SERVER_ARGS="--max-new-connections-per-second 0" for no pacing.
# Prints one key=value per line; the server log, the simulator output and results stay in $OUT.
set -euo pipefail

AGENTS=${AGENTS:-19000}
HEARTBEAT=${HEARTBEAT:-30}
CONNECT_RATE=${CONNECT_RATE:-5000}
SOURCE_IPS=${SOURCE_IPS:-4}
CONFIG_SIZE=${CONFIG_SIZE:-5120}
APPLY_DELAY_MS=${APPLY_DELAY_MS:-500}
DOWN=${DOWN:-1}
SETTLE=${SETTLE:-5}
DATA=${DATA:-/tmp/bench-storm-data}
OUT=${OUT:-/tmp/bench-storm-out}

cd "$(dirname "$0")/.."
source examples/bench_lib.sh
bench_setup

start_server "$HEARTBEAT"
start_sim --server "ws://$OPAMP/v1/opamp" --agents "$AGENTS" --connect-rate "$CONNECT_RATE" \
    --source-ips "$SOURCE_IPS" --config-size "$CONFIG_SIZE" --apply-delay-ms "$APPLY_DELAY_MS"
wait_connected "$AGENTS"

# One configuration for every agent, rolled out in a single wave.
put_configuration storm "" "$CONFIG_SIZE" > "$OUT/configuration.json"
ROLLOUT=$(api POST /api/v1/rollouts "{\"configuration\":\"storm\",\"initial\":$AGENTS,\"multiplier\":1,\"maximum\":$AGENTS,\"max_errors\":$AGENTS,\"wave_timeout_seconds\":300}" | json_field id)
wait_rollout "$ROLLOUT" 600 > "$OUT/rollout.json"
ROLLOUT_STATE=$(json_field state < "$OUT/rollout.json")
APPLIED=$(json_field completed < "$OUT/rollout.json")
# The server may end the rollout before the last APPLIED reaches the simulator's counter.
sleep 1
CONNECTED_BEFORE=$(connected)
RSS_BEFORE=$(rss_kb "$SERVER")

kill -KILL "$SERVER"
wait "$SERVER" 2> /dev/null || true
SERVER=""
sleep "$DOWN"
T0=$(now)
start_server "$HEARTBEAT"
# CPU counts from the new process's start: its startup (loading the store) is part of the storm.
C_API=$(cpu_ticks "$SERVER")
T_API=$(now)
# Agents restored from the store must not count as connected before they come back.
CONNECTED_AT_API=$(connected)
wait_connected "$AGENTS" 300
T1=$(now)
C1=$(cpu_ticks "$SERVER")
RSS_AFTER=$(rss_kb "$SERVER")
sleep "$SETTLE"
C2=$(cpu_ticks "$SERVER")
RSS_SETTLED=$(rss_kb "$SERVER")
STILL_CONNECTED=$(connected)
curl -sf "http://$API/metrics" | grep '^corral_connections_cut_total' > "$OUT/cuts.txt" || true
CUT_RATE=$(awk -F' ' '/reason="connection_rate"/ {s += $2} END {print s + 0}' "$OUT/cuts.txt")
CUT_HANDSHAKES=$(awk -F' ' '/reason="pending_handshakes"/ {s += $2} END {print s + 0}' "$OUT/cuts.txt")
stop_sim
stop_server

SUMMARY=$(cat "$OUT/simulate.json")
sim() { json_field "$1" <<< "$SUMMARY"; }
awk -v agents="$AGENTS" -v tck="$TCK" -v t0="$T0" -v tapi="$T_API" -v t1="$T1" \
    -v capi="$C_API" -v c1="$C1" -v c2="$C2" -v settle="$SETTLE" -v down="$DOWN" \
    -v rb="$RSS_BEFORE" -v ra="$RSS_AFTER" -v rs="$RSS_SETTLED" \
    -v cat_api="$CONNECTED_AT_API" -v rstate="$ROLLOUT_STATE" -v rapplied="$APPLIED" -v cb="$CONNECTED_BEFORE" -v still="$STILL_CONNECTED" \
    -v applied="$(sim configs_applied)" -v resent="$(sim configs_resent)" -v ignored="$(sim configs_ignored)" \
    -v received="$(sim configs_received)" -v recon="$(sim reconnects)" -v cerr="$(sim connect_errors)" \
    -v drops="$(sim connection_drops)" -v waited="$(sim told_to_wait)" \
    -v cut_rate="$CUT_RATE" -v cut_handshakes="$CUT_HANDSHAKES" 'BEGIN {
    printf "agents=%d\nrollout_state=%s\nrollout_completed=%d\nconnected_before_kill=%d\n", agents, rstate, rapplied, cb
    printf "server_down_s=%s\nserver_start_to_api_s=%.2f\nconnected_when_api_up=%d\n", down, tapi - t0, cat_api
    printf "storm_time_to_all_connected_s=%.2f\n", t1 - t0
    printf "server_cpu_startup_s=%.2f\n", capi / tck
    printf "server_cpu_during_storm_s=%.2f\nserver_cpu_share_during_storm=%.0f%%\n", c1 / tck, c1 / tck / (t1 - t0) * 100
    printf "server_cpu_in_settle_s=%.2f\n", (c2 - c1) / tck
    printf "rss_before_kill_kb=%d\nrss_all_reconnected_kb=%d\nrss_settled_kb=%d\n", rb, ra, rs
    printf "connected_after_settle=%d\n", still
    printf "sim_configs_received=%d\nsim_configs_applied=%d\nsim_configs_ignored=%d\n", received, applied, ignored
    printf "configs_resent_after_applied=%d\n", resent
    printf "sim_reconnects=%d\nsim_connect_errors=%d\nsim_connection_drops=%d\n", recon, cerr, drops
    printf "sim_told_to_wait=%d\nserver_refused_for_rate=%d\nserver_refused_for_handshakes=%d\n", waited, cut_rate, cut_handshakes
    printf "refused_for_good=%d\n", agents - still
}' | tee "$OUT/results.txt"
