#!/usr/bin/env bash
# bench/forward_auth.sh: the forward-auth decision listener (listen.authz) on loopback.
#   1. decisions/s for a valid RS256 token asked directly (wrk with X-Forwarded-Method/-Uri/
#      -Host, as Traefik and Caddy ask) vs jwtgate's own proxy path to the upstream, same
#      process, same route;
#   2. what nginx auth_request adds: nginx(auth_request -> jwtgate) -> upstream vs
#      nginx -> upstream directly (p50/p99, wrk --latency).
# Targets alternate within each round; the table shows medians over rounds. Prints one
# markdown table and saves it to bench/results/forward_auth-<timestamp>.md.
#
# Usage: bench/forward_auth.sh [--rounds N] [--duration S] [--keep-tmp]
#   defaults: 3 rounds of 10 s per target; env: JWTGATE_BIN (default target/release/jwtgate),
#   BENCH_CONNS (default 64), BENCH_WARMUP (s, default 1).
#
# Needs nginx, wrk, curl, openssl, python3 (run as root on Debian, missing ones are installed
# with apt-get, services kept stopped). Everything binds 127.0.0.1 on free ports in one mktemp
# folder; exactly the processes this script started are stopped on exit. The helpers below
# are bench/run.sh's (start_bg, wait_port, free_ports, render, parse_wrk), trimmed.
set -Eeuo pipefail

ROUNDS=3
DURATION=10
KEEP_TMP=0
CONNS=${BENCH_CONNS:-64}
WARMUP=${BENCH_WARMUP:-1}
ISSUER="bench"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '\n[bench] ERROR: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$ROUNDS'"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive number of seconds"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_CONNS must be a positive integer"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
JG=${JWTGATE_BIN:-$ROOT/target/release/jwtgate}

# --- processes and cleanup (as bench/run.sh) ----------------------------------------------

