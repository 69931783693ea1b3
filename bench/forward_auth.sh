#!/usr/bin/env bash
# bench/forward_auth.sh: the forward-auth decision listener (listen.authz) on loopback.
#   sat  (wrk -t1 -c64, as many requests as the targets answer):
#        decisions/s for a valid RS256 token asked directly (X-Forwarded-Method/-Uri/-Host,
#        as Traefik and Caddy ask) vs jwtgate's own proxy path (same process, same route);
#        Caddy forward_auth -> jwtgate -> upstream and Caddy -> upstream;
#        nginx auth_request -> jwtgate -> upstream and nginx -> upstream.
#   rate (h2load --h1 -c64 --rps, a fixed request rate below saturation): p50/p99/p99.9 of
#        nginx auth_request vs nginx direct at 25% and 50% of nginx direct's req/s from the
#        sat section, so that queueing at saturation does not count as added latency.
# Targets alternate within each round (each round starts one further along); the tables
# show medians over rounds. Prints markdown and saves it to bench/results/forward_auth-*.md.
#
# Usage: bench/forward_auth.sh [--rounds N] [--duration S] [--rate-duration S]
#                              [--only sat|rate|sat,rate] [--keep-tmp]
#   defaults: 3 rounds, 10 s per sat run, 10 s per rate run, both sections.
#   env: JWTGATE_BIN (default target/release/jwtgate), BENCH_CONNS (default 64),
#        BENCH_WARMUP (s, default 1), BENCH_RATE_PCT (default "25 50"),
#        BENCH_RATE_BASE (nginx direct req/s for --only rate; default: measured by sat).
#
# Needs nginx, caddy, wrk, h2load (nghttp2-client), curl, openssl, python3 (as root on
# Debian, missing ones are installed with apt-get, services kept stopped). Everything binds
# 127.0.0.1 on free ports in one mktemp folder; exactly the processes this script started
# are stopped on exit. oauth2-proxy is not measured (see docs/BENCHMARKS.md#forward-auth).
set -Eeuo pipefail

ROUNDS=3
DURATION=10
RATE_DURATION=10
ONLY=sat,rate
KEEP_TMP=0
CONNS=${BENCH_CONNS:-64}
WARMUP=${BENCH_WARMUP:-1}
RATE_PCTS=${BENCH_RATE_PCT:-25 50}
ISSUER="bench"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
JG=${JWTGATE_BIN:-$ROOT/target/release/jwtgate}
# shellcheck source=lib/common.sh
source "$BENCH/lib/common.sh"

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --rate-duration) RATE_DURATION=${2:?--rate-duration needs seconds}; shift 2 ;;
        --only) ONLY=${2:?--only needs sat, rate or sat,rate}; shift 2 ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$ROUNDS'"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive number of seconds"
[[ $RATE_DURATION =~ ^[1-9][0-9]*$ ]] || die "--rate-duration must be a positive number of seconds"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_CONNS must be a positive integer"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a whole number of seconds"
[[ $RATE_PCTS =~ ^[1-9][0-9]*( [1-9][0-9]*)*$ ]] || die "BENCH_RATE_PCT must be percentages separated by spaces"
DO_SAT=0 DO_RATE=0
IFS=',' read -r -a only_list <<<"$ONLY"
for s in "${only_list[@]}"; do
    case $s in sat) DO_SAT=1 ;; rate) DO_RATE=1 ;; *) die "--only: unknown section '$s' (sat, rate)" ;; esac
done
if [[ $DO_RATE == 1 && $DO_SAT == 0 ]]; then
    [[ ${BENCH_RATE_BASE:-} =~ ^[1-9][0-9]*$ ]] ||
        die "--only rate needs BENCH_RATE_BASE (nginx direct req/s at saturation, from a sat run)"
fi

need_cmds nginx=nginx caddy=caddy wrk=wrk h2load=nghttp2-client curl=curl openssl=openssl \
    python3=python3 timeout=coreutils
ensure_jwtgate

# --- set-up ----------------------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/jwtgate-bench-fa.XXXXXX")
chmod 711 "$TMP" # nginx workers run as "nobody" and must reach their prefix folders
mkdir -p "$TMP/out" "$TMP/caddy"
read -r UP_PORT JG_HTTP_PORT JG_ADMIN_PORT JG_AUTHZ_PORT NA_PORT NP_PORT CA_PORT CP_PORT <<<"$(free_ports 8)"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
TOKEN=$(mint_token_openssl RS256 r1 "$TMP/rsa.pem" 7200)

start_nginx "upstream nginx" "$TMP/up" "$BENCH/templates/upstream.nginx.conf" "$UP_PORT" UP_PORT="$UP_PORT"

