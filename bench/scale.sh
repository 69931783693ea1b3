#!/usr/bin/env bash
# bench/scale.sh: issue 19's scale curves and cold start. jwtgate's throughput and RSS as one
# thing grows (routes, distinct tokens, revoked jtis in Redis, idle keep-alive connections),
# and first-sighting RS256 verification against HAProxy jwt_verify. Prints one markdown
# table, saves it to bench/results/scale-<timestamp>.md and draws docs/bench/scale-*.png.
#
# Usage: bench/scale.sh [--curves LIST] [--rounds N] [--duration S] [--routes LIST]
#          [--tokens LIST] [--revoked LIST] [--conns LIST] [--cold-tokens N]
#          [--plots DIR | --no-plots] [--keep-tmp]
#   --curves   routes,tokens,revoked,conns,cold (default: all)
#   --routes   route counts (default 1,100,1000,10000)
#   --tokens   distinct tokens (default 1,1000,10000,100000,1000000)
#   --revoked  revoked jtis in Redis (default 0,10000,1000000,10000000)
#   --conns    idle keep-alive connections (default 1000,5000,10000,19000)
#   --cold-tokens  RS256 tokens minted for the cold-start pass (default 40000)
#   defaults: 3 rounds of 4 s per point after a 1 s warm-up; plots in docs/bench.
#   env: JWTGATE_BIN (default target/release/jwtgate), BENCH_WARMUP (s, default 1),
#        BENCH_CONNS (wrk connections, default 64),
#        BENCH_TOKEN_CACHE_MIB (the gateway's server.token_cache_mib, default 64),
#        HYPER_FLOOR_BIN (the tokens curve's client control, default
#        target/release/examples/hyper_floor; without it the control goes to the upstream),
#        BENCH_TOKENS_CLIENT (the tokens curve's wrk Lua: prebuilt, the default, builds every
#        request string once; concat builds each request from three strings, as before s11-B),
#        BENCH_HUGETLB=1 (the gateway runs with _RJEM_MALLOC_CONF=thp:always: jemalloc asks
#        for transparent huge pages for its memory, README "Large token caches"); =0
#        (JWTGATE_HUGE_PAGES=off: never, whatever BENCH_TOKEN_CACHE_MIB); unset: the
#        gateway's own choice (on from token_cache_mib = 512 where the kernel's are madvise).
#
# Runs on Debian as root like bench/run.sh (apt-get installs what is missing; no service is
# started). Everything binds 127.0.0.1 (the idle connections come from 127.0.0.2, .3, ...)
# on free ports, lives in one mktemp folder, and exactly the processes started here are
# stopped on exit. Run it alone: `flock /work/.cargo.lock bench/scale.sh` on a shared machine.
set -Eeuo pipefail

ROUNDS=3
DURATION=4
CURVES=routes,tokens,revoked,conns,cold
P_ROUTES=1,100,1000,10000
P_TOKENS=1,1000,10000,100000,1000000
P_REVOKED=0,10000,1000000,10000000
P_CONNS=1000,5000,10000,19000
COLD_TOKENS=40000
KEEP_TMP=0
CONNS=${BENCH_CONNS:-64}
TOKEN_CACHE_MIB=${BENCH_TOKEN_CACHE_MIB:-64}
TOKENS_CLIENT=${BENCH_TOKENS_CLIENT:-prebuilt}
WARMUP=${BENCH_WARMUP:-1}
ISSUER="bench"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
JG=${JWTGATE_BIN:-$ROOT/target/release/jwtgate}
FLOOR=${HYPER_FLOOR_BIN:-$ROOT/target/release/examples/hyper_floor}
JG_ENV=()
case ${BENCH_HUGETLB:-} in
    1) JG_ENV=(_RJEM_MALLOC_CONF=thp:always) ;;
    0) JG_ENV=(JWTGATE_HUGE_PAGES=off) ;;
esac
PLOTS=$ROOT/docs/bench
# shellcheck source=lib/common.sh
source "$BENCH/lib/common.sh"

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --curves) CURVES=${2:?--curves needs a list}; shift 2 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --routes) P_ROUTES=${2:?}; shift 2 ;;
        --tokens) P_TOKENS=${2:?}; shift 2 ;;
        --revoked) P_REVOKED=${2:?}; shift 2 ;;
        --conns) P_CONNS=${2:?}; shift 2 ;;
        --cold-tokens) COLD_TOKENS=${2:?}; shift 2 ;;
        --plots) PLOTS=${2:?--plots needs a folder}; shift 2 ;;
        --no-plots) PLOTS=""; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive number of seconds"
