#!/usr/bin/env bash
# A flood of throwaway agents, then their deletion: does the server give the memory back?
#
#   examples/bench_flood.sh                   # 10,000 plain-HTTP agents, two rounds
#   AGENTS=2000 ROUNDS=1 examples/bench_flood.sh
#
# Environment (defaults in brackets): AGENTS [10000] (each a new instance uid, as a client that
# invents one per start), ROUNDS [2], TRANSPORT [http; or ws], CONNECT_RATE [5000 agents/s],
# SETTLE [5 s after the deletion, for freed pages to go back to the kernel], DATA
# [/tmp/bench-flood-data], OUT [/tmp/bench-flood-out], OPAMP [127.0.0.1:4320], API
# [127.0.0.1:4321], BUILD [1: cargo build --release first].
#
# Steps, per round: start the simulator; wait until every agent is connected; stop it (the
# agents say goodbye); read the server's RSS; delete every agent with one bulk delete
# (selector "", expected_count AGENTS); wait SETTLE seconds; read the RSS again and the
# fleet's total (expected 0). Prints one key=value per line; the RSS before any agent came is
# rss_empty_kb.
set -euo pipefail

AGENTS=${AGENTS:-10000}
ROUNDS=${ROUNDS:-2}
TRANSPORT=${TRANSPORT:-http}
CONNECT_RATE=${CONNECT_RATE:-5000}
SETTLE=${SETTLE:-5}
DATA=${DATA:-/tmp/bench-flood-data}
OUT=${OUT:-/tmp/bench-flood-out}

cd "$(dirname "$0")/.."
source examples/bench_lib.sh
bench_setup

start_server 30
sleep 1
echo "agents=$AGENTS"
echo "rss_empty_kb=$(rss_kb "$SERVER")"
for round in $(seq "$ROUNDS"); do
    start_sim --server "$TRANSPORT://$OPAMP/v1/opamp" --agents "$AGENTS" \
        --connect-rate "$CONNECT_RATE" --source-ips 1
    wait_connected "$AGENTS"
    stop_sim
    sleep 1
    echo "round${round}_rss_flooded_kb=$(rss_kb "$SERVER")"
    start=$(now)
    body="{\"selector\":\"\",\"expected_count\":$AGENTS}"
    api POST /api/v1/agents/delete "$body" > "$OUT/delete-$round.json"
    echo "round${round}_deleted=$(json_field done < "$OUT/delete-$round.json")"
    echo "round${round}_delete_s=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
    sleep "$SETTLE"
    echo "round${round}_rss_after_delete_kb=$(rss_kb "$SERVER")"
    echo "round${round}_fleet_total=$(api GET /api/v1/fleet | json_field total)"
done
echo "db_bytes=$(du -cb "$DATA"/corral.db* | tail -1 | cut -f1)"