render "$BENCH/templates/forward_auth.toml" "$TMP/gateway.toml" JG_HTTP_PORT="$JG_HTTP_PORT" \
    JG_ADMIN_PORT="$JG_ADMIN_PORT" JG_AUTHZ_PORT="$JG_AUTHZ_PORT" ISSUER="$ISSUER" \
    RSA_PUB="$TMP/rsa.pub.pem" UP_PORT="$UP_PORT"
start_jwtgate jwtgate "$TMP/gateway.toml" "$JG_ADMIN_PORT"
wait_port "jwtgate authz" "$LAST_PID" "$JG_AUTHZ_PORT" "$TMP/gateway.log"

start_nginx "proxy nginx" "$TMP/nginx" "$BENCH/templates/forward_auth.nginx.conf" "$NA_PORT" \
    UP_PORT="$UP_PORT" JG_AUTHZ_PORT="$JG_AUTHZ_PORT" NA_PORT="$NA_PORT" NP_PORT="$NP_PORT"
wait_port "proxy nginx" "$LAST_PID" "$NP_PORT" "$TMP/nginx/error.log"

render "$BENCH/templates/forward_auth.Caddyfile" "$TMP/caddy/Caddyfile" UP_PORT="$UP_PORT" \
    JG_AUTHZ_PORT="$JG_AUTHZ_PORT" CA_PORT="$CA_PORT" CP_PORT="$CP_PORT"
start_bg caddy "$TMP/caddy/caddy.log" env HOME="$TMP/caddy" XDG_CONFIG_HOME="$TMP/caddy" \
    XDG_DATA_HOME="$TMP/caddy" caddy run --config "$TMP/caddy/Caddyfile" --adapter caddyfile
wait_port caddy "$LAST_PID" "$CA_PORT" "$TMP/caddy/caddy.log"
wait_port caddy "$LAST_PID" "$CP_PORT" "$TMP/caddy/caddy.log"

# --- targets ---------------------------------------------------------------------------------

AUTH="Authorization: Bearer $TOKEN"
DESCRIBE=(-H "X-Forwarded-Method: GET" -H "X-Forwarded-Uri: /bench" -H "X-Forwarded-Host: bench")
SAT_IDS=(authz proxy caddy-authz caddy-direct nginx-authz nginx-direct)
RATE_IDS=(nginx-direct nginx-authz)
declare -A LABEL=(
    [authz]="jwtgate authz listener, decision only (X-Forwarded-*)"
    [proxy]="jwtgate proxy path -> upstream"
    [caddy-authz]="Caddy forward_auth -> jwtgate authz, then -> upstream"
    [caddy-direct]="Caddy -> upstream (no auth)"
    [nginx-authz]="nginx auth_request -> jwtgate authz, then -> upstream"
    [nginx-direct]="nginx -> upstream (no auth)"
)
declare -A URL=(
    [authz]="http://127.0.0.1:$JG_AUTHZ_PORT/"
    [proxy]="http://127.0.0.1:$JG_HTTP_PORT/bench"
    [caddy-authz]="http://127.0.0.1:$CA_PORT/bench"
    [caddy-direct]="http://127.0.0.1:$CP_PORT/bench"
    [nginx-authz]="http://127.0.0.1:$NA_PORT/bench"
    [nginx-direct]="http://127.0.0.1:$NP_PORT/bench"
)
headers_for() { # ID -> header arguments (the same -H form for curl, wrk and h2load)
    if [[ $1 == authz ]]; then printf '%s\0' -H "$AUTH" "${DESCRIBE[@]}"; else printf '%s\0' -H "$AUTH"; fi
}

expect() { # ID STATUS [no-token]
    local args=() got
    if [[ ${3:-} == no-token ]]; then
        [[ $1 == authz ]] && args=("${DESCRIBE[@]}")
    else
        mapfile -d '' args < <(headers_for "$1")
    fi
    got=$(curl -s -o "$TMP/curl.body" -w '%{http_code}' --max-time 10 "${args[@]}" "${URL[$1]}") || true
    [[ $got == "$2" ]] || die "check failed: ${LABEL[$1]}: ${URL[$1]} answered $got, expected $2 ($(head -c 200 "$TMP/curl.body"))"
}
for id in "${SAT_IDS[@]}"; do expect "$id" 200; done
for id in authz proxy caddy-authz nginx-authz; do expect "$id" 401 no-token; done
log "checks passed: each target answers 200 with the token, the jwtgate ones 401 without"

# --- load ------------------------------------------------------------------------------------

run_wrk() { # ID SECONDS OUT
    local args
    mapfile -d '' args < <(headers_for "$1")
    timeout -k 5 $(($2 + 30)) wrk -t1 -c"$CONNS" -d"${2}s" --latency "${args[@]}" "${URL[$1]}" >"$3" 2>&1 ||
        die "wrk failed for ${LABEL[$1]} (see $3)"
}