[[ $COLD_TOKENS =~ ^[1-9][0-9]*$ ]] || die "--cold-tokens must be a positive integer"
[[ $TOKENS_CLIENT == prebuilt || $TOKENS_CLIENT == concat ]] || die "BENCH_TOKENS_CLIENT: prebuilt or concat, got '$TOKENS_CLIENT'"
for l in "$P_ROUTES" "$P_TOKENS" "$P_CONNS"; do
    [[ $l =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "a point list is positive integers separated by commas, got '$l'"
done
[[ $P_REVOKED =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--revoked: whole numbers separated by commas, got '$P_REVOKED'"
IFS=',' read -r -a WANT_CURVES <<<"$CURVES"
for c in "${WANT_CURVES[@]}"; do
    case $c in routes|tokens|revoked|conns|cold) ;; *) die "--curves: unknown curve '$c' (routes, tokens, revoked, conns, cold)" ;; esac
done
want() { local c; for c in "${WANT_CURVES[@]}"; do [[ $c == "$1" ]] && return 0; done; return 1; }

need_cmds nginx=nginx wrk=wrk curl=curl openssl=openssl python3=python3 timeout=coreutils ps=procps
if want cold; then need_cmds haproxy=haproxy; fi
if want revoked; then need_cmds redis-server=redis-server redis-cli=redis-server; fi
if [[ -n $PLOTS ]]; then
    python3 -c 'import matplotlib' 2>/dev/null || die "matplotlib is missing (apt-get install python3-matplotlib), or pass --no-plots"
fi
ensure_jwtgate

TMP=$(mktemp -d /tmp/jwtgate-scale.XXXXXX)
chmod 711 "$TMP" # nginx workers run as "nobody"
mkdir -p "$TMP/out" "$TMP/keys" "$TMP/certs" "$TMP/tokens"
chmod 700 "$TMP/keys"
POINTS_TSV=$TMP/points.tsv
: >"$POINTS_TSV"
log "work folder: $TMP"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/keys/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/keys/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
BENCH_HS_SECRET=$(openssl rand -hex 32)
export BENCH_HS_SECRET
"$JG" gen-cert --out "$TMP/certs" --host localhost >"$TMP/gen-cert.log" 2>&1 ||
    { cat "$TMP/gen-cert.log" >&2; die "jwtgate gen-cert failed"; }
CERT=$TMP/certs/localhost.crt
KEY=$TMP/certs/localhost.key
cat "$CERT" "$KEY" >"$TMP/certs/haproxy.pem"

read -r UP_PORT <<<"$(free_ports 1)"
start_nginx "nginx upstream" "$TMP/nginx-up" "$BENCH/templates/upstream.nginx.conf" "$UP_PORT" UP_PORT="$UP_PORT"
UP_PID=$LAST_PID

U=http://127.0.0.1
S=https://127.0.0.1
TOKEN_HS=$("$JG" token --alg HS256 --secret-env BENCH_HS_SECRET --kid h1 --iss "$ISSUER" --sub alice --ttl 7200 | tail -n1)
export BENCH_BEARER=$TOKEN_HS # rotate_tokens.lua's path mode sends it

# --- helpers -------------------------------------------------------------------------------

# mint_hs_jti JTI: an HS256 token with that jti (the revoked curve's check), made with python3
mint_hs_jti() {
    python3 - "$1" "$ISSUER" <<'EOF'
import base64, hashlib, hmac, json, os, sys, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=")
now = int(time.time())
h = b(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "h1"}).encode())
p = b(json.dumps({"iss": sys.argv[2], "sub": "alice", "iat": now, "exp": now + 3600, "jti": sys.argv[1]}).encode())
sig = b(hmac.new(os.environ["BENCH_HS_SECRET"].encode(), h + b"." + p, hashlib.sha256).digest())
print((h + b"." + p + b"." + sig).decode())
EOF
}

# status URL [TOKEN]: the HTTP status of one GET (TLS not verified)
status() {
    local args=(-sk -o /dev/null -w '%{http_code}' --max-time 10)
    [[ -n ${2:-} ]] && args+=(-H "Authorization: Bearer $2")
    curl "${args[@]}" "$1" || true
}
expect_status() { # WHAT URL WANT [TOKEN]
    local got
    got=$(status "$2" "${4:-}")
    [[ $got == "$3" ]] || die "check failed: $1: GET $2 answered $got, expected $3"
}

