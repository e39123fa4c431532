#!/usr/bin/env bash
# Catch-up under load: three nodes on 127.0.0.1 with a small compaction threshold, warbler-bench sending with
# --verify through all three, node 3 stopped (SIGSTOP) for a while in the middle, then resumed. Prints how many
# snapshots the leader made for it and the bench's verification (every acknowledged message on every node).
#
#   cluster/catchup.sh [SECONDS_STOPPED] [COMPACT_AFTER]     # defaults: 10 s, 2000 entries
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${WARBLER:-$ROOT/.build/release/warbler}"
BENCH="${WARBLER_BENCH:-$ROOT/.build/release/warbler-bench}"
DIR="$ROOT/cluster/.catchup"
STOPPED="${1:-10}"
COMPACT="${2:-2000}"
[ -x "$BIN" ] && [ -x "$BENCH" ] || make -C "$ROOT" build
rm -rf "$DIR"
mkdir -p "$DIR"
# Every node is stopped, even when one of them already exited (set +e: a failed kill must not end the trap).
trap 'set +e; for i in 1 2 3; do [ -f "$DIR/n$i.pid" ] && kill -CONT "$(cat "$DIR/n$i.pid")" 2>/dev/null; \
  [ -f "$DIR/n$i.pid" ] && kill "$(cat "$DIR/n$i.pid")" 2>/dev/null; done; true' EXIT
# The accounts the bench signs in as, from the bench itself.
mapfile -t users < <("$BENCH" --print-accounts --senders 1)
echo "bench-password-not-secret" | "$BIN" user add "${users[@]}" --data "$DIR/n1" >/dev/null
start() {
  local i="$1"
  shift
  "$BIN" serve --data "$DIR/n$i" --node-id "$i" --port "176${i}0" --websocket-port "176${i}1" \
    --peer-port "177${i}0" --compact-after "$COMPACT" "$@" >>"$DIR/n$i.log" 2>&1 &
  echo $! >"$DIR/n$i.pid"
}
start 1
for _ in $(seq 1 100); do [ -f "$DIR/n1/ca/ca.pem" ] && break; sleep 0.1; done
for i in 2 3; do
  "$BIN" cert issue --node "$i" --ca "$DIR/n1/ca" --out "$DIR/n$i/certs" >/dev/null
  start "$i" --join 127.0.0.1:17710
done
sleep 6
"$BENCH" --target 127.0.0.1:17610,127.0.0.1:17620,127.0.0.1:17630 --senders 1 --window 64 \
  --seconds $((STOPPED + 20)) --verify >"$DIR/bench.txt" 2>&1 &
bench=$!
sleep 8
kill -STOP "$(cat "$DIR/n3.pid")"
echo "node 3 stopped for $STOPPED s"
sleep "$STOPPED"
kill -CONT "$(cat "$DIR/n3.pid")"
echo "node 3 resumed"
status=0
wait "$bench" || status=$?
grep -E "verified|^acks " "$DIR/bench.txt" || true
echo "snapshots made for members (beyond the first few entries):"
grep -h "made a snapshot" "$DIR"/n*.log | grep -v "raft.index=[0-9] " || true
exit "$status"