# run_rate ID TOTAL_RPS SECONDS OUT: h2load at a fixed rate; OUT.tsv gets one line per request
# (start us, status, response us). Each connection sends at TOTAL_RPS/CONNS per second on
# its own timer; connections open 1 ms apart (-r 1 --rate-period 1ms) so their timers are
# out of phase and the requests arrive spread out, not in bursts of CONNS.
run_rate() {
    local id=$1 rps=$2 secs=$3 out=$4 per args
    per=$(((rps + CONNS / 2) / CONNS))
    [[ $per -ge 1 ]] || die "rate $rps req/s is below one request per second per connection"
    mapfile -d '' args < <(headers_for "$id")
    rm -f "$out.tsv"
    timeout -k 5 $((secs + 60)) h2load --h1 -t1 -c"$CONNS" -m1 --rps="$per" -r 1 --rate-period=1ms \
        -n $((per * CONNS * secs)) --log-file="$out.tsv" "${args[@]}" "${URL[$id]}" >"$out" 2>&1 ||
        die "h2load failed for ${LABEL[$id]} (see $out)"
    RATE_SENT=$((per * CONNS))
}

# rate_stats OUT.tsv -> "achieved_rps p50_ms p99_ms p999_ms non_200 burst"; the achieved rate is
# the requests over the span of their start times (h2load holds a request back while the
# connection still waits for the previous answer, so it falls short when a target lags)
rate_stats() {
    python3 - "$1" <<'EOF'
import math, sys
lat, starts, bad = [], [], 0
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 3:
        continue
    starts.append(int(f[0]))
    lat.append(int(f[2]))
    bad += f[1] != "200"
lat.sort()
span = (max(starts) - min(starts)) / 1e6
def pct(p):  # nearest rank
    return lat[max(0, math.ceil(p / 100 * len(lat)) - 1)] / 1000
# how evenly the requests went out: the busiest 1 ms windows (99th percentile of starts per ms)
per_ms = [0] * (int(span * 1000) + 1)
t0 = min(starts)
for t in starts:
    per_ms[(t - t0) // 1000] += 1
per_ms.sort()
burst = per_ms[max(0, math.ceil(0.99 * len(per_ms)) - 1)]
print(f"{(len(lat) - 1) / span:.0f} {pct(50):.3f} {pct(99):.3f} {pct(99.9):.3f} {bad} {burst}")
EOF
}

RES=$TMP/results.txt
: >"$RES"
if [[ $DO_SAT == 1 ]]; then
    n=${#SAT_IDS[@]}
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < n; i++)); do
            id=${SAT_IDS[(i + r - 1) % n]}
            [[ $WARMUP -gt 0 ]] && run_wrk "$id" "$WARMUP" "$TMP/out/warm.txt"
            run_wrk "$id" "$DURATION" "$TMP/out/sat-$id-$r.txt"
            read -r rps p50 p99 err < <(parse_wrk "$TMP/out/sat-$id-$r.txt")
            log "[sat] round $r/$ROUNDS: ${LABEL[$id]}: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $err"
            echo "sat $id $r $rps $p50 $p99 - $err" >>"$RES"
        done
    done
fi