# gw_config OUT HTTP TLS ADMIN: scale.toml rendered; the caller appends routes (and more)
gw_config() {
    render "$BENCH/templates/scale.toml" "$1" JG_HTTP_PORT="$2" JG_TLS_PORT="$3" JG_ADMIN_PORT="$4" \
        CERT="$CERT" KEY="$KEY" ISSUER="$ISSUER" RSA_PUB="$TMP/rsa.pub.pem" \
        TOKEN_CACHE_MIB="$TOKEN_CACHE_MIB"
}
default_routes() { # `/open` without auth, everything else with a token
    printf '\n[[routes]]\nname = "open"\npath_prefix = "/open"\nupstreams = ["http://127.0.0.1:%s"]\nauth = "none"\n' "$UP_PORT"
    printf '\n[[routes]]\nname = "all"\npath_prefix = "/"\nupstreams = ["http://127.0.0.1:%s"]\nauth = "required"\n' "$UP_PORT"
}

stop_one() { stop_pid "$1"; forget_pid "$1"; }

# wrk_run OUT SECS URL [LUA_ARGS...]: wrk -t1 -cCONNS --latency, with lib/rotate_tokens.lua
# when LUA_ARGS are given, else with the HS256 token as a header
wrk_run() {
    local out=$1 secs=$2 url=$3 rc=0
    shift 3
    if [[ $# -gt 0 ]]; then
        timeout -k 5 $((secs + 120)) wrk -t1 "-c$CONNS" "-d${secs}s" --latency \
            -s "$BENCH/lib/rotate_tokens.lua" "$url" -- "$@" >"$out" 2>&1 || rc=$?
    else
        timeout -k 5 $((secs + 120)) wrk -t1 "-c$CONNS" "-d${secs}s" --latency \
            -H "Authorization: Bearer $TOKEN_HS" "$url" >"$out" 2>&1 || rc=$?
    fi
    return "$rc"
}

# rec CURVE X VARIANT ROUND RPS P99_MS RSS_KIB ERRORS EXTRA: one measurement
rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$POINTS_TSV"; }

# One point of a curve: a running gateway and what to send it.
declare -A P_CURVE=() P_X=() P_VAR=() P_PID=() P_URL=() P_LUA=() P_EXTRA=() P_HOOK=()
point() { # ID CURVE X VARIANT PID URL [LUA_ARGS tab-separated]
    P_CURVE[$1]=$2 P_X[$1]=$3 P_VAR[$1]=$4 P_PID[$1]=$5 P_URL[$1]=$6 P_LUA[$1]=${7:-}
}

# measure ID ROUND SECS: one wrk run of the point; records it (ROUND 0 = warm-up, not recorded)
measure() {
    local id=$1 r=$2 secs=$3 out rc=0 lua=() rps p50 p99 errs rss extra=${P_EXTRA[$1]:-}
    out=$TMP/out/${P_CURVE[$id]}-$id-r$r.txt
    [[ -n ${P_LUA[$id]} ]] && IFS=$'\t' read -r -a lua <<<"${P_LUA[$id]}"
    wrk_run "$out" "$secs" "${P_URL[$id]}" ${lua[@]+"${lua[@]}"} || rc=$?
    [[ $r == 0 ]] && return 0
    read -r rps p50 p99 errs <<<"$(parse_wrk "$out")"
    rss=$(rss_kib "${P_PID[$id]}")
    if [[ -n ${P_HOOK[$id]:-} ]]; then extra+="${extra:+;}$(${P_HOOK[$id]} "$id")"; fi
    if [[ $rc != 0 || $rps == - ]]; then
        log "[${P_CURVE[$id]}] ${P_X[$id]} ${P_VAR[$id]} round $r: FAILED (exit $rc), see $out"
        rec "${P_CURVE[$id]}" "${P_X[$id]}" "${P_VAR[$id]}" "$r" fail "" "$rss" 0 "$extra"
        return 0
    fi
    [[ $errs == 0 ]] || log "WARNING: [${P_CURVE[$id]}] ${P_X[$id]} ${P_VAR[$id]}: $errs errors (non-2xx or socket), see $out"
    log "[${P_CURVE[$id]}] $(commas "${P_X[$id]}") ${P_VAR[$id]} round $r/$ROUNDS: $rps req/s, RSS $((rss / 1024)) MiB"
    rec "${P_CURVE[$id]}" "${P_X[$id]}" "${P_VAR[$id]}" "$r" "$rps" "${p99/-/}" "$rss" "$errs" "$extra"
}

# rounds ID...: warm-up each point, then ROUNDS rounds, each starting one point further along
rounds() {
    local ids=("$@") n=$# r i
    if [[ $WARMUP -gt 0 ]]; then
        for id in "${ids[@]}"; do measure "$id" 0 "$WARMUP"; done
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < n; i++)); do
            measure "${ids[(i + r - 1) % n]}" "$r" "$DURATION"
            sleep 0.3
        done
    done
}

