#!/usr/bin/env bash
# Admin API latency with a large fleet known: AGENTS plain-HTTP agents polling every POLL
# seconds over a bounded pool of client connections, one in LABEL_EVERY carrying the label
# team=payments; then REQUESTS sequential requests each (one curl process and connection per
# request) to the fleet summary, the first page of the agent list and a label filter, timed by curl
# (%{time_total}); median and p99 in ms.
#
#   examples/bench_api.sh                     # 100,000 agents
#   AGENTS=2000 examples/bench_api.sh         # a quick run
#
# Environment (defaults in brackets): AGENTS [100000], POLL [30 s: server --heartbeat-interval
# and the agents' polling interval], CONNECT_RATE [5000 agents/s], HTTP_CONNECTIONS [256],
# LABEL_EVERY [100], CONFIG_SIZE [5120], PAGE [50: limit of the first page], REQUESTS [200],
# SETTLE [10 s after all are connected], DATA [/tmp/bench-api-data], OUT [/tmp/bench-api-out],
# OPAMP [127.0.0.1:4320], API [127.0.0.1:4321], BUILD [1].
#
# The agents keep polling while the API is timed, as in a real fleet (AGENTS / POLL polls per
# second). Also reports the server's open file descriptors and RSS with the fleet connected.
# Prints one key=value per line; logs and each request's time stay in $OUT.
set -euo pipefail

AGENTS=${AGENTS:-100000}
POLL=${POLL:-30}
CONNECT_RATE=${CONNECT_RATE:-5000}
HTTP_CONNECTIONS=${HTTP_CONNECTIONS:-256}
LABEL_EVERY=${LABEL_EVERY:-100}
CONFIG_SIZE=${CONFIG_SIZE:-5120}
PAGE=${PAGE:-50}
REQUESTS=${REQUESTS:-200}
SETTLE=${SETTLE:-10}
DATA=${DATA:-/tmp/bench-api-data}
OUT=${OUT:-/tmp/bench-api-out}

cd "$(dirname "$0")/.."
source examples/bench_lib.sh
bench_setup

start_server "$POLL"
RSS_BEFORE=$(rss_kb "$SERVER")
T0=$(now)
start_sim --server "http://$OPAMP/v1/opamp" --agents "$AGENTS" --connect-rate "$CONNECT_RATE" \
    --heartbeat-seconds "$POLL" --http-connections "$HTTP_CONNECTIONS" \
    --config-size "$CONFIG_SIZE" --label-every "$LABEL_EVERY:team=payments"
wait_connected "$AGENTS" 900
T1=$(now)
sleep "$SETTLE"

# time_requests NAME PATH: REQUESTS sequential GETs, one curl each; each time in ms to
# $OUT/NAME.ms; prints "median p99 bytes".
time_requests() {
    local name=$1 path=$2 auth
    auth=$(api_auth)
    for _ in $(seq "$REQUESTS"); do
        curl -s -o /dev/null -H "$auth" -w '%{time_total} %{size_download} %{http_code}\n' "http://$API$path"
    done > "$OUT/$name.raw"
    if awk '$3 != 200 { bad = 1 } END { exit !bad }' "$OUT/$name.raw"; then
        echo "$name: some requests did not answer 200 (see $OUT/$name.raw)" >&2
        return 1
    fi
    awk '{ printf "%.3f\n", $1 * 1000 }' "$OUT/$name.raw" > "$OUT/$name.ms"
    echo "$(percentiles < "$OUT/$name.ms") $(awk 'END { print $2 }' "$OUT/$name.raw")"
}

LABELLED=$(api GET "/api/v1/agents?label=team%3Dpayments&limit=1" | json_field total)
read -r FLEET_MED FLEET_P99 FLEET_BYTES <<< "$(time_requests fleet /api/v1/fleet)"
read -r PAGE_MED PAGE_P99 PAGE_BYTES <<< "$(time_requests first_page "/api/v1/agents?limit=$PAGE")"
read -r LABEL_MED LABEL_P99 LABEL_BYTES <<< "$(time_requests label_filter "/api/v1/agents?label=team%3Dpayments&limit=$PAGE")"

FDS=$(open_fds "$SERVER")
RSS=$(rss_kb "$SERVER")
FLEET=$(api GET /api/v1/fleet)
STILL_CONNECTED=$(connected)
stop_sim
stop_server

{
    echo "agents=$AGENTS"
    echo "poll_interval_s=$POLL"
    echo "http_connections=$HTTP_CONNECTIONS"
    echo "time_to_all_connected_s=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.2f", b - a }')"
    echo "fleet_total=$(json_field total <<< "$FLEET")"
    echo "connected_during_requests=$STILL_CONNECTED"
    echo "labelled_agents=$LABELLED"
    echo "requests_each=$REQUESTS"
    echo "fleet_summary_median_ms=$FLEET_MED"
    echo "fleet_summary_p99_ms=$FLEET_P99"
    echo "fleet_summary_bytes=$FLEET_BYTES"
    echo "first_page_limit=$PAGE"
    echo "first_page_median_ms=$PAGE_MED"
    echo "first_page_p99_ms=$PAGE_P99"
    echo "first_page_bytes=$PAGE_BYTES"
    echo "label_filter_median_ms=$LABEL_MED"
    echo "label_filter_p99_ms=$LABEL_P99"
    echo "label_filter_bytes=$LABEL_BYTES"
    echo "server_open_fds=$FDS"
    echo "rss_before_kb=$RSS_BEFORE"
    echo "rss_kb=$RSS"
    echo "rss_per_agent_bytes=$(( (RSS - RSS_BEFORE) * 1024 / AGENTS ))"
} | tee "$OUT/results.txt"
