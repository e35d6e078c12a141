#!/usr/bin/env bash
# Rollout to a whole fleet: AGENTS WebSocket agents connected; a configuration PUT for all of
# them; a rollout started with INITIAL agents in the first wave, growing by MULTIPLIER; the
# wall time from the start request until the rollout is stable, and the part of it that is the
# server's: the total minus the agents' own apply time.
#
#   examples/bench_rollout.sh                         # 19,000 agents, waves 100, 1000, 10000, 7900
#   APPLY_DELAY_MS=0 examples/bench_rollout.sh        # agents apply at once: all of it is overhead
#   AGENTS=2000 examples/bench_rollout.sh             # a quick run
#
# Environment (defaults in brackets): AGENTS [19000], INITIAL [100], MULTIPLIER [10],
# MAXIMUM [AGENTS: no cap on the wave size], MAX_ERRORS [AGENTS / 100: the error limit; the
# agents do not fail unless FAILURE_RATIO is set], FAILURE_RATIO [0], WAVE_TIMEOUT [300 s],
# APPLY_DELAY_MS [500, uniform ±50%, so at most 1.5 × per wave], HEARTBEAT [30],
# CONNECT_RATE [5000], SOURCE_IPS [4], CONFIG_SIZE [5120], SETTLE [5 s after all connected],
# DATA [/tmp/bench-rollout-data], OUT [/tmp/bench-rollout-out], OPAMP [127.0.0.1:4320],
# API [127.0.0.1:4321], BUILD [1].
#
# The rollout is polled every 0.1 s. waves is the number of waves the server started;
# overhead_s = total_s − waves × 1.5 × APPLY_DELAY_MS: each wave waits for its slowest agent,
# which takes at most 1.5 × APPLY_DELAY_MS, so this bounds the server's share from below
# (with many agents per wave the slowest is close to the maximum).
# Prints one key=value per line; logs, the rollout's last state and results stay in $OUT.
set -euo pipefail

AGENTS=${AGENTS:-19000}
INITIAL=${INITIAL:-100}
MULTIPLIER=${MULTIPLIER:-10}
MAXIMUM=${MAXIMUM:-$AGENTS}
MAX_ERRORS=${MAX_ERRORS:-$(( AGENTS / 100 ))}
FAILURE_RATIO=${FAILURE_RATIO:-0}
WAVE_TIMEOUT=${WAVE_TIMEOUT:-300}
APPLY_DELAY_MS=${APPLY_DELAY_MS:-500}
HEARTBEAT=${HEARTBEAT:-30}
CONNECT_RATE=${CONNECT_RATE:-5000}
SOURCE_IPS=${SOURCE_IPS:-4}
CONFIG_SIZE=${CONFIG_SIZE:-5120}
SETTLE=${SETTLE:-5}
DATA=${DATA:-/tmp/bench-rollout-data}
OUT=${OUT:-/tmp/bench-rollout-out}

cd "$(dirname "$0")/.."
source examples/bench_lib.sh
bench_setup

start_server "$HEARTBEAT"
start_sim --server "ws://$OPAMP/v1/opamp" --agents "$AGENTS" --connect-rate "$CONNECT_RATE" \
    --source-ips "$SOURCE_IPS" --config-size "$CONFIG_SIZE" --apply-delay-ms "$APPLY_DELAY_MS" \
    --apply-delay-dist uniform --failure-ratio "$FAILURE_RATIO"
wait_connected "$AGENTS"
# Full reports stored, every agent on its steady heartbeat.
sleep "$SETTLE"

