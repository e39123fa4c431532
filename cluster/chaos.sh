#!/usr/bin/env bash
# Chaos run: a 3-node cluster across three netem "regions" (cluster/regions.sh), warbler-bench sending through
# every node with retries, and random kill -9 / SIGSTOP / network isolation of nodes; then warbler-bench checks
# that every acknowledged message is on every node, gap-free and in one order. Needs root. Exit status 0 = ok.
#
#   cluster/chaos.sh [SECONDS]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
"$HERE/regions.sh" down >/dev/null 2>&1 || true
rm -rf "$HERE/.regions"
trap '"$HERE/regions.sh" down >/dev/null 2>&1 || true' EXIT
"$HERE/regions.sh" up 3
"$HERE/regions.sh" chaos "${1:-60}"
