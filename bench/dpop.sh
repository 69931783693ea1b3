#!/usr/bin/env bash
# bench/dpop.sh: the cost of a DPoP proof check (RFC 9449) over TLS, against plain RS256
# bearer tokens, in the same run and the same gateway process:
#   bearer:     Authorization: Bearer <RS256 token>, route sender_constraint = "off", the
#               header given to wrk with -H (no Lua: the client's cheapest way);
#   bearer-lua: the same request made by a Lua request() per request (bench/lib/
#               bearer_lua.lua), as the dpop side makes its requests: the fair comparison,
#               since wrk shares the cores with the gateway;
#   dpop:       Authorization: DPoP <RS256 token with cnf.jkt> + a new ES256 proof per
#               request (wrk Lua takes them from a file made by `jwtgate dpop-proof --count
#               N`), route sender_constraint = "required", replay cache in Redis (SET NX PX).
# Targets alternate within each round. Each round's dpop run gets proofs of its own (a
# disjoint range of the file, split between wrk threads), so no proof is ever sent twice
# unless a round outruns its range; any round with a non-2xx response or socket error is
# named in the output, never dropped. Prints medians, the dpop/bearer ratios, the
# gateway's RSS after the run and the dpop keys Redis holds. Saves the table to
# bench/results/dpop-<timestamp>.md.
#
# Usage: bench/dpop.sh [--rounds N] [--duration S] [--proofs N] [--keep-tmp]
#   defaults: 3 rounds of 10 s, 200000 proofs per round; env: JWTGATE_BIN (default
#   target/release/jwtgate), BENCH_CONNS (default 64), BENCH_THREADS (wrk, default 1),
#   BENCH_TARGETS (default "bearer bearer-lua dpop"; "dpop" alone for a long memory run).
#
# Needs nginx (upstream), redis-server, wrk, curl, openssl, python3. Everything binds
# 127.0.0.1 on free ports in one mktemp folder; exactly the processes started here are
# stopped on exit. Proofs are made before the run, so the gateway runs with
# [tokens] dpop_iat_window_s = 3600 (proofs stay fresh for the whole run).
set -Eeuo pipefail

ROUNDS=3
DURATION=10
PROOFS=200000
KEEP_TMP=0
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ISSUER=bench
# log, die, start_bg, wait_port, free_ports, render, parse_wrk, the cleanup traps.
# shellcheck source=lib/common.sh
source "$BENCH/lib/common.sh"

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --proofs) PROOFS=${2:?}; shift 2 ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
for v in ROUNDS DURATION PROOFS CONNS THREADS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

JG=${JWTGATE_BIN:-$ROOT/target/release/jwtgate}
[[ -x $JG ]] || die "$JG is missing: cargo build --release (or set JWTGATE_BIN)"
for t in nginx redis-server wrk curl openssl python3; do
    command -v "$t" >/dev/null 2>&1 || die "missing: $t (apt-get install $t)"
done

TMP=$(mktemp -d /tmp/jwtgate-bench-dpop.XXXXXX)
read -r UP_PORT HTTPS_PORT ADMIN_PORT REDIS_PORT <<<"$(free_ports 4)"

mkdir -p "$TMP/up"
render "$BENCH/templates/upstream.nginx.conf" "$TMP/up/nginx.conf" PREFIX="$TMP/up" UP_PORT="$UP_PORT"
start_bg "upstream nginx" "$TMP/up/stderr.log" nginx -p "$TMP/up/" -e "$TMP/up/error.log" -c "$TMP/up/nginx.conf" -g 'daemon off;'
wait_port "upstream nginx" "$LAST_PID" "$UP_PORT" "$TMP/up/error.log"
start_bg "redis-server" "$TMP/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
wait_port "redis-server" "$LAST_PID" "$REDIS_PORT" "$TMP/redis.log"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/dpop.pem" 2>/dev/null
"$JG" gen-cert --out "$TMP" --host localhost --host 127.0.0.1 >/dev/null
cat >"$TMP/gateway.toml" <<TOML
[listen]
https = "127.0.0.1:$HTTPS_PORT"
admin = "127.0.0.1:$ADMIN_PORT"