# --- curve "routes" --------------------------------------------------------------------------
# N routes /r0 ... /r<N-1> (auth required, one upstream); wrk sends GET /r<i>/x for i in turn
# (rotate_tokens.lua, path mode), the same HS256 token on every request, over HTTP. The route
# table is a hash map of prefixes per host, probed once per path segment from the longest
# (policy/route.rs): a lookup costs the same for any route count, so spreading the requests
# over every route is the case where the count can show (cache misses in a bigger table).

curve_routes() {
    local n ids=() id http tls admin cfg f i
    IFS=',' read -r -a pts <<<"$P_ROUTES"
    for n in "${pts[@]}"; do
        id=routes-$n
        read -r http tls admin <<<"$(free_ports 3)"
        cfg=$TMP/$id.toml
        gw_config "$cfg" "$http" "$tls" "$admin"
        f=$TMP/tokens/paths-$n.txt
        python3 - "$n" "$UP_PORT" "$cfg" "$f" <<'EOF'
import sys
n, up, cfg, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with open(cfg, "a") as c:
    for i in range(n):
        c.write(f'\n[[routes]]\nname = "r{i}"\npath_prefix = "/r{i}"\nupstreams = ["http://127.0.0.1:{up}"]\nauth = "required"\n')
with open(paths, "w") as p:
    for i in range(n):
        p.write(f"/r{i}/x\n")
EOF
        start_jwtgate "jwtgate ($id)" "$cfg" "$admin"
        point "$id" routes "$n" "HS256 HTTP, spread over all routes" "$LAST_PID" "$U:$http/" "$f"$'\t1\tpath'
        P_EXTRA[$id]="start_ms=$START_MS;idle_rss_kib=$(rss_kib "$LAST_PID")"
        expect_status "$id, first route" "$U:$http/r0/x" 200 "$TOKEN_HS"
        expect_status "$id, last route" "$U:$http/r$((n - 1))/x" 200 "$TOKEN_HS"
        expect_status "$id, no token" "$U:$http/r0/x" 401
        log "[routes] $(commas "$n") routes: ready in $START_MS ms, idle RSS $(($(rss_kib "$LAST_PID") / 1024)) MiB"
        ids+=("$id")
    done
    rounds "${ids[@]}"
    for id in "${ids[@]}"; do stop_one "${P_PID[$id]}"; done
}

# --- curve "tokens" --------------------------------------------------------------------------
# N distinct HS256 tokens (jwtgate token --count, distinct jti) sent in turn by
# rotate_tokens.lua over HTTP. HS256 so that the minting takes seconds (1,000,000 ES256 took
# 55 s, RS256 ~1.8 ms each) and the curve shows what the number of tokens costs (verified-token
# cache: SHA-256 key, lookup, insert, eviction) rather than signature maths. Each point starts
# with the cold pass: DURATION seconds from the first token, timed (every request a first
# sighting as long as fewer than N requests were sent: the table shows it only then); then
# the rotation continues until every token has been sent at least once (the warm-up), and the
# measured rounds continue it from there, so they see only tokens the gateway has seen.
# (wrk cannot stop after a number of requests: its Lua thread:stop() ends the sending, but the
# run still lasts -d seconds and req/s is divided by them.)
# The client control: the same script and token files (a symlink each, so its rotation keeps
# its own .pos file) sent to the plain hyper floor (examples/hyper_floor, HYPER_FLOOR_BIN),
# which ignores the Authorization header, or to the upstream when the floor is not built. A
# proxy at about the gateway's rate, so the load generator's share of the 2 cores is alike: if
# the control line falls at 1,000,000 tokens as the gateway's does, the client is the cause.
# It did with the concat client (s11-B: LuaJIT's garbage collector, a new string per request,
# p99 108 ms at 1,000,000 tokens for the control too), hence prebuilt (BENCH_TOKENS_CLIENT).

