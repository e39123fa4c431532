#!/usr/bin/env bash
# Three "regions" on one machine: network namespaces joined by a bridge, with delays between them, and a
# Warbler cluster across them (one node per region, or 5 nodes: 2+2+1). Needs root (ip netns) and python3.
# The delays come from cluster/delay-proxy.py on every peer path: this VM's kernel has no sch_netem.
#
#   cluster/regions.sh up [3|5]     # namespaces, delays, nodes (node 1 initialises, the others join)
#   cluster/regions.sh status       # warbler cluster status from node 1
#   cluster/regions.sh measure      # commit (ack) latency through each region's node, W=1, one sender
#   cluster/regions.sh isolate N    # cut node N off the bridge (a minority partition); `heal N` undoes it
#   cluster/regions.sh chaos [S]    # S seconds of kill -9 / SIGSTOP / isolation under a verified load
#   cluster/regions.sh down         # stops the nodes, deletes namespaces and bridge (data stays in cluster/.regions)
#
# Round trips: eu<->us 40 ms, eu<->ap 90 ms, us<->ap 150 ms (half each way, on every peer connection).
# Node i: namespace wnI, clients 10.77.0.I:7400, peers advertised 10.77.0.I:7500 (listener 10.78.0.I:7500).
# WARBLER_SERVE_ARGS adds arguments to every `warbler serve` (e.g. "--compact-after 200": restarted nodes then
# catch up from snapshots).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${WARBLER:-$ROOT/.build/release/warbler}"
BENCH="${WARBLER_BENCH:-$ROOT/.build/release/warbler-bench}"
DIR="$ROOT/cluster/.regions"
BRIDGE=wbr0
declare -A REGION=([1]=eu [2]=us [3]=ap [4]=eu [5]=us)
# One-way delay in ms between regions (half the round trip).
declare -A DELAY=([eu-us]=20 [us-eu]=20 [eu-ap]=45 [ap-eu]=45 [us-ap]=75 [ap-us]=75)

nodes() { cat "$DIR/size" 2>/dev/null || echo 3; }

network() {
  local count="$1"
  ip link add "$BRIDGE" type bridge 2>/dev/null || true
  ip addr add 10.77.0.254/24 dev "$BRIDGE" 2>/dev/null || true  # the host reaches every node (bench, chaos)
  ip link set "$BRIDGE" up
  for i in $(seq 1 "$count"); do
    ip netns add "wn$i"
    ip link add "wn$i-br" type veth peer name eth0 netns "wn$i"
    ip link set "wn$i-br" master "$BRIDGE" up
    ip -n "wn$i" addr add "10.77.0.$i/24" dev eth0   # clients, and the address other nodes dial
    ip -n "wn$i" addr add "10.78.0.$i/24" dev eth0   # where the node's peer listener really is
    ip -n "wn$i" link set eth0 up
    ip -n "wn$i" link set lo up
    # Answer ARP only for addresses on the asking interface: the proxy aliases on lo must not attract traffic.
    ip netns exec "wn$i" sh -c 'echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore; echo 2 >/proc/sys/net/ipv4/conf/all/arp_announce' 
  done
  # Delays: inside namespace i, every other node's advertised peer address 10.77.0.j:7500 is a local delay proxy
  # to its real listener 10.78.0.j:7500 (this VM's kernel has no sch_netem, so tc netem cannot add them).
  for i in $(seq 1 "$count"); do
    for j in $(seq 1 "$count"); do
      [ "$i" = "$j" ] && continue
      local from="${REGION[$i]}" to="${REGION[$j]}" ms=0
      [ "$from" != "$to" ] && ms="${DELAY[$from-$to]}"
      ip -n "wn$i" addr add "10.77.0.$j/32" dev lo
      ip netns exec "wn$i" python3 "$ROOT/cluster/delay-proxy.py" "10.77.0.$j:7500" "10.78.0.$j:7500" "$ms" \
        >>"$DIR/proxies.log" 2>&1 &
      echo $! >>"$DIR/proxies.pid"
    done
  done
}

start_node() {
  local i="$1" data="$DIR/n$1" join=()
  if [ "$i" -gt 1 ]; then
    [ -f "$data/certs/node.pem" ] || "$BIN" cert issue --node "$i" --ca "$DIR/n1/ca" --out "$data/certs" \
      --host "10.77.0.$i" >/dev/null
    [ -d "$data/db" ] || join=(--join 10.78.0.1:7500)
  elif [ ! -d "$data/db" ]; then
    # The accounts warbler-bench's pairs scenario signs in as with 8 senders (the most this script runs), from
    # the bench itself.
    mapfile -t users < <("$BENCH" --print-accounts --senders 8)
    echo "bench-password-not-secret" | "$BIN" user add "${users[@]}" --data "$data" >/dev/null
  fi
  ip netns exec "wn$i" "$BIN" serve --data "$data" --node-id "$i" --host "10.77.0.$i" --peer-host "10.78.0.$i" \
    --region "${REGION[$i]}" "${join[@]}" ${WARBLER_SERVE_ARGS:-} >>"$DIR/n$i.log" 2>&1 &
  echo $! >"$DIR/n$i.pid"
}

