#!/usr/bin/env bash
# Brings up N Warbler nodes on 127.0.0.1 as one cluster, for development and demos.
#
#   cluster/local.sh up 3        # node 1 initialises the cluster, nodes 2..N join it over mutual TLS
#   cluster/local.sh status      # warbler cluster status, as node 1 sees it
#   cluster/local.sh down        # stops every node (data stays in cluster/.local)
#   cluster/local.sh clean       # stops and deletes the data
#
# Node i listens for clients on 74i0 (TCP) and 74i1 (WebSocket), for peers on 75i0; data in cluster/.local/nI.
# Create accounts before `up` with: echo PASSWORD | .build/release/warbler user add NAME --data cluster/.local/n1
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${WARBLER:-$ROOT/.build/release/warbler}"
DIR="$ROOT/cluster/.local"

build() { [ -x "$BIN" ] || make -C "$ROOT" build; }

up() {
  local count="${1:-3}"
  build
  mkdir -p "$DIR"
  for i in $(seq 1 "$count"); do
    local data="$DIR/n$i" join=()
    if [ "$i" -gt 1 ]; then
      [ -f "$data/certs/node.pem" ] || "$BIN" cert issue --node "$i" --ca "$DIR/n1/ca" --out "$data/certs" >/dev/null
      [ -d "$data/db" ] || join=(--join 127.0.0.1:7510)
    fi
    "$BIN" serve --data "$data" --node-id "$i" --port "74${i}0" --websocket-port "74${i}1" --peer-port "75${i}0" \
      "${join[@]}" >"$DIR/n$i.log" 2>&1 &
    echo $! >"$DIR/n$i.pid"
    echo "node $i: clients 127.0.0.1:74${i}0, ws 74${i}1, peers 75${i}0, log $DIR/n$i.log"
    # Node 1 must exist (it creates the CA) before the others are issued certificates and join.
    if [ "$i" -eq 1 ]; then
      for _ in $(seq 1 100); do [ -f "$DIR/n1/ca/ca.pem" ] && break; sleep 0.1; done
    fi
  done
}

down() {
  for pidfile in "$DIR"/n*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

status() { "$BIN" cluster status --peer 127.0.0.1:7510 --certs "$DIR/n1/certs" "$@"; }

case "${1:-}" in
  up) up "${2:-3}" ;;
  down) down ;;
  status) shift; status "$@" ;;
  clean) down; rm -rf "$DIR" ;;
  *) echo "usage: $0 up [N] | status [--json] | down | clean" >&2; exit 2 ;;
esac