curve_tokens() {
    local n max=0 ids=() id http tls admin cfg f big t0 t1 out rps p99 errs sent secs
    local ctl_url ctl_pid="" ctl_name ctl_port mode=(token)
    [[ $TOKENS_CLIENT == prebuilt ]] && mode+=(prebuilt)
    IFS=',' read -r -a pts <<<"$P_TOKENS"
    for n in "${pts[@]}"; do ((n > max)) && max=$n; done
    if [[ -x $FLOOR ]]; then
        read -r ctl_port <<<"$(free_ports 1)"
        start_bg "hyper floor" "$TMP/hyper-floor.log" "$FLOOR" "127.0.0.1:$ctl_port" "127.0.0.1:$UP_PORT"
        ctl_pid=$LAST_PID
        wait_port "hyper floor" "$ctl_pid" "$ctl_port" "$TMP/hyper-floor.log"
        ctl_url=$U:$ctl_port/
        ctl_name="client control: the same script and tokens → bare hyper proxy (ignores them)"
    else
        log "WARNING: [tokens] $FLOOR is missing (cargo build --release --example hyper_floor): the client control goes to the upstream"
        ctl_url=$U:$UP_PORT/
        ctl_pid=$UP_PID
        ctl_name="client control: the same script and tokens → upstream direct"
    fi
    big=$TMP/tokens/hs256-$max.txt
    log "[tokens] minting $(commas "$max") HS256 tokens (jwtgate token --count) ..."
    t0=$(date +%s%N)
    "$JG" token --alg HS256 --secret-env BENCH_HS_SECRET --kid h1 --iss "$ISSUER" --sub alice --ttl 7200 \
        --count "$max" | grep -E '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' >"$big"
    t1=$(date +%s%N)
    [[ $(cut -d. -f2 "$big" | sort -u | wc -l) == "$max" ]] || die "jwtgate token --count $max: not $max distinct tokens"
    log "[tokens] minted in $(((t1 - t0) / 1000000)) ms"
    for n in "${pts[@]}"; do
        id=tokens-$n
        f=$TMP/tokens/hs256-first-$n.txt
        head -n "$n" "$big" >"$f"
        read -r http tls admin <<<"$(free_ports 3)"
        cfg=$TMP/$id.toml
        gw_config "$cfg" "$http" "$tls" "$admin"
        default_routes >>"$cfg"
        start_jwtgate "jwtgate ($id)" "$cfg" "$admin"
        point "$id" tokens "$n" "HS256 HTTP, warm (every token seen once before)" "$LAST_PID" "$U:$http/" \
            "$f"$'\t1\t'"$(IFS=$'\t'; echo "${mode[*]}")"
        expect_status "$id, first token" "$U:$http/" 200 "$(head -n1 "$f")"
        expect_status "$id, last token" "$U:$http/" 200 "$(tail -n1 "$f")"
        # the cold pass from the first token, then the rest of the tokens once (the warm-up)
        rm -f "$f.pos0"
        out=$TMP/out/tokens-$id-cold.txt
        wrk_run "$out" "$DURATION" "$U:$http/" "$f" 1 "${mode[@]}" || die "[tokens] cold pass of $id failed, see $out"
        read -r rps _ p99 errs <<<"$(parse_wrk "$out")"
        sent=$(wrk_requests "$out")
        if ((sent <= n)); then
            rec tokens "$n" "HS256 HTTP, cold (each request a first sighting)" 1 "$rps" "${p99/-/}" "$(rss_kib "$LAST_PID")" "$errs" ""
        fi
        # (the rotation continues from run to run: a short warm-up is topped up, at most 3 times)
        local w
        for ((w = 1; sent < n && w <= 4; w++)); do
            secs=$(((n - sent) * 12 / 10 / ${rps%.*} + 1))
            wrk_run "$TMP/out/tokens-$id-warm$w.txt" "$secs" "$U:$http/" "$f" 1 "${mode[@]}" ||
                die "[tokens] warm-up of $id failed, see $TMP/out/tokens-$id-warm$w.txt"
            sent=$((sent + $(wrk_requests "$TMP/out/tokens-$id-warm$w.txt")))
        done
        ((sent >= n)) || die "[tokens] warm-up of $id sent $sent requests, fewer than its $n tokens"
        log "[tokens] $(commas "$n") tokens: cold $rps req/s ($(commas "$sent") sent before the rounds), RSS $(($(rss_kib "$LAST_PID") / 1024)) MiB"
        ids+=("$id")
        ln -sfn "$f" "$f.ctl"
        point "ctl-$id" tokens "$n" "$ctl_name" "$ctl_pid" "$ctl_url" "$f.ctl"$'\t1\t'"$(IFS=$'\t'; echo "${mode[*]}")"
        ids+=("ctl-$id")
    done
    rounds "${ids[@]}"
    for id in "${ids[@]}"; do [[ $id == ctl-* ]] || stop_one "${P_PID[$id]}"; done
    if [[ -x $FLOOR ]]; then stop_one "$ctl_pid"; fi
}

# --- curve "revoked" -------------------------------------------------------------------------
# One redis-server per point (own port, no persistence) holding N revoked jtis under the
# gateway's own key names, `jwtgate:revoked:jti:bench:<jti>` (SPEC.md "Redis keys", scoped by
# the issuer's name, redis_store.rs), filled with DEBUG POPULATE (keys ...:0 to ...:N-1;
# their value is "value:<i>" and they have no TTL: the gateway asks only for its token's key).
# Two gateways per point, HS256 over HTTP with one token: the shipped cache_ttl_ms (1000: one
# MGET a second per token) and cache_ttl_ms = 0 (an MGET on every request).