if [[ $DO_RATE == 1 ]]; then
    BASE=${BENCH_RATE_BASE:-$(awk '$1 == "sat" && $2 == "nginx-direct" { print $4 }' "$RES" | sort -n |
        awk '{ v[NR] = $1 } END { print int(NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')}
    log "[rate] nginx direct saturates at $BASE req/s; fixed rates: ${RATE_PCTS// /% and }% of that"
    for pct in $RATE_PCTS; do
        rate=$((BASE * pct / 100))
        [[ $WARMUP -gt 0 ]] && for id in "${RATE_IDS[@]}"; do run_rate "$id" "$rate" "$WARMUP" "$TMP/out/warm-rate"; done
        for ((r = 1; r <= ROUNDS; r++)); do
            for ((i = 0; i < ${#RATE_IDS[@]}; i++)); do
                id=${RATE_IDS[(i + r - 1) % ${#RATE_IDS[@]}]}
                out=$TMP/out/rate$pct-$id-$r.txt
                run_rate "$id" "$rate" "$RATE_DURATION" "$out"
                read -r got p50 p99 p999 bad burst < <(rate_stats "$out.tsv")
                log "[rate $pct%] round $r/$ROUNDS: ${LABEL[$id]}: $got of $RATE_SENT req/s, p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms, non-200 $bad, starts/ms p99 $burst"
                echo "rate$pct $id $r $got $p50 $p99 $p999 $bad $RATE_SENT $burst" >>"$RES"
            done
        done
    done
fi

# --- report ----------------------------------------------------------------------------------

mkdir -p "$BENCH/results"
OUT=$BENCH/results/forward_auth-$(date +%Y%m%d-%H%M%S).md
GIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
LABELS=()
for id in "${SAT_IDS[@]}"; do LABELS+=("$id=${LABEL[$id]}"); done
python3 - "$RES" "$ROUNDS" "$DURATION" "$RATE_DURATION" "$CONNS" "$GIT" "${LABELS[@]}" <<'EOF' | tee "$OUT"
import statistics, sys
res, rounds, dur, rdur, conns, git = sys.argv[1:7]
labels = dict(kv.split("=", 1) for kv in sys.argv[7:])
rows = {}  # section -> id -> round -> values
for line in open(res):
    f = line.split()
    sec, i, r = f[0], f[1], int(f[2])
    rows.setdefault(sec, {}).setdefault(i, {})[r] = [float(x) if x != "-" else None for x in f[3:]]
def med(sec, i, k):
    return statistics.median(v[k] for v in rows[sec][i].values())
def per_round(sec, a, b, k, op):  # per round, then the median (drift between rounds cancels)
    ra, rb = rows[sec][a], rows[sec][b]
    return statistics.median(op(ra[r][k], rb[r][k]) for r in ra if r in rb)
ratio = lambda sec, a, b, k: per_round(sec, a, b, k, lambda x, y: x / y)
delta = lambda sec, a, b, k: per_round(sec, a, b, k, lambda x, y: x - y)
print(f"Forward-auth (git {git}, release build, {rounds} rounds, targets alternating, medians)\n")
if "sat" in rows:
    s = rows["sat"]
    print(f"Saturation: wrk -t1 -c{conns} --latency, {dur} s per run, one valid RS256 token\n")
    print("| target | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for i in s:
        errs = sum(v[4] for v in s[i].values())
        print(f"| {labels[i]} | {med('sat', i, 0):,.0f} | {med('sat', i, 1):.2f} | {med('sat', i, 2):.2f} | {errs:.0f} |")
    print()
    print(f"- decisions/s vs jwtgate's proxied requests/s (same round): {ratio('sat', 'authz', 'proxy', 0):.2f}x")
    print(f"- Caddy forward_auth -> jwtgate vs jwtgate's own proxy path: {ratio('sat', 'caddy-authz', 'proxy', 0):.2f}x "
          f"the req/s; jwtgate's proxy path serves {ratio('sat', 'proxy', 'caddy-authz', 0):.2f}x Caddy forward_auth's "
          f"(Caddy direct: {ratio('sat', 'caddy-direct', 'proxy', 0):.2f}x jwtgate's proxy path)")
    print(f"- nginx auth_request at saturation: {delta('sat', 'nginx-authz', 'nginx-direct', 1):+.2f} ms p50, "
          f"{delta('sat', 'nginx-authz', 'nginx-direct', 2):+.2f} ms p99 over nginx direct; "
          f"req/s {ratio('sat', 'nginx-authz', 'nginx-direct', 0):.2f}x of direct")
    print()
rates = sorted((k for k in rows if k.startswith("rate")), key=lambda k: int(k[4:]))
if rates:
    print(f"Fixed rate: h2load --h1 -t1 -c{conns} --rps (per connection, connections 1 ms apart), "
          f"{rdur} s per run; latency of every request from the log file\n")
    print("| rate | target | req/s asked (got) | starts/ms p99 (mean) | p50 ms | p99 ms | p99.9 ms | non-200 |")
    print("|---|---|---|---|---|---|---|---|")
    for sec in rates:
        for i in rows[sec]:
            bad = sum(v[4] for v in rows[sec][i].values())
            print(f"| {sec[4:]}% of nginx direct | {labels[i]} | {med(sec, i, 5):,.0f} ({med(sec, i, 0):,.0f}) | "
                  f"{med(sec, i, 6):.0f} ({med(sec, i, 5) / 1000:.1f}) | "
                  f"{med(sec, i, 1):.3f} | {med(sec, i, 2):.3f} | {med(sec, i, 3):.3f} | {bad:.0f} |")
    print()
    for sec in rates:
        print(f"- {sec[4:]}%: nginx auth_request adds {delta(sec, 'nginx-authz', 'nginx-direct', 1):+.3f} ms p50, "
              f"{delta(sec, 'nginx-authz', 'nginx-direct', 2):+.3f} ms p99, "
              f"{delta(sec, 'nginx-authz', 'nginx-direct', 3):+.3f} ms p99.9 (per-round differences, median)")
    print()
print("- oauth2-proxy: not measured (v7.15 needs Go >= 1.25, Debian bookworm-backports has Go 1.23)")
EOF
log "saved to $OUT"