PIDS=()
TMP=""
POLICY_RC_CREATED=0
is_alive() { local st; [[ -r /proc/$1/stat ]] || return 1; st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1; [[ -n $st && $st != Z ]]; }
stop_pid() {
    local pid=$1 i
    if is_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do is_alive "$pid" || break; sleep 0.1; done
        is_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? i
    set +e
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    [[ $POLICY_RC_CREATED == 1 ]] && rm -f /usr/sbin/policy-rc.d
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then log "temporary files kept in $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { local logf=$1; shift; "$@" >"$logf" 2>&1 & LAST_PID=$!; PIDS+=("$LAST_PID"); }
wait_port() { # NAME PID PORT LOGFILE
    local i
    for ((i = 0; i < 150; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && return 0
        is_alive "$2" || { tail -n 20 "$4" >&2; die "$1 exited during startup (log: $4)"; }
        sleep 0.1
    done
    die "$1 did not listen on 127.0.0.1:$3 within 15 s (log: $4)"
}

# --- tools ----------------------------------------------------------------------------------

missing=()
for t in nginx wrk curl openssl python3; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $EUID -eq 0 ]] || die "missing: ${missing[*]}; install them (apt-get install ${missing[*]})"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; POLICY_RC_CREATED=1
    fi
    log "installing: ${missing[*]} (apt-get)"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2 ||
        die "apt-get install ${missing[*]} failed"
fi
if [[ ! -x $JG ]]; then
    [[ -z ${JWTGATE_BIN:-} ]] || die "JWTGATE_BIN=$JG is not an executable file"
    log "target/release/jwtgate is missing: building it (cargo build --release) ..."
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
elif [[ -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" -newer "$JG" -print -quit 2>/dev/null)" ]]; then
    log "WARNING: $JG is older than src/ or Cargo.toml; run 'cargo build --release' to bench the current code"
fi
log "oauth2-proxy is not measured: it cannot be built here (Debian's Go is 1.19; oauth2-proxy v7.15 needs Go >= 1.22)"

# --- set-up ----------------------------------------------------------------------------------

TMP=$(mktemp -d /tmp/jwtgate-bench-fa.XXXXXX)
read -r UP_PORT JG_HTTP_PORT JG_ADMIN_PORT JG_AUTHZ_PORT NA_PORT NP_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

render() { # TEMPLATE OUT NAME=VALUE...
    local tmpl=$1 out=$2 kv args=(); shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tmpl" >"$out"
    if grep -n '@[A-Z0-9_]*@' "$out" >&2; then die "unfilled placeholder in $out"; fi
}

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
h=$(printf '{"alg":"RS256","typ":"JWT","kid":"r1"}' | b64url)
p=$(printf '{"iss":"%s","sub":"alice","iat":%d,"exp":%d,"jti":"%s"}' "$ISSUER" "$now" "$((now + 7200))" "$(openssl rand -hex 8)" | b64url)
TOKEN="$h.$p.$(printf '%s' "$h.$p" | openssl dgst -sha256 -sign "$TMP/rsa.pem" -binary | b64url)"

mkdir -p "$TMP/up" "$TMP/nginx"
render "$BENCH/templates/upstream.nginx.conf" "$TMP/up/nginx.conf" PREFIX="$TMP/up" UP_PORT="$UP_PORT"
start_bg "$TMP/up/stderr.log" nginx -p "$TMP/up/" -e "$TMP/up/error.log" -c "$TMP/up/nginx.conf" -g 'daemon off;'
wait_port "upstream nginx" "$LAST_PID" "$UP_PORT" "$TMP/up/error.log"

render "$BENCH/templates/forward_auth.toml" "$TMP/gateway.toml" JG_HTTP_PORT="$JG_HTTP_PORT" \
    JG_ADMIN_PORT="$JG_ADMIN_PORT" JG_AUTHZ_PORT="$JG_AUTHZ_PORT" ISSUER="$ISSUER" \
    RSA_PUB="$TMP/rsa.pub.pem" UP_PORT="$UP_PORT"
"$JG" check -c "$TMP/gateway.toml" >"$TMP/check.log" 2>&1 || { cat "$TMP/check.log" >&2; die "jwtgate check failed"; }
start_bg "$TMP/jwtgate.log" env RUST_LOG=warn "$JG" run -c "$TMP/gateway.toml"
JG_PID=$LAST_PID
for ((i = 0; i < 200; i++)); do
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$JG_ADMIN_PORT/readyz" && break
    is_alive "$JG_PID" || { tail -n 20 "$TMP/jwtgate.log" >&2; die "jwtgate exited during startup"; }
    sleep 0.1
done
wait_port "jwtgate authz" "$JG_PID" "$JG_AUTHZ_PORT" "$TMP/jwtgate.log"

render "$BENCH/templates/forward_auth.nginx.conf" "$TMP/nginx/nginx.conf" PREFIX="$TMP/nginx" \
    UP_PORT="$UP_PORT" JG_AUTHZ_PORT="$JG_AUTHZ_PORT" NA_PORT="$NA_PORT" NP_PORT="$NP_PORT"
start_bg "$TMP/nginx/stderr.log" nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
wait_port "proxy nginx" "$LAST_PID" "$NA_PORT" "$TMP/nginx/error.log"
wait_port "proxy nginx" "$LAST_PID" "$NP_PORT" "$TMP/nginx/error.log"

# --- targets ---------------------------------------------------------------------------------

AUTH="Authorization: Bearer $TOKEN"
DESCRIBE=(-H "X-Forwarded-Method: GET" -H "X-Forwarded-Uri: /bench" -H "X-Forwarded-Host: bench")
IDS=(authz proxy nginx-authz nginx-direct)
declare -A LABEL=(
    [authz]="jwtgate authz listener, decision only (X-Forwarded-*)"
    [proxy]="jwtgate proxy path -> upstream"
    [nginx-authz]="nginx auth_request -> jwtgate authz, then -> upstream"
    [nginx-direct]="nginx -> upstream (no auth)"
)
declare -A URL=(
    [authz]="http://127.0.0.1:$JG_AUTHZ_PORT/"
    [proxy]="http://127.0.0.1:$JG_HTTP_PORT/bench"
    [nginx-authz]="http://127.0.0.1:$NA_PORT/bench"
    [nginx-direct]="http://127.0.0.1:$NP_PORT/bench"
)
headers_for() { # ID -> wrk/curl header arguments
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
for id in "${IDS[@]}"; do expect "$id" 200; done
expect authz 401 no-token
expect proxy 401 no-token
expect nginx-authz 401 no-token
log "checks passed: each target answers 200 with the token, the jwtgate ones 401 without"

parse_wrk() { # FILE -> "rps p50_ms p99_ms errors" (as bench/run.sh)
    awk '
    function ms(v) {
        if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
        if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
        if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
        return ""
    }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) err += $i + 0 }
    END { printf "%s %s %s %d\n", (rps == "" ? "-" : rps), (p50 == "" ? "-" : p50), (p99 == "" ? "-" : p99), err }
    ' "$1"
}