REDIS_PORTS=()
redis_rss() { redis-cli -p "$1" INFO memory | tr -d '\r' | awk -F: '$1 == "used_memory_rss" {printf "%d", $2 / 1024}'; }

curve_revoked() {
    local n ids=() id port rpid ttl http tls admin cfg t0 t1 fill_ms tok
    IFS=',' read -r -a pts <<<"$P_REVOKED"
    for n in "${pts[@]}"; do
        read -r port <<<"$(free_ports 1)"
        start_bg "redis ($n)" "$TMP/redis-$n.log" redis-server --port "$port" --bind 127.0.0.1 --save "" \
            --appendonly no --enable-debug-command local
        rpid=$LAST_PID
        wait_port "redis-server" "$rpid" "$port" "$TMP/redis-$n.log"
        t0=$(date +%s%N)
        if ((n > 0)); then
            redis-cli -p "$port" DEBUG POPULATE "$n" jwtgate:revoked:jti:bench >/dev/null ||
                die "redis-cli DEBUG POPULATE failed (redis-server needs --enable-debug-command)"
        fi
        t1=$(date +%s%N)
        fill_ms=$(((t1 - t0) / 1000000))
        [[ $(redis-cli -p "$port" DBSIZE) == "$n" ]] || die "redis on $port holds $(redis-cli -p "$port" DBSIZE) keys, expected $n"
        log "[revoked] $(commas "$n") keys in $fill_ms ms; Redis RSS $(($(redis_rss "$port") / 1024)) MiB"
        for ttl in 1000 0; do
            id=revoked-$n-$ttl
            read -r http tls admin <<<"$(free_ports 3)"
            cfg=$TMP/$id.toml
            gw_config "$cfg" "$http" "$tls" "$admin"
            default_routes >>"$cfg"
            printf '\n[revocation]\nstore = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\ncache_ttl_ms = %s\n' "$port" "$ttl" >>"$cfg"
            start_jwtgate "jwtgate ($id)" "$cfg" "$admin"
            point "$id" revoked "$n" "HS256 HTTP, Redis store, cache_ttl_ms = $ttl" "$LAST_PID" "$U:$http/"
            REDIS_PORTS[$LAST_PID]=$port
            P_HOOK[$id]=revoked_hook
            P_EXTRA[$id]="start_ms=$START_MS;fill_ms=$fill_ms"
            expect_status "$id, valid token" "$U:$http/" 200 "$TOKEN_HS"
            if ((n > 0)); then
                tok=$(mint_hs_jti "$((n - 1))")
                expect_status "$id, token whose jti is the last populated key" "$U:$http/" 401 "$tok"
            fi
            log "[revoked] $(commas "$n") keys, cache_ttl_ms = $ttl: gateway ready in $START_MS ms"
            ids+=("$id")
        done
    done
    rounds "${ids[@]}"
    for id in "${ids[@]}"; do stop_one "${P_PID[$id]}"; done
}
revoked_hook() { echo "redis_rss_kib=$(redis_rss "${REDIS_PORTS[${P_PID[$1]}]}")"; }

# --- curve "conns" ---------------------------------------------------------------------------
# A fresh gateway per point and transport; lib/hold_conns.py opens N keep-alive connections
# (one GET /open each, then idle), at most 9,500 per holder, each holder from its own source
# address (127.0.0.2, .3, ...); then wrk measures HS256 requests (64 more connections, same
# transport) while they are held. The open-file limit of this machine (ulimit -Hn) caps N.

