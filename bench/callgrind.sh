#!/usr/bin/env bash
# Counts the instructions a node executes per acknowledged message: a figure that does not drift with the VM, for
# before/after comparisons of CPU work that timed runs cannot resolve (their spread is ±10% here).
#
#   bench/callgrind.sh [DIR] [-- BENCH ARGS]
#   bench/callgrind.sh /tmp/after -- --senders 1 --window 256
#
# DIR holds `warbler` and `warbler-bench` (default .build/release). One node runs under valgrind's callgrind with
# fresh data; `warbler-bench --target` drives it (any scenario that sends, any load options; default pairs, one
# sender, W=256).
# Once the load runs, the script counts WINDOW seconds (default 20) and prints the node's instructions per
# message (the posts applied in the window), per thread (apply, Raft, client connections), and the TOP
# (default 40) functions that cost most per message, inclusive. The profiles stay in OUT (default a new folder
# under /tmp), one per thread, for `callgrind_annotate` or KCachegrind.
#
# PROFILE=bench profiles the other side instead: the node runs natively and `warbler-bench` — the Swift SDK's
# client connections — runs under callgrind, counted per frame it receives (acks and pushes).
#
# Read it as a count of work, not of time: the node runs ~50× slower under callgrind, one thread at a time, so
# rounds hold more messages than at full speed, timers fire more often per message, and nothing here sees
# waiting, cache misses or two threads contending. Two runs of one build differ by about 2%. A change that saves
# instructions is a gain only if `bench/compare.sh` agrees (docs/performance.md has one that did not).
set -euo pipefail
BIN=".build/release"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then BIN="$1"; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
BENCH_ARGS=("$@")
[ ${#BENCH_ARGS[@]} -gt 0 ] || BENCH_ARGS=(--senders 1 --window 256)
WINDOW="${WINDOW:-20}"
PROFILE="${PROFILE:-node}"
case "$PROFILE" in node | bench) ;; *) echo "PROFILE is node or bench" >&2; exit 2 ;; esac
TOP="${TOP:-40}"
OUT="${OUT:-$(mktemp -d /tmp/warbler-callgrind.XXXXXX)}"
PASSWORD="callgrind-bench-password"
CC="${CC:-$(command -v clang || command -v cc || true)}"
for tool in valgrind callgrind_control callgrind_annotate objcopy "$CC"; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh needs $tool (apt-get install valgrind binutils gcc)" >&2; exit 2; }
done
mkdir -p "$OUT"
NODE="" BENCH=""
cleanup() {
  [ -n "$BENCH" ] && kill "$BENCH" 2>/dev/null || true
  [ -n "$NODE" ] && kill "$NODE" 2>/dev/null && wait "$NODE" 2>/dev/null || true
  rm -rf "$OUT/data"
}
trap cleanup EXIT

# Valgrind 3.19 cannot read the DWARF 5 that Swift 6 writes: profile a copy without debug sections (the symbol
# table stays, so functions keep their names).
objcopy --strip-debug "$BIN/warbler" "$OUT/warbler"
objcopy --strip-debug "$BIN/warbler-bench" "$OUT/warbler-bench"
# Swift's async main ends in dispatch_main, which leaves the main thread with pthread_exit; callgrind crashes on
# that. This preloaded replacement drains the main queue on the main thread instead.
cat > "$OUT/mainqueue.c" <<'C'
#include <poll.h>
#include <stdint.h>
#include <unistd.h>
extern void *_dispatch_get_main_queue_handle_4CF(void);
extern void _dispatch_main_queue_callback_4CF(void *message);
void dispatch_main(void) {
    int fd = (int)(intptr_t)_dispatch_get_main_queue_handle_4CF();
    for (;;) {
        struct pollfd ready = {fd, POLLIN, 0};
        poll(&ready, 1, -1);
        uint64_t count;
        (void)!read(fd, &count, sizeof count);
        _dispatch_main_queue_callback_4CF(0);
    }
}
C
DISPATCH="$(dirname "$(ldd "$OUT/warbler" | awk '/libdispatch/ {print $3}')")"
"$CC" -O2 -shared -fPIC -o "$OUT/mainqueue.so" "$OUT/mainqueue.c" -L"$DISPATCH" -Wl,-rpath,"$DISPATCH" -ldispatch

# The accounts the bench signs in as, from the bench itself.
mapfile -t users < <("$BIN/warbler-bench" --print-accounts "${BENCH_ARGS[@]}")
echo "$PASSWORD" | "$BIN/warbler" user add "${users[@]}" --data "$OUT/data" > /dev/null

PORT=$((20000 + RANDOM % 10000))
# profiled SIDE COMMAND…: becomes COMMAND, under callgrind when SIDE is the one profiled (run it with `&`: the
# background shell's process id, $!, is then the command's).
profiled() {
  if [ "$1" = "$PROFILE" ]; then
    shift
    exec env LD_PRELOAD="$OUT/mainqueue.so" valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
      --callgrind-out-file="$OUT/callgrind.out" "$@"
  fi
  shift
  exec "$@"
}
profiled node "$OUT/warbler" serve --data "$OUT/data" --port "$PORT" --websocket-port $((PORT + 1)) \
  --peer-port $((PORT + 2)) --log-level warning > "$OUT/node.log" 2>&1 &