[server]
log_format = "text"

[tls]
cert = "$TMP/localhost.crt"
key = "$TMP/localhost.key"

[[issuers]]
name = "bench"
issuer = "bench"
keys = [{ kid = "r1", alg = "RS256", pem = "$TMP/rsa.pub.pem" }]

[tokens]
dpop_iat_window_s = 3600

[revocation]
store = "redis"
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"

[[routes]]
name = "bearer"
path_prefix = "/bearer"
upstreams = ["http://127.0.0.1:$UP_PORT"]

[[routes]]
name = "dpop"
path_prefix = "/dpop"
upstreams = ["http://127.0.0.1:$UP_PORT"]
sender_constraint = "required"
TOML
start_jwtgate "jwtgate" "$TMP/gateway.toml" "$ADMIN_PORT"
JG_PID=$LAST_PID

mint() { "$JG" token --alg RS256 --key "$TMP/rsa.pem" --kid r1 --iss bench --sub alice --ttl 7200 "$@" | tail -n 1; }
BEARER=$(mint)
BOUND=$(mint --dpop-key "$TMP/dpop.pem")
BASE="https://127.0.0.1:$HTTPS_PORT"
log "making $((PROOFS * ROUNDS)) proofs ($PROOFS per round) ..."
t0=$(date +%s.%N)
"$JG" dpop-proof --key "$TMP/dpop.pem" --url "$BASE/dpop" --token "$BOUND" --count "$((PROOFS * ROUNDS))" >"$TMP/proofs.txt"
log "made in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"

# Checks: each target answers 200 as benchmarked; the bound token alone is refused.
code() { curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "$@"; }
[[ $(code -H "Authorization: Bearer $BEARER" "$BASE/bearer") == 200 ]] || die "bearer check failed"
P=$("$JG" dpop-proof --key "$TMP/dpop.pem" --url "$BASE/dpop" --token "$BOUND")
[[ $(code -H "Authorization: DPoP $BOUND" -H "DPoP: $P" "$BASE/dpop") == 200 ]] || die "dpop check failed"
[[ $(code -H "Authorization: DPoP $BOUND" -H "DPoP: $P" "$BASE/dpop") == 401 ]] || die "replayed proof was not refused"
[[ $(code -H "Authorization: DPoP $BOUND" "$BASE/dpop") == 401 ]] || die "bound token without proof was not refused"
log "checks passed"

# parse_wrk plus the number of requests wrk completed: "rps p50 p99 errors requests"
parse_wrk_n() {
    printf '%s %d\n' "$(parse_wrk "$1")" "$(awk '/^ +[0-9]+ requests in/ { print $1 }' "$1")"
}
RES=$TMP/results.txt
: >"$RES"
NOTES=$TMP/notes.txt
: >"$NOTES"
for ((r = 1; r <= ROUNDS; r++)); do
    for id in ${BENCH_TARGETS:-bearer bearer-lua dpop}; do
        out=$TMP/wrk-$id-$r.txt
        case $id in
            bearer)
                timeout -k 5 $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
                    -H "Authorization: Bearer $BEARER" "$BASE/bearer" >"$out" 2>&1 || die "wrk failed ($out)" ;;
            bearer-lua)
                BEARER_TOKEN=$BEARER timeout -k 5 $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" \
                    -d"${DURATION}s" --latency -s "$BENCH/lib/bearer_lua.lua" "$BASE/bearer" >"$out" 2>&1 \
                    || die "wrk failed ($out)" ;;
            dpop)
                # Round r's own lines ((r-1)*PROOFS+1 .. r*PROOFS): requests still in flight
                # when the previous round stopped used proofs of that round, not these.
                sed -n "$(((r - 1) * PROOFS + 1)),$((r * PROOFS))p" "$TMP/proofs.txt" >"$TMP/round-proofs.txt"
                DPOP_TOKEN=$BOUND DPOP_PROOFS=$TMP/round-proofs.txt timeout -k 5 $((DURATION + 60)) \
                    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH/lib/dpop_proofs.lua" \
                    "$BASE/dpop" -- "$THREADS" >"$out" 2>&1 || die "wrk failed ($out)" ;;
        esac
        read -r rps p50 p99 err n < <(parse_wrk_n "$out")
        if [[ $id == dpop ]] && ((n + CONNS > PROOFS)); then
            echo "round $r: dpop sent about $((n + CONNS)) requests with $PROOFS proofs: proofs were reused (run with a larger --proofs)" >>"$NOTES"
        fi
        if ((err > 0)); then
            echo "round $r: $id had $err non-2xx responses or socket errors (see $out)" >>"$NOTES"
            log "WARNING: round $r: $id: $err non-2xx/errors"
        fi
        log "round $r/$ROUNDS: $id: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx/errors $err"
        echo "$id $r $rps $p50 $p99 $err" >>"$RES"
    done