run_wrk() { # ID SECONDS OUT
    local args
    mapfile -d '' args < <(headers_for "$1")
    timeout -k 5 $(($2 + 30)) wrk -t1 -c"$CONNS" -d"${2}s" --latency "${args[@]}" "${URL[$1]}" >"$3" 2>&1 ||
        die "wrk failed for ${LABEL[$1]} (see $3)"
}

RES=$TMP/results.txt
: >"$RES"
for ((r = 1; r <= ROUNDS; r++)); do
    for id in "${IDS[@]}"; do
        [[ $WARMUP -gt 0 ]] && run_wrk "$id" "$WARMUP" "$TMP/warm.txt"
        run_wrk "$id" "$DURATION" "$TMP/wrk-$id-$r.txt"
        read -r rps p50 p99 err < <(parse_wrk "$TMP/wrk-$id-$r.txt")
        log "round $r/$ROUNDS: ${LABEL[$id]}: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $err"
        echo "$id $r $rps $p50 $p99 $err" >>"$RES"
    done
done

# --- report ----------------------------------------------------------------------------------

mkdir -p "$BENCH/results"
OUT=$BENCH/results/forward_auth-$(date +%Y%m%d-%H%M%S).md
GIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$RES" "$ROUNDS" "$DURATION" "$CONNS" "$GIT" \
    "${LABEL[authz]}" "${LABEL[proxy]}" "${LABEL[nginx-authz]}" "${LABEL[nginx-direct]}" <<'EOF' | tee "$OUT"
import statistics, sys
res, rounds, dur, conns, git = sys.argv[1:6]
labels = dict(zip(["authz", "proxy", "nginx-authz", "nginx-direct"], sys.argv[6:10]))
rows = {}
for line in open(res):
    i, r, rps, p50, p99, err = line.split()
    rows.setdefault(i, {})[int(r)] = (float(rps), float(p50), float(p99), int(err))
def med(i, k): return statistics.median(v[k] for v in rows[i].values())
def ratio(a, b, k):  # per round, then the median (drift between rounds cancels)
    return statistics.median(rows[a][r][k] / rows[b][r][k] for r in rows[a] if r in rows[b])
def delta(a, b, k):  # likewise for a difference
    return statistics.median(rows[a][r][k] - rows[b][r][k] for r in rows[a] if r in rows[b])
print(f"Forward-auth (git {git}, {rounds} rounds x {dur} s, wrk -t1 -c{conns} --latency, RS256, medians)\n")
print("| target | req/s | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|")
for i in ["authz", "proxy", "nginx-authz", "nginx-direct"]:
    errs = sum(v[3] for v in rows[i].values())
    print(f"| {labels[i]} | {med(i, 0):,.0f} | {med(i, 1):.2f} | {med(i, 2):.2f} | {errs} |")
print()
print(f"- decisions/s vs proxied requests/s (same round): {ratio('authz', 'proxy', 0):.2f}x")
print(f"- nginx auth_request adds {delta('nginx-authz', 'nginx-direct', 1):+.2f} ms at p50, "
      f"{delta('nginx-authz', 'nginx-direct', 2):+.2f} ms at p99 (p99 {ratio('nginx-authz', 'nginx-direct', 2):.2f}x); "
      f"req/s {ratio('nginx-authz', 'nginx-direct', 0):.2f}x of direct (per-round differences and ratios, medians)")
print("- oauth2-proxy: not measured (cannot be built here: Debian's Go is 1.19, oauth2-proxy v7.15 needs Go >= 1.22)")
EOF
log "saved to $OUT"