up() {
  local count="${1:-3}"
  [ -x "$BIN" ] && [ -x "$BENCH" ] || make -C "$ROOT" build
  mkdir -p "$DIR"
  echo "$count" >"$DIR/size"
  network "$count"
  for i in $(seq 1 "$count"); do
    start_node "$i"
    echo "node $i (${REGION[$i]}): 10.77.0.$i:7400, log $DIR/n$i.log"
    if [ "$i" -eq 1 ]; then for _ in $(seq 1 100); do [ -f "$DIR/n1/ca/ca.pem" ] && break; sleep 0.1; done; fi
  done
}

# Kills, freezes and cuts off random nodes while warbler-bench sends through every node with retries, then
# checks that every acknowledged message is on every node, gap-free and in one order.
chaos() {
  local seconds="${1:-60}" count targets="" pid
  count="$(nodes)"
  for i in $(seq 1 "$count"); do targets="$targets${targets:+,}10.77.0.$i:7400"; done
  wait_formed "$count"
  "$BENCH" --target "$targets" --senders 8 --window 1 --seconds "$seconds" --verify &
  pid=$!
  # Stop disturbing the nodes early enough that the last one is back before the load ends and the check begins.
  local deadline=$((SECONDS + seconds - 8))
  while [ "$SECONDS" -lt "$deadline" ]; do
    sleep $((3 + RANDOM % 4))
    local victim=$((1 + RANDOM % count))
    case $((RANDOM % 3)) in
      0) echo "chaos: kill -9 node $victim"; kill -9 "$(cat "$DIR/n$victim.pid")" 2>/dev/null || true; sleep 3
         start_node "$victim"; echo "chaos: node $victim restarted" ;;
      1) echo "chaos: SIGSTOP node $victim"; kill -STOP "$(cat "$DIR/n$victim.pid")"; sleep 3
         kill -CONT "$(cat "$DIR/n$victim.pid")"; echo "chaos: node $victim resumed" ;;
      2) isolate "$victim"; sleep 5; heal "$victim" ;;
    esac
  done
  wait "$pid"
}

# Waits until every group has a leader and all N nodes as members.
wait_formed() {
  local count="$1"
  for _ in $(seq 1 120); do
    if status --json 2>/dev/null | python3 -c '
import json, sys
status = json.load(sys.stdin)
groups = status.get("groups", [])
ok = len(groups) > 1 and all(g.get("leader") and len(g.get("voters", []) + g.get("learners", [])) == int(sys.argv[1]) for g in groups)
sys.exit(0 if ok else 1)' "$count"; then
      echo "the cluster has formed"
      return 0
    fi
    sleep 1
  done
  echo "the cluster did not form" >&2
  return 1
}

status() { ip netns exec wn1 "$BIN" cluster status --peer 10.78.0.1:7500 --certs "$DIR/n1/certs" "$@"; }

measure() {
  for i in $(seq 1 "$(nodes)"); do
    echo "== through node $i (${REGION[$i]})"
    ip netns exec "wn$i" "$BENCH" --target "10.77.0.$i:7400" --senders 1 --window 1 --seconds "${SECONDS_PER_REGION:-10}"
  done
}

isolate() { ip link set "wn$1-br" down; echo "node $1 is cut off"; }
heal() { ip link set "wn$1-br" up; echo "node $1 is back"; }

down() {
  for pidfile in "$DIR"/n*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  if [ -f "$DIR/proxies.pid" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$DIR/proxies.pid"
    rm -f "$DIR/proxies.pid"
  fi
  sleep 1
  for i in 1 2 3 4 5; do
    ip netns del "wn$i" 2>/dev/null || true
    ip link del "wn$i-br" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

case "${1:-}" in
  up) up "${2:-3}" ;;
  status) shift; status "$@" ;;
  measure) measure ;;
  chaos) chaos "${2:-60}" ;;
  isolate) isolate "$2" ;;
  heal) heal "$2" ;;
  down) down ;;
  clean) down; rm -rf "$DIR" ;;
  *) echo "usage: $0 up [3|5] | status [--json] | measure | chaos [S] | isolate N | heal N | down | clean" >&2
     exit 2 ;;
esac