NODE=$!
for _ in $(seq 600); do
  (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$NODE" 2>/dev/null || { cat "$OUT/node.log" >&2; exit 1; }
  sleep 0.5
done
profiled bench "$OUT/warbler-bench" --target "127.0.0.1:$PORT" --password "$PASSWORD" --warm-up 1 \
  --seconds 100000 "${BENCH_ARGS[@]}" > /dev/null 2> "$OUT/bench.log" &
BENCH=$!
PROFILED=$NODE
[ "$PROFILE" = bench ] && PROFILED=$BENCH
for _ in $(seq 600); do
  grep -q 'measuring' "$OUT/bench.log" && break
  kill -0 "$BENCH" 2>/dev/null || { cat "$OUT/bench.log" >&2; exit 1; }
  sleep 0.5
done
grep -q 'measuring' "$OUT/bench.log" || { echo "the bench never started measuring" >&2; exit 1; }
control() { # control OPTION…: callgrind_control OPTION… on the profiled process, or stop with what it said
  callgrind_control "$@" "$PROFILED" >> "$OUT/control.log" 2>&1 || { cat "$OUT/control.log" >&2; exit 1; }
}
# Instrumenting starts cold (valgrind translates the code again); let that pass before counting.
control -i on
sleep 5
control -z
sleep "$WINDOW"
control -d
kill "$BENCH"; BENCH=""

# One profile per thread (callgrind.out.1-NN): the units of work counted (the node's applied posts, the bench's
# received frames) and the instructions of each thread, then the functions that cost most per unit, inclusive.
python3 - "$OUT" "$TOP" "$WINDOW" "$PROFILE" <<'PY'
import glob, os, re, subprocess, sys
out, top, window, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
files = sorted(glob.glob(os.path.join(out, "callgrind.out.1-*")))
if profile == "node":
    UNIT, UNITS = "StateMachineV11postMessage", ("message", "messages")  # ChatStateMachine.postMessage
    # Each thread is named after the first of these it spends most in (inclusive), else "other".
    ROLES = [("apply", "RaftHost.apply("), ("raft", "RaftHost.runRound()"),
             ("client connections", "ClientChannelHandler.channelRead("), ("timers", "RaftHost.tick()")]
else:
    UNIT, UNITS = "FrameCodecO012decodeServer", ("frame received", "frames received")  # FrameCodec.decodeServerFrame
    ROLES = [("event loops", "SelectableEventLoop.run()")]

def annotate(path):
    """The thread's total and its functions' inclusive costs: (cost, mangled name, library), costliest first."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True).stdout
    total = re.search(r"^\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text, re.M)
    rows = re.findall(r"^\s*([\d,]+) \([\d.]+%\)\s+\S+?:(.+?) \[(.+)\]$", text.split("file:function", 1)[-1], re.M)
    return (int(total.group(1).replace(",", "")) if total else 0,
            [(int(c.replace(",", "")), name, lib) for c, name, lib in rows[:400]])

def posts(path):
    names, count, pending = {}, 0, False
    for line in open(path, errors="replace"):
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(2): names[m.group(1)] = m.group(2)
            pending = line.startswith("cfn=") and UNIT in names.get(m.group(1), "")
        elif pending and line.startswith("calls="):
            count += int(line[6:].split()[0]); pending = False
    return count

messages = sum(posts(f) for f in files)
if messages == 0: sys.exit(f"no {UNITS[0]} was counted in the window")
profiles = [annotate(f) for f in files]
# Every thread's function names demangled in one call.
mangled = [name for _, rows in profiles for _, name, _ in rows]
demangled = dict(zip(mangled, subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(mangled),
                                             capture_output=True, text=True).stdout.splitlines()))
threads, merged = {}, {}
for total, rows in profiles:
    named = [(cost, demangled.get(name, name), lib.rsplit("/", 1)[-1]) for cost, name, lib in rows]
    costs = {label: max((c for c, n, _ in named if marker in n), default=0) for label, marker in ROLES}
    role = max(costs, key=costs.get) if max(costs.values()) > 0 else "other"
    threads[role] = threads.get(role, 0) + total
    for cost, name, lib in named:
        if re.search(r"'\d+$", name): continue  # callgrind's name for a recursive call: counted under the first
        merged[(name, lib)] = merged.get((name, lib), 0) + cost
everything = sum(threads.values())
print(f"{profile}: {everything:,} instructions in {window} s, {messages:,} {UNITS[1]}: "
      f"{everything // messages:,} instructions per {UNITS[0]}")
for role, cost in sorted(threads.items(), key=lambda t: -t[1]):
    print(f"  {role:<20} {cost // messages:>9,} per {UNITS[0]}  {100 * cost / everything:5.1f}%")
if top:
    print(f"{'per ' + UNITS[0]:>12}  {'share':>6}  function (inclusive, every thread)")
    for (name, lib), cost in sorted(merged.items(), key=lambda t: -t[1])[:top]:
        print(f"{cost // messages:>12,}  {100 * cost / everything:5.1f}%  {name[:110]} [{lib}]")
PY
echo "profiles: $OUT/callgrind.out.1-* (one per thread; callgrind_annotate or KCachegrind); the bench's output: $OUT/bench.log"
