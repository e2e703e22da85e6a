#!/usr/bin/env bash
# Gateway benchmark: wrk against the same fast upstream through
#   direct        - no proxy (the limit)
#   nginx         - nginx proxy_pass with upstream keepalive, access log on
#   nginx-nolog   - the same nginx with its access log off (what the peer's own log costs)
#   keytrail      - key auth + rate limits + audit trail (async durability)
#   keytrail-nolog - key auth, successful calls not recorded (log_api_calls = false)
#   keytrail-alerts - (with ALERTS=1) keytrail with an alert rule that counts every call,
#                     so the alert engine reads the whole trail as it is committed
# The proxy under test is pinned to CPU 0; wrk and the upstream to CPU 1.
# Configurations run interleaved, ROUNDS times each; the medians are reported.
#
#   bash bench/gateway.sh                  # full run (5 x 8 s per configuration)
#   BENCH_SMOKE=1 bash bench/gateway.sh    # seconds-long run that checks the script works
#   ALERTS=1 bash bench/gateway.sh         # also keytrail-alerts: what the alert engine costs
#   KEYTRAIL_CONFIG=f.toml bash bench/gateway.sh   # the audit-on keytrail with that config
#                                          # (e.g. [audit] durability = "sync")
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-64}
if [ "${BENCH_SMOKE:-0}" = 1 ]; then DURATION=1; ROUNDS=1; fi
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

for tool in wrk nginx taskset curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/gateway.sh needs $tool (apt-get install wrk nginx-light curl)"; exit 1; }
done

cargo build --release --quiet --bin keytrail
BIN=$PWD/target/release/keytrail
WORK=$(mktemp -d /tmp/keytrail-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/up/nginx.pid" ] && kill "$(cat "$WORK/up/nginx.pid")" 2>/dev/null || true
  [ -f "$WORK/px/nginx.pid" ] && kill "$(cat "$WORK/px/nginx.pid")" 2>/dev/null || true
  [ -f "$WORK/px2/nginx.pid" ] && kill "$(cat "$WORK/px2/nginx.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$WORK"
}
trap cleanup EXIT

source bench/common.sh
UP=$(free_port); NGX=$(free_port); NGX2=$(free_port); KT=$(free_port); KTA=$(free_port); KT2=$(free_port); KTA2=$(free_port)


nginx_conf() { # dir listen body
  mkdir -p "$1/logs"
  cat > "$1/nginx.conf" <<CONF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fcgi;
  uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  $3
}
CONF
}

nginx_conf "$WORK/up" "$UP" "access_log off; server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '$BODY'; } }"
proxy_conf() { # dir listen access_log
  nginx_conf "$1" "$2" "access_log $3; upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$2; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
}
proxy_conf "$WORK/px" "$NGX" "$WORK/px/logs/access.log"
proxy_conf "$WORK/px2" "$NGX2" off
taskset -c "$LOAD_CPU" nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
taskset -c "$PROXY_CPU" nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
taskset -c "$PROXY_CPU" nginx -p "$WORK/px2" -c "$WORK/px2/nginx.conf"

start_keytrail() { # data gateway admin [config]
  local extra=()
  [ -n "${4:-}" ] && extra=(--config "$4")
  KEYTRAIL_BOOTSTRAP_TOKEN=$TOKEN KEYTRAIL_LOG=warn taskset -c "$PROXY_CPU" "$BIN" serve "${extra[@]}" \
    --data-dir "$1" --gateway-listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" > "$1.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$3/healthz" >/dev/null && return; sleep 0.05; done
  echo "keytrail did not start:"; cat "$1.out"; exit 1
}
printf '[audit]\nlog_api_calls = false\n' > "$WORK/nolog.toml"
start_keytrail "$WORK/kt" "$KT" "$KTA" "${KEYTRAIL_CONFIG:-}"
start_keytrail "$WORK/kt2" "$KT2" "$KTA2" "$WORK/nolog.toml"
KEY=$(setup_keytrail "$KTA" "$UP")
KEY2=$(setup_keytrail "$KTA2" "$UP")
KT_PID=${PIDS[0]}; KT2_PID=${PIDS[1]}
if [ "${ALERTS:-0}" = 1 ]; then
  KT3=$(free_port); KTA3=$(free_port)
  start_keytrail "$WORK/kt3" "$KT3" "$KTA3" "${KEYTRAIL_CONFIG:-}"
  KEY3=$(setup_keytrail "$KTA3" "$UP")
  KT3_PID=${PIDS[2]}
  # Every successful call counts; it fires at each 10,000th (no cooldown),
  # so its firings say the engine kept up with the trail.
  curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$KTA3/v1/tenants/bench/alerts" \
    -d '{"id":"every-call","match":{"category":"request","outcome":"success"},"threshold":10000,"window_secs":86400,"cooldown_secs":0}' >/dev/null
