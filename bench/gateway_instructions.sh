#!/usr/bin/env bash
# User-space instructions per proxied request, keytrail beside nginx, counted
# by valgrind's callgrind. Unlike req/s on a shared VM, the count does not
# move with the neighbours' load, so small changes to the hot path can be
# compared run to run. (Kernel time is not counted; the two proxies spend
# about the same there - see BENCHMARKS.md.)
#
#   bash bench/gateway_instructions.sh                 # 10 s of load per proxy
#   BENCH_SMOKE=1 bash bench/gateway_instructions.sh   # 2 s, checks the script works
#   KEYTRAIL_CONFIG=FILE bash bench/gateway_instructions.sh  # keytrail with FILE as --config
#
# Under valgrind, sha2 cannot see the CPU's SHA extensions and uses its
# portable code, so the audit writer's hashing counts several times what it
# costs on the real CPU. The script splits keytrail's count: its client
# connections (hyper's dispatcher, with the handler, the upstream call and
# the event's recording inside) and the rest (above all the audit writer,
# whose share per request also moves with how many events it commits in the
# window). The connections' count repeats within ~0.2 % run to run; use it
# to compare changes to the request path.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
if [ "${BENCH_SMOKE:-0}" = 1 ]; then DURATION=2; fi
for tool in wrk nginx valgrind callgrind_control callgrind_annotate curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/gateway_instructions.sh needs $tool (apt-get install wrk nginx-light valgrind curl)"; exit 1; }
done

cargo build --release --quiet --bin keytrail
BIN=$PWD/target/release/keytrail
WORK=$(mktemp -d /tmp/keytrail-ir.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/up/nginx.pid" ] && kill "$(cat "$WORK/up/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

source bench/common.sh
UP=$(free_port); NGX=$(free_port); KT=$(free_port); KTA=$(free_port)
TEMPS="client_body_temp_path $WORK/b; proxy_temp_path $WORK/p; fastcgi_temp_path $WORK/f; uwsgi_temp_path $WORK/u; scgi_temp_path $WORK/s;"

mkdir -p "$WORK/up/logs" "$WORK/px/logs"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1; pid $WORK/up/nginx.pid; error_log $WORK/up/logs/error.log warn;
events { worker_connections 1024; }
http { $TEMPS access_log off;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '$BODY'; } } }
CONF
# The proxy under test runs in the foreground as one process, so callgrind sees all its work.
cat > "$WORK/px/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $WORK/px/nginx.pid; error_log $WORK/px/logs/error.log warn;
events { worker_connections 1024; }
http { $TEMPS access_log $WORK/px/logs/access.log;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NGX; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"

wait_http() { # url
  for _ in $(seq 600); do curl -s -o /dev/null "$1" && return; sleep 0.1; done
  echo "nothing answers at $1"; exit 1
}

# measure NAME URL HEADER OUTFILE: warm up, zero the counters, load, dump.
measure() {
  local pid=$2
  taskset -c 1 wrk -t1 -c8 -d2s -H "$4" "$3" >/dev/null 2>&1 || true
  callgrind_control -z "$pid" >/dev/null 2>&1
  local out
  out=$(wrk -t1 -c8 -d"${DURATION}s" -H "$4" "$3")
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  if echo "$out" | grep -q "Non-2xx"; then echo "$1 answered errors:"; echo "$out"; exit 1; fi
  local requests file
  requests=$(echo "$out" | grep -o '[0-9]* requests in' | cut -d' ' -f1)
  file=$(ls -t "$WORK/$1".cg.* | head -1)
  python3 - "$1" "$requests" "$file" <<'PY' >> "$WORK/results"
import re, subprocess, sys
name, requests, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path], capture_output=True, text=True).stdout
total, conn = 0, 0
for line in text.splitlines():
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
    if not m:
        continue
    n = int(m.group(1).replace(",", ""))
    if "PROGRAM TOTALS" in m.group(2):
        total = n
    # keytrail's client connections (the connection task: parsing, the
    # handler, the upstream call, the response, recording the event).
    # (The connection's future is spawned as it is, or wrapped in a closure.)
    elif re.search(r"keytrail::gateway::(serve::\{\{closure\}\}::\{\{closure\}\}|conn::serve::\{\{closure\}\})( \[|$)", m.group(2)):
        conn = max(conn, n)
print(f"{name}\t{requests}\t{total}\t{conn or total}")
PY
}

: > "$WORK/results"
valgrind --tool=callgrind --callgrind-out-file="$WORK/nginx.cg.%p" nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" 2>"$WORK/nginx.vg" &
NGX_PID=$!; PIDS+=($NGX_PID)
wait_http "http://127.0.0.1:$NGX/"
measure nginx "$NGX_PID" "http://127.0.0.1:$NGX/bench/x" "X-Nothing: 1"
kill "$NGX_PID"; sleep 1

CONFIG_ARGS=()
[ -n "${KEYTRAIL_CONFIG:-}" ] && CONFIG_ARGS=(--config "$(realpath "$KEYTRAIL_CONFIG")")
KEYTRAIL_BOOTSTRAP_TOKEN=$TOKEN KEYTRAIL_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/keytrail.cg.%p" \
  "$BIN" serve "${CONFIG_ARGS[@]}" --data-dir "$WORK/kt" --gateway-listen "127.0.0.1:$KT" --admin-listen "127.0.0.1:$KTA" > "$WORK/kt.out" 2>&1 &
KT_PID=$!; PIDS+=($KT_PID)
wait_http "http://127.0.0.1:$KTA/healthz"
KEY=$(setup_keytrail "$KTA" "$UP")
measure keytrail "$KT_PID" "http://127.0.0.1:$KT/bench/x" "X-API-Key: $KEY"
# KEEP_PROFILE=FILE keeps keytrail's callgrind profile (for callgrind_annotate).
if [ -n "${KEEP_PROFILE:-}" ]; then cp "$(ls -t "$WORK"/keytrail.cg.* | head -1)" "$KEEP_PROFILE"; fi

python3 - "$WORK/results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, requests, total, conn = line.split("\t")
    rows[name] = (int(requests), int(total), int(conn))
print("\n### user-space instructions per proxied request (callgrind, wrk -c8)\n")
print("| proxy | requests | instructions/request | of them, the connections' | the rest (audit writer, timers) | vs nginx |")
print("| --- | --- | --- | --- | --- | --- |")
base = rows["nginx"][1] / rows["nginx"][0]
for name in ("nginx", "keytrail"):
    n, total, conn = rows[name]
    print(f"| {name} | {n:,} | {total / n:,.0f} | {conn / n:,.0f} | {(total - conn) / n:,.0f} | {total / n / base:.2f}x |")
PY
echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%Y-%m-%d)"