done
RSS_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$JG_PID/status")
KEYS=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'jwtgate:dpop:*' | wc -l)
ACCEPTED=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^jwtgate_dpop_proofs_total\{result="accepted"\}/ {print $2}')

mkdir -p "$BENCH/results"
OUT=$BENCH/results/dpop-$(date +%Y%m%d-%H%M%S).md
GIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$RES" "$ROUNDS" "$DURATION" "$CONNS" "$THREADS" "$GIT" "$RSS_KB" "$KEYS" "$ACCEPTED" "$JG" "$NOTES" <<'PY' | tee "$OUT"
import statistics, sys
res, rounds, dur, conns, threads, git, rss, keys, accepted, binary, notes = sys.argv[1:12]
rows = {}
for line in open(res):
    i, r, rps, p50, p99, err = line.split()
    rows.setdefault(i, {})[int(r)] = (float(rps), float(p50), float(p99), int(err))
med = lambda i, k: statistics.median(v[k] for v in rows[i].values())
ratio = lambda base: statistics.median(rows["dpop"][r][0] / rows[base][r][0] for r in rows["dpop"]) if base in rows and "dpop" in rows else float("nan")
print(f"DPoP vs bearer over TLS (git {git}, {binary}, {rounds} rounds x {dur} s, wrk -t{threads} -c{conns}, medians)\n")
print("| target | req/s | p50 ms | p99 ms | non-2xx/errors |")
print("|---|---|---|---|---|")
for i, label in [("bearer", "RS256 bearer (wrk -H)"), ("bearer-lua", "RS256 bearer (wrk Lua request(), as dpop)"), ("dpop", "RS256 + cnf.jkt, new ES256 proof per request, replay cache in Redis")]:
    if i in rows:
        print(f"| {label} | {med(i, 0):,.0f} | {med(i, 1):.2f} | {med(i, 2):.2f} | {sum(v[3] for v in rows[i].values())} |")
print()
if "dpop" in rows and ("bearer" in rows or "bearer-lua" in rows):
    print(f"- dpop/bearer throughput, per-round median: {ratio('bearer-lua'):.2f}x against the Lua bearer client (fair), {ratio('bearer'):.2f}x against wrk -H (target >= 0.6x)")
    b, bl, d = (med(i, 0) if i in rows else float("nan") for i in ("bearer", "bearer-lua", "dpop"))
    print(f"- cost of a proof check at these rates: {1e6 / d - 1e6 / bl:.1f} us of wall time per request against the Lua bearer client, {1e6 / d - 1e6 / b:.1f} us against wrk -H (1/rps difference)")
else:
    print("- no ratio: this run had no bearer target (BENCH_TARGETS)")
bad = [l.strip() for l in open(notes) if l.strip()]
print("- rounds with non-2xx responses, socket errors or reused proofs: " + ("none" if not bad else "; ".join(bad)))
print(f"- proofs accepted: {accepted}; dpop keys in Redis now: {keys} (expire with the window); gateway RSS after the run: {int(rss) / 1024:.1f} MiB")
PY
log "saved to $OUT"