curve_conns() {
    local n transport id http tls admin cfg pid idle per port path hp k left chunk held ok failed
    local hpids=() limit f
    limit=$(ulimit -Hn)
    IFS=',' read -r -a pts <<<"$P_CONNS"
    for n in "${pts[@]}"; do
        if [[ $limit != unlimited ]] && ((n + CONNS + 200 > limit)); then
            die "[conns] $n connections need more than the open-file limit ($limit, ulimit -Hn) allows: lower --conns"
        fi
    done
    ulimit -n "$limit"
    for transport in http tls; do
        for n in "${pts[@]}"; do
            id=conns-$transport-$n
            read -r http tls admin <<<"$(free_ports 3)"
            cfg=$TMP/$id.toml
            gw_config "$cfg" "$http" "$tls" "$admin"
            default_routes >>"$cfg"
            start_jwtgate "jwtgate ($id)" "$cfg" "$admin"
            pid=$LAST_PID
            sleep 1
            idle=$(rss_kib "$pid")
            [[ $transport == http ]] && { port=$http; path=$U:$http/; } || { port=$tls; path=$S:$tls/; }
            hpids=()
            left=$n
            k=0
            while ((left > 0)); do
                chunk=$((left > 9500 ? 9500 : left))
                rm -f "$TMP/hold-$id-$k.ready"
                start_bg "hold_conns" "$TMP/hold-$id-$k.log" python3 "$BENCH/lib/hold_conns.py" --port "$port" \
                    --n "$chunk" --source "127.0.0.$((k + 2))" --path /open --hold 1800 \
                    --ready "$TMP/hold-$id-$k.ready" $([[ $transport == tls ]] && echo --tls)
                hpids+=("$LAST_PID")
                left=$((left - chunk))
                k=$((k + 1))
            done
            held=0 failed=0
            for ((k = 0; k < ${#hpids[@]}; k++)); do
                while [[ ! -s $TMP/hold-$id-$k.ready ]]; do
                    is_alive "${hpids[k]}" || { show_log "$TMP/hold-$id-$k.log"; die "[conns] holder $k of $id exited"; }
                    sleep 0.2
                done
                read -r ok f <"$TMP/hold-$id-$k.ready"
                held=$((held + ok)) failed=$((failed + f))
            done
            sleep 1
            per=$(rss_kib "$pid")
            log "[conns] $transport: $held idle connections held ($failed failed): RSS $((idle / 1024)) -> $((per / 1024)) MiB"
            point "$id" conns "$n" "$transport" "$pid" "$path"
            P_EXTRA[$id]="idle_rss_kib=$idle;held_rss_kib=$per;held=$held;failed=$failed"
            rounds "$id"
            for hp in "${hpids[@]}"; do stop_one "$hp"; done
            stop_one "$pid"
        done
    done
}

# --- curve "cold" ----------------------------------------------------------------------------
# First-sighting RS256 verification: COLD_TOKENS distinct RS256 tokens (jwtgate token --count,
# two minting processes), sent in turn over TLS from the first one for min(DURATION, 2) s:
# - jwtgate, a fresh process each round (empty verified-token cache), so every request
#   verifies a signature as long as fewer than COLD_TOKENS requests were sent (checked);
# - HAProxy 2.6 jwt_verify (bench/templates/haproxy-jwt.cfg): the same tokens, the same way
#   (it keeps no cache, so it verifies every request anyway);
# - jwtgate, the same process, one token sent again and again (cached), for scale.
# The rows alternate within each round.

curve_cold() {
    local half f one a b ha_http ha_tls ha_rs ha_hs ha_pid http tls admin cfg r order id out rps p99 errs
    local jg_pid secs sent note
    secs=$((DURATION < 2 ? DURATION : 2))
    f=$TMP/tokens/rs256-$COLD_TOKENS.txt
    half=$((COLD_TOKENS / 2))
    log "[cold] minting $(commas "$COLD_TOKENS") RS256 tokens (jwtgate token --count, 2 processes) ..."
    local mint=("$JG" token --alg RS256 --key "$TMP/keys/rsa.pem" --kid r1 --iss "$ISSUER" --sub alice --ttl 7200)
    "${mint[@]}" --count "$half" >"$f.a" &
    a=$!
    "${mint[@]}" --count $((COLD_TOKENS - half)) >"$f.b" &
    b=$!
    wait "$a" || die "[cold] jwtgate token --count failed"
    wait "$b" || die "[cold] jwtgate token --count failed"
    cat "$f.a" "$f.b" | grep -E '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' >"$f"
    [[ $(cut -d. -f2 "$f" | sort -u | wc -l) == "$COLD_TOKENS" ]] || die "[cold] not $COLD_TOKENS distinct tokens"
    one=$TMP/tokens/rs256-one.txt
    head -n1 "$f" >"$one"

    read -r ha_http ha_tls ha_rs ha_hs http tls admin <<<"$(free_ports 7)"
    mkdir -p "$TMP/haproxy"
    render "$BENCH/templates/haproxy.cfg" "$TMP/haproxy/haproxy.cfg" UP_PORT="$UP_PORT" \
        HA_HTTP_PORT="$ha_http" HA_TLS_PORT="$ha_tls" HAPROXY_PEM="$TMP/certs/haproxy.pem"
    render "$BENCH/templates/haproxy-jwt.cfg" "$TMP/haproxy/jwt.cfg" HA_RS_TLS_PORT="$ha_rs" \
        HA_HS_PORT="$ha_hs" HAPROXY_PEM="$TMP/certs/haproxy.pem" RSA_PUB="$TMP/rsa.pub.pem" ISSUER="$ISSUER"
    cat "$TMP/haproxy/jwt.cfg" >>"$TMP/haproxy/haproxy.cfg"
    start_bg haproxy "$TMP/haproxy/stderr.log" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
    ha_pid=$LAST_PID
    wait_port haproxy "$ha_pid" "$ha_rs" "$TMP/haproxy/stderr.log"
    expect_status "HAProxy jwt_verify RS256, a token" "$S:$ha_rs/" 200 "$(tail -n1 "$f")"
    expect_status "HAProxy jwt_verify RS256, no token" "$S:$ha_rs/" 401

    cfg=$TMP/cold.toml
    gw_config "$cfg" "$http" "$tls" "$admin"
    default_routes >>"$cfg"
    # cold_run LABEL URL FILE PID ROUND [EXTRA]: one timed pass from the file's first line
    cold_run() {
        rm -f "$3.pos0"
        out=$TMP/out/cold-$5-$RANDOM.txt
        wrk_run "$out" "$secs" "$2" "$3" 1 token || die "[cold] $1: wrk failed, see $out"
        read -r rps _ p99 errs <<<"$(parse_wrk "$out")"
        sent=$(wrk_requests "$out")
        note=${6:-}
        if [[ $3 == "$f" ]] && ((sent > COLD_TOKENS)); then
            note+="${note:+;}repeats=$((sent - COLD_TOKENS))"
            log "WARNING: [cold] $1 sent $sent requests, more than the $COLD_TOKENS tokens: raise --cold-tokens"
        fi
        rec cold "$COLD_TOKENS" "$1" "$5" "$rps" "${p99/-/}" "$(rss_kib "$4")" "$errs" "$note"
        log "[cold] round $5 $1: $rps req/s ($sent requests)"
    }
    for ((r = 1; r <= ROUNDS; r++)); do
        ((r % 2)) && order=(jg ha) || order=(ha jg)
        for id in "${order[@]}"; do
            if [[ $id == ha ]]; then
                cold_run "HAProxy jwt_verify RS256 TLS, the same tokens" "$S:$ha_rs/" "$f" "$ha_pid" "$r"
                continue
            fi
            start_jwtgate "jwtgate (cold)" "$cfg" "$admin"
            jg_pid=$LAST_PID
            cold_run "jwtgate RS256 TLS, first sighting (fresh process)" "$S:$tls/" "$f" "$jg_pid" "$r" "start_ms=$START_MS"
            cold_run "jwtgate RS256 TLS, one token (cached)" "$S:$tls/" "$one" "$jg_pid" "$r"
            stop_one "$jg_pid"
        done
    done
    stop_one "$ha_pid"
}

# --- run -------------------------------------------------------------------------------------

T_START=$(date +%s)
for c in "${WANT_CURVES[@]}"; do
    log "=== curve $c"
    "curve_$c"
done
T_END=$(date +%s)

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH/results"
RESULT=$BENCH/results/scale-$STAMP.md
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
dirty=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -c1)
{
    echo "# jwtgate scale curves $STAMP"
    echo
    echo "- jwtgate: $JG (git $rev${dirty:+, uncommitted changes in src/Cargo}, built $(date -u -r "$JG" +%Y-%m-%dT%H:%MZ))"
    echo "- server.token_cache_mib = $TOKEN_CACHE_MIB (BENCH_TOKEN_CACHE_MIB)"
    if [[ ${#JG_ENV[@]} -gt 0 ]]; then echo "- gateway environment: ${JG_ENV[*]} (BENCH_HUGETLB)"; fi
    if want tokens; then echo "- tokens curve client: lib/rotate_tokens.lua, $TOKENS_CLIENT (BENCH_TOKENS_CLIENT)"; fi
    echo "- machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), Linux $(uname -r), ulimit -Hn $(ulimit -Hn)"
    echo "- load: $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}') -t1 -c$CONNS --latency; $ROUNDS round(s) of ${DURATION}s per point after a ${WARMUP}s warm-up, points alternating within each round (conns: one point at a time)"
    echo "- upstream: nginx return 200 (2 workers); gateway: worker_threads = 2; the whole run took $((T_END - T_START)) s"
    echo
    python3 "$BENCH/lib/scale_report.py" "$POINTS_TSV" "$PLOTS"
} >"$TMP/report.md"
cp "$TMP/report.md" "$RESULT"
cat "$TMP/report.md"
log "saved to ${RESULT#"$ROOT"/}${PLOTS:+; plots in ${PLOTS#"$ROOT"/}}"