put_configuration fleet "" "$CONFIG_SIZE" > "$OUT/configuration.json"
C0=$(cpu_ticks "$SERVER"); S0=$(cpu_ticks "$SIM")
T0=$(now)
api POST /api/v1/rollouts "{\"configuration\":\"fleet\",\"initial\":$INITIAL,\"multiplier\":$MULTIPLIER,\"maximum\":$MAXIMUM,\"max_errors\":$MAX_ERRORS,\"wave_timeout_seconds\":$WAVE_TIMEOUT}" > "$OUT/rollout-start.json"
ROLLOUT=$(json_field id < "$OUT/rollout-start.json")
# As wait_rollout, also noting when each wave starts and how many agents completed by then.
: > "$OUT/waves.txt"
LAST_WAVE=-1
while true; do
    R=$(api GET "/api/v1/rollouts/$ROLLOUT" || true)
    STATE=$(json_field state <<< "$R")
    WAVE=$(json_field wave <<< "$R")
    if [ -n "$WAVE" ] && [ "$WAVE" != "$LAST_WAVE" ]; then
        echo "$(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') wave=$WAVE completed=$(json_field completed <<< "$R")" >> "$OUT/waves.txt"
        LAST_WAVE=$WAVE
    fi
    case "$STATE" in stable|error|cancelled|replaced) break ;; esac
    if awk -v a="$T0" -v b="$(now)" 'BEGIN { exit !(b - a > 1200) }'; then
        echo "rollout not finished within 1200 s (state: $STATE)" >&2
        exit 1
    fi
    sleep 0.1
done
T1=$(now)
printf '%s\n' "$R" > "$OUT/rollout.json"
C1=$(cpu_ticks "$SERVER"); S1=$(cpu_ticks "$SIM")
RSS=$(rss_kb "$SERVER")
STILL_CONNECTED=$(connected)
stop_sim
stop_server

R=$(cat "$OUT/rollout.json")
SUMMARY=$(cat "$OUT/simulate.json")
awk -v agents="$AGENTS" -v initial="$INITIAL" -v mult="$MULTIPLIER" -v maximum="$MAXIMUM" \
    -v maxerr="$MAX_ERRORS" -v delay="$APPLY_DELAY_MS" -v tck="$TCK" -v t0="$T0" -v t1="$T1" \
    -v c0="$C0" -v c1="$C1" -v s0="$S0" -v s1="$S1" -v rss="$RSS" -v still="$STILL_CONNECTED" \
    -v state="$(json_field state <<< "$R")" -v waves="$(json_field wave <<< "$R")" \
    -v total="$(json_field total <<< "$R")" -v completed="$(json_field completed <<< "$R")" \
    -v errors="$(json_field errors <<< "$R")" \
    -v applied="$(json_field configs_applied <<< "$SUMMARY")" \
    -v failed="$(json_field configs_failed <<< "$SUMMARY")" \
    -v resent="$(json_field configs_resent <<< "$SUMMARY")" 'BEGIN {
    t = t1 - t0; maxd = 1.5 * delay / 1000
    printf "agents=%d\ninitial=%d\nmultiplier=%d\nmaximum=%d\nmax_errors=%d\n", agents, initial, mult, maximum, maxerr
    printf "apply_delay_ms=%d\napply_delay_dist=uniform\napply_delay_max_ms=%.0f\n", delay, maxd * 1000
    printf "rollout_state=%s\nwaves=%d\nrollout_total=%d\nrollout_completed=%d\nrollout_errors=%d\n", state, waves, total, completed, errors
    printf "total_s=%.2f\n", t
    printf "overhead_s=%.2f\n", t - waves * maxd
    printf "overhead_per_wave_s=%.2f\n", (waves > 0 ? (t - waves * maxd) / waves : 0)
    printf "server_cpu_during_rollout_s=%.2f\nsimulator_cpu_during_rollout_s=%.2f\n", (c1 - c0) / tck, (s1 - s0) / tck
    printf "rss_after_rollout_kb=%d\nconnected_after_rollout=%d\n", rss, still
    printf "sim_configs_applied=%d\nsim_configs_failed=%d\nsim_configs_resent=%d\n", applied, failed, resent
}' | tee "$OUT/results.txt"
# When each wave (counted from 1) was first seen started, in s after the start request (polled
# every 0.1 s), and how many agents had completed by then.
awk '$2 != "wave=0" { sub(/^wave=/, "", $2); sub(/^completed=/, "", $3); printf "wave_%d_started_by_s=%s completed_then=%s\n", $2, $1, $3 }' "$OUT/waves.txt" | tee -a "$OUT/results.txt"