fi

cpu_ticks() { # pids... -> utime+stime in clock ticks
  local total=0
  for pid in "$@"; do
    read -r -a f < "/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo $total
}
# CPU ticks of a keytrail process's audit writer thread (comm "keytrail-audit-"),
# to split the trail's cost between the writer and the request path.
writer_ticks() { # pid
  local total=0 task
  for task in /proc/"$1"/task/*; do
    [[ "$(cat "$task/comm" 2>/dev/null)" == keytrail-audit* ]] || continue
    read -r -a f < "$task/stat"
    total=$((total + f[13] + f[14]))
  done
  echo $total
}
nginx_pids() { local master; master=$(cat "$1/nginx.pid"); echo "$master $(pgrep -P "$master" | tr '\n' ' ')"; }

declare -A URL HEADER PIDSET
URL[direct]="http://127.0.0.1:$UP/bench/x";      PIDSET[direct]=""
URL[nginx]="http://127.0.0.1:$NGX/bench/x";      PIDSET[nginx]="$(nginx_pids "$WORK/px")"
URL[nginx-nolog]="http://127.0.0.1:$NGX2/bench/x"; PIDSET[nginx-nolog]="$(nginx_pids "$WORK/px2")"
URL[keytrail]="http://127.0.0.1:$KT/bench/x";    PIDSET[keytrail]="$KT_PID"
URL[keytrail-nolog]="http://127.0.0.1:$KT2/bench/x"; PIDSET[keytrail-nolog]="$KT2_PID"
HEADER[direct]="X-API-Key: $KEY"; HEADER[nginx]="X-API-Key: $KEY"; HEADER[nginx-nolog]="X-API-Key: $KEY"
HEADER[keytrail]="X-API-Key: $KEY"; HEADER[keytrail-nolog]="X-API-Key: $KEY2"
CONFIGS=(direct nginx nginx-nolog keytrail keytrail-nolog)
if [ "${ALERTS:-0}" = 1 ]; then
  URL[keytrail-alerts]="http://127.0.0.1:$KT3/bench/x"; PIDSET[keytrail-alerts]="$KT3_PID"; HEADER[keytrail-alerts]="X-API-Key: $KEY3"
  CONFIGS+=(keytrail-alerts)
fi

# Warm up every path (connection pools, page cache).
for c in "${CONFIGS[@]}"; do
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -H "${HEADER[$c]}" "${URL[$c]}" >/dev/null
done

RESULTS=${BENCH_RAW:-$WORK/results.tsv}
: > "$RESULTS"
TCK=$(getconf CLK_TCK)
run() { # config connections seconds round
  local c=$1 before after out wbefore=0 wafter=0
  before=$(cpu_ticks ${PIDSET[$c]} 2>/dev/null || echo 0)
  [[ $c == keytrail* ]] && wbefore=$(writer_ticks ${PIDSET[$c]})
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"$3"s --latency -H "${HEADER[$c]}" "${URL[$c]}")
  after=$(cpu_ticks ${PIDSET[$c]} 2>/dev/null || echo 0)
  [[ $c == keytrail* ]] && wafter=$(writer_ticks ${PIDSET[$c]})
  if echo "$out" | grep -q "Non-2xx"; then echo "$c answered errors:"; echo "$out"; exit 1; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$2" "$4" "$((after - before))" "$((wafter - wbefore))" "$(echo "$out" | tr '\n' '|')" >> "$RESULTS"
}
for round in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do run "$c" "$CONNS" "$DURATION" "$round"; done
done
for round in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do run "$c" 1 "$(( DURATION < 5 ? DURATION : 5 ))" "$round"; done
done

# Every keytrail request was recorded (the audit-on instance).
sleep 0.3
LOGGED=$(curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$KTA/v1/audit/bench?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["logs"][0]["seq"])')
echo "audit trail of the keytrail run holds $LOGGED events (newest seq)"
# A run that dropped events (queue full) would flatter the audit trail's
# cost: the pipeline's counters must show every event committed, none dropped.
curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$KTA/v1/status" | python3 -c '
import json, sys
p = json.load(sys.stdin)["audit_pipeline"]
print("audit pipeline: %(accepted)d accepted, %(committed)d committed, %(dropped)d dropped" % p)
if p["dropped"]:
    sys.exit("the audit pipeline dropped events during the run: its cost is understated; results discarded")
'

if [ "${ALERTS:-0}" = 1 ]; then
  sleep 2  # the engine's next turn
  curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$KTA3/v1/tenants/bench/alerts/every-call" | python3 -c '
import json, sys
print("alert engine: %(fired)d firings of every-call (one per 10,000 successful calls)" % json.load(sys.stdin)["status"])'
fi

python3 - "$RESULTS" "$TCK" "$CONNS" <<'PY'
import re, sys, statistics
path, tck, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        raise SystemExit(f"cannot read wrk latency {v!r}")
    n, unit = m.groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
rows = {}
for line in open(path):
    c, n, rnd, ticks, wticks, out = line.rstrip("\n").split("\t")
    out = out.replace("|", "\n")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    # Anchored to the start of a line: "89.50%" in the thread stats also ends in "50%".
    p50 = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    cpu_us = int(ticks) * 1e6 / tck / total if c != "direct" else float("nan")
    writer_us = int(wticks) * 1e6 / tck / total if c.startswith("keytrail") else float("nan")
    rows.setdefault((c, int(n)), []).append((rps, p50, p99, cpu_us, writer_us))
def med(xs): return statistics.median(xs)
order = [c for c in ["direct", "nginx", "nginx-nolog", "keytrail", "keytrail-nolog", "keytrail-alerts"] if (c, conns) in rows]
m = {k: tuple(med([r[i] for r in v]) for i in range(5)) for k, v in rows.items()}
print(f"\n### {conns} connections (wrk -t1 -c{conns}), median of {len(rows[('direct', conns)])} runs\n")
print("| configuration | req/s (runs) | vs nginx | vs direct | p50 ms | p99 ms | proxy CPU µs/req | of which audit writer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
def num(x, fmt): return "-" if x != x else format(x, fmt)
for c in order:
    rps, p50, p99, cpu, writer = m[(c, conns)]
    runs = ", ".join(f"{r[0]/1000:.1f}k" for r in rows[(c, conns)])
    print(f"| {c} | {rps:,.0f} ({runs}) | {rps/m[('nginx', conns)][0]:.2f}x | {rps/m[('direct', conns)][0]:.2f}x | {p50:.2f} | {p99:.2f} | {num(cpu, '.1f')} | {num(writer, '.2f')} |")
# nginx and keytrail run back to back in each round too.
vs = [a[0] / b[0] for a, b in zip(rows[("keytrail", conns)], rows[("nginx", conns)])]
print(f"\nkeytrail vs nginx per round: {', '.join(f'{x:.2f}x' for x in vs)} (median {med(vs):.2f}x)")
# How sure the rounds make a ratio: the geometric mean of the per-round
# ratios and its 95 % interval (Student's t on their logarithms). An
# interval that holds 1.00x says the run cannot tell the two apart.
import math
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
def interval(ratios):
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), float("nan"), float("nan")
    df = len(logs) - 1
    t = T975.get(df) or next((T975[k] for k in sorted(T975) if k >= df), 1.96)
    half = t * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)
def span(lo_, hi_, fmt):
    return "no interval from one round" if lo_ != lo_ else f"95 % interval {fmt(lo_)} to {fmt(hi_)}"
g, lo_, hi_ = interval(vs)
print(f"keytrail vs nginx, geometric mean of the rounds {g:.3f}x, {span(lo_, hi_, lambda x: f'{x:.3f}x')}")
# Each proxy against itself without its log; the two run back to back in
# each round, so a round's ratio is less moved by the machine's slow and
# fast spells than the ratio of the medians.
costs = [("keytrail's audit trail", "keytrail", "keytrail-nolog"), ("nginx's access log", "nginx", "nginx-nolog")]
if ("keytrail-alerts", conns) in rows:
    costs.append(("keytrail's alert engine", "keytrail-alerts", "keytrail"))
for name, on, off in costs:
    lo, nolog = m[(on, conns)][0], m[(off, conns)][0]
    pairs = list(zip(rows[(on, conns)], rows[(off, conns)]))  # in round order
    tput = [100 * (1 - a[0] / b[0]) for a, b in pairs]
    cpu = [100 * (a[3] / b[3] - 1) for a, b in pairs]
    print(f"\n{name} costs {100*(1-lo/nolog):.1f} % of throughput ({on} vs {off}, medians); "
          f"per round: {', '.join(f'{x:.1f}' for x in tput)} % (median {med(tput):.1f} %); "
          f"CPU per request {', '.join(f'{x:+.1f}' for x in cpu)} % (median {med(cpu):+.1f} %)")
    g, lo_, hi_ = interval([a[0] / b[0] for a, b in pairs])
    print(f"{name}: throughput {100*(1-g):.1f} % lower (geometric mean of the rounds), {span(hi_, lo_, lambda x: f'{100*(1-x):.1f} %')}")
print(f"\n### one connection (wrk -t1 -c1): latency added over a direct call\n")
print("| configuration | p50 ms | added p50 µs | p99 ms |")
print("| --- | --- | --- | --- |")
d50 = m[("direct", 1)][1]
for c in order:
    rps, p50, p99, cpu, _ = m[(c, 1)]
    print(f"| {c} | {p50:.3f} | {1000*(p50-d50):.0f} | {p99:.3f} |")
PY
echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%Y-%m-%d)"
