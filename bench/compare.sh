#!/usr/bin/env bash
# Compares builds fairly on a noisy machine: runs the same warbler-bench command against each build in turn,
# ROUNDS times (A B C A B C …, so drift over time hits every build alike), then prints per build the median and
# range of acks/s and the medians of deliveries/s, ack p50/p99, delivery p99, the first server's CPU and the bench's.
#
#   bench/compare.sh ROUNDS "BENCH ARGS" DIR [DIR …]
#   bench/compare.sh 5 "--spawn single --senders 1 --window 256 --seconds 6" /tmp/before /tmp/after
#
# Each DIR holds a `warbler-bench` and the `warbler` it spawns (copy both from .build/release/ after each build).
# Label a build with LABEL=DIR. Extra environment for one build: LABEL=DIR:NAME=VALUE[,NAME=VALUE…].
#
# Then, for each build after the first, a paired comparison with the first: the ratio of their acks/s in each
# round (run minutes apart, so the machine's drift mostly cancels), its median and range, in how many rounds the
# build was faster, and the two-sided sign test's p-value for that count (with 4 rounds it is never below 0.125:
# a difference that matters needs more rounds, or a range that excludes 0).
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ROUNDS="$1"
ARGS="$2"
shift 2
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# Each build's label, directory and extra environment, in the order given.
labels=(); dirs=(); envs=()
for spec in "$@"; do
  label="${spec%%=*}"; rest="${spec#*=}"
  [ "$label" = "$spec" ] && { label="$(basename "$spec")"; rest="$spec"; }
  dir="${rest%%:*}"; env=""
  [ "$dir" != "$rest" ] && env="${rest#*:}"
  labels+=("$label"); dirs+=("$dir"); envs+=("$env")
done
for round in $(seq "$ROUNDS"); do
  for build in "${!labels[@]}"; do
    label="${labels[$build]}"
    # shellcheck disable=SC2086 # ARGS is a list of options
    env ${envs[$build]//,/ } "${dirs[$build]}/warbler-bench" $ARGS --json --quiet > "$OUT/run.json"
    python3 - "$OUT/run.json" >> "$OUT/$label.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = d["servers"][0]["cpu_cores"] if d.get("servers") else 0
bench = (d.get("client") or {}).get("cpu_cores", 0)
print(d["acks_per_second"], d["ack"]["p50_us"], d["ack"]["p99_us"], d["delivery"]["p99_us"], cpu, d["deliveries_per_second"], bench)
PY
    echo "round $round/$ROUNDS $label: $(cut -d' ' -f1 < <(tail -1 "$OUT/$label.txt")) acks/s" >&2
  done
done
for label in "${labels[@]}"; do
  python3 - "$OUT/$label.txt" "$label" <<'PY'
import statistics as st, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
acks = sorted(r[0] for r in rows)
med = lambda i: st.median(r[i] for r in rows)
print("%-10s %8.0f acks/s (%.0f – %.0f)  %.0f deliveries/s  ack p50 %.2f ms  p99 %.2f ms  delivery p99 %.2f ms  node %.2f cores  bench %.2f"
      % (sys.argv[2], st.median(acks), acks[0], acks[-1], med(5), med(1) / 1000, med(2) / 1000, med(3) / 1000, med(4), med(6)))
PY
done
for label in "${labels[@]:1}"; do
  python3 - "$OUT/${labels[0]}.txt" "$OUT/$label.txt" "${labels[0]}" "$label" <<'PY'
import math, statistics as st, sys
first = [float(line.split()[0]) for line in open(sys.argv[1])]
other = [float(line.split()[0]) for line in open(sys.argv[2])]
changes = [100 * (b / a - 1) for a, b in zip(first, other) if a > 0]
if not changes:
    sys.exit(0)
faster = sum(1 for c in changes if c > 0)
slower = sum(1 for c in changes if c < 0)
n = faster + slower
# Two-sided sign test over the rounds that differ: the chance of a split at least this uneven if neither build
# were faster.
p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(faster, slower) + 1)) / 2 ** n) if n else 1.0
print("%s vs %s: acks/s %+.1f%% per round (median; %+.1f%% … %+.1f%%), faster in %d of %d rounds, sign test p = %.3g"
      % (sys.argv[4], sys.argv[3], st.median(changes), min(changes), max(changes), faster, len(changes), p))
PY
done
