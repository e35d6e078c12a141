#!/usr/bin/env bash
# Build the OpenTelemetry Collector distribution (tests/collector) and the OpAMP supervisor
# (tests/collector/supervisor) that the collector tests run, into a cache outside the work tree:
#   ${CORRAL_CI_CACHE:-$HOME/.cache/corral-ci}/collector/<hash>/{otelcol-corral,opampsupervisor}
# The hash covers both modules' go.mod and go.sum, main.go and the Go version, so a change to
# any of them builds anew and an unchanged tree reuses the binaries without running the go
# command's build at all. Go's own build and module caches are used as they are set up, so a
# rebuild after a small change is quick too.
#
# Run from the repository root. Build output goes to stderr; the last two lines of stdout are
# the collector's path, then the supervisor's. With --cached it builds nothing: it prints the
# paths if the binaries for the current sources are there, and exits 3 if they are not.
set -euo pipefail
cached_only=false
case "${1:-}" in
    "") ;;
    --cached) cached_only=true ;;
    *) echo "usage: tests/collector/build.sh [--cached]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/../.."
src=tests/collector

if ! command -v go >/dev/null 2>&1; then
    echo "collector build: go is not on PATH" >&2
    exit 1
fi

hash=$(
    {
        go version
        cat "$src/go.mod" "$src/go.sum" "$src/main.go" \
            "$src/supervisor/go.mod" "$src/supervisor/go.sum"
    } | sha256sum | cut -c1-16
)
root="${CORRAL_CI_CACHE:-$HOME/.cache/corral-ci}/collector"
out="$root/$hash"
collector="$out/otelcol-corral"
supervisor="$out/opampsupervisor"

if [ -x "$collector" ] && [ -x "$supervisor" ]; then
    echo "collector build: up to date in $out" >&2
elif $cached_only; then
    echo "collector build: not built for these sources (run tests/collector/build.sh)" >&2
    exit 3
else
    mkdir -p "$root"
    # Build into a fresh directory and move it into place whole, so an interrupted build never
    # leaves a half-written binary under the final name.
    tmp=$(mktemp -d "$root/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    flags=(-mod=readonly -trimpath -ldflags=-s\ -w)
    echo "collector build: otelcol-corral ($(go version))" >&2
    (cd "$src" && go build "${flags[@]}" -o "$tmp/otelcol-corral" .) >&2
    echo "collector build: opampsupervisor" >&2
    (cd "$src/supervisor" && go build "${flags[@]}" -o "$tmp/opampsupervisor" \
        github.com/open-telemetry/opentelemetry-collector-contrib/cmd/opampsupervisor) >&2
    rm -rf "$out"
    mv "$tmp" "$out"
    trap - EXIT
    # Binaries of other hashes are stale: keep only the current one.
    find "$root" -mindepth 1 -maxdepth 1 -type d ! -name "$hash" -exec rm -rf {} + >&2
    echo "collector build: built into $out" >&2
fi

echo "$collector"
echo "$supervisor"
