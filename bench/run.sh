#!/usr/bin/env bash
# bench/run.sh: loopback benchmark of jwtgate against nginx and HAProxy (throughput, latency,
# JWT verification cost, memory per connection); prints one markdown table and saves it to
# bench/results/<timestamp>.md.
#
# Usage: bench/run.sh [--rounds N] [--duration S] [--only SECTION[,SECTION...]] [--keep-tmp]
#   SECTION: plain | tls | h2 | auth | mem | tokens | revocation | refresh | features | login
#            | rules | stores | tracing | free
#            (default: all)
#            peers  = no jwtgate rows (self-test of the peers; needs no Rust build); alone it
#                     means every section, with others (peers,auth) only those
#   defaults: 3 rounds of 10 s per target.
#   env: JWTGATE_BIN (default target/release/jwtgate), BENCH_WARMUP (s, default 1),
#        BENCH_CONNS (default 64), BENCH_MEM_CONNS (default 1000), BENCH_MANY_TOKENS (tokens
#        section, default 1000000), BENCH_PROPAGATION_N (revocation section, default 1000),
#        HYPER_FLOOR_BIN (free section, default target/release/examples/hyper_floor).
#
# Runs on Debian as root: missing tools are installed with apt-get (nginx, haproxy, wrk,
# nghttp2-client for h2load, curl, openssl, python3, redis-server for the revocation section)
# without starting their system services.
# Everything binds 127.0.0.1 on free ports, lives in one mktemp folder, and exactly the
# processes this script started are stopped on exit. Close other heavy work first: on a
# 2-core machine the load generator, the upstream and the proxy already share the cores.
set -Eeuo pipefail

ROUNDS=3
DURATION=10
ONLY=""
KEEP_TMP=0
CONNS=${BENCH_CONNS:-64}
WARMUP=${BENCH_WARMUP:-1}
MEM_CONNS=${BENCH_MEM_CONNS:-1000}
MANY_TOKENS=${BENCH_MANY_TOKENS:-1000000}
PROPAGATION_N=${BENCH_PROPAGATION_N:-1000}
ISSUER="bench"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
JG=${JWTGATE_BIN:-$ROOT/target/release/jwtgate}
# shellcheck source=lib/common.sh
source "$BENCH/lib/common.sh"

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --only) ONLY=${2:?--only needs a section}; shift 2 ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$ROUNDS'"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive number of seconds, got '$DURATION'"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a whole number of seconds"
[[ $MANY_TOKENS =~ ^[1-9][0-9]*$ ]] || die "BENCH_MANY_TOKENS must be a positive integer"
[[ $PROPAGATION_N =~ ^[1-9][0-9]*$ ]] || die "BENCH_PROPAGATION_N must be a positive integer"

USE_JG=1
ALL_SECTIONS=(plain tls h2 auth mem tokens revocation refresh features login rules stores tracing free)
SECTIONS=("${ALL_SECTIONS[@]}")
if [[ -n $ONLY ]]; then
    SECTIONS=()
    IFS=',' read -r -a only_list <<<"$ONLY"
    for s in "${only_list[@]}"; do
        case $s in
            plain|tls|h2|auth|mem|tokens|revocation|refresh|features|login|rules|stores|tracing|free) SECTIONS+=("$s") ;;
            peers) USE_JG=0 ;;
            *) die "--only: unknown section '$s' (plain, tls, h2, auth, mem, tokens, revocation, refresh, features, login, rules, stores, tracing, free, peers)" ;;
        esac
    done
    [[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=("${ALL_SECTIONS[@]}")
fi
want_section() { local s; for s in "${SECTIONS[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

# --- tools -------------------------------------------------------------------------------

ensure_tools() {
    local t
    need_cmds nginx=nginx haproxy=haproxy wrk=wrk curl=curl openssl=openssl python3=python3 \
        timeout=coreutils ps=procps
    HAVE_H2LOAD=1
    if ! command -v h2load >/dev/null 2>&1; then
        if want_section h2 || want_section free; then
            apt_install nghttp2-client || log "WARNING: could not install nghttp2-client (h2load)"
        fi
        command -v h2load >/dev/null 2>&1 || HAVE_H2LOAD=0
    fi
    if [[ $USE_JG == 1 ]] && { want_section revocation || want_section stores || want_section free; }; then
        if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
            apt_install redis-server || die "apt-get install redis-server failed (the revocation section needs it)"
        fi
        for t in redis-server redis-cli; do command -v "$t" >/dev/null 2>&1 || die "$t still missing after install"; done
    fi
}

# --- helpers -----------------------------------------------------------------------------

mint_token_jwtgate() { # ALG KID (--key FILE | --secret-env VAR): the JWT is the last line of stdout
    local alg=$1 kid=$2 out tok
    shift 2
    out=$("$JG" token --alg "$alg" "$@" --kid "$kid" --iss "$ISSUER" --sub alice --ttl 3600 2>"$TMP/token.err") ||
        { cat "$TMP/token.err" >&2; die "jwtgate token --alg $alg failed"; }
    tok=$(printf '%s\n' "$out" | tail -n 1 | tr -d '[:space:]')
    [[ $tok =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] ||
        die "jwtgate token --alg $alg: last line of stdout is not a JWT: '$tok'"
    printf '%s\n' "$tok"
}

tamper() { # flip one character in the middle of the signature
    local t=$1 sig=${1##*.} i c
    i=$((${#sig} / 2))
    c=${sig:i:1}
    [[ $c == A ]] && c=B || c=A
    printf '%s.%s%s%s\n' "${t%.*}" "${sig:0:i}" "$c" "${sig:i+1}"
}

# expect NAME URL STATUS [TOKEN] [h2]: one curl request must answer STATUS (and HTTP/2 if h2)
expect() {
    local name=$1 url=$2 want=$3 token=${4:-} proto=${5:-} args=(-sk -o "$TMP/curl.body" -w '%{http_code} %{http_version}' --max-time 10)
    [[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
    [[ $proto == h2 ]] && args+=(--http2) || args+=(--http1.1)
    local got
    got=$(curl "${args[@]}" "$url" 2>&1) || true
    if [[ ${got%% *} != "$want" ]]; then
        die "check failed: $name: GET $url answered '$got', expected HTTP $want; body: $(head -c 300 "$TMP/curl.body" 2>/dev/null)"
    fi
    if [[ $proto == h2 && ${got#* } != 2 ]]; then
        die "check failed: $name: GET $url did not negotiate HTTP/2 (got HTTP/${got#* })"
    fi
}

# --- load generators ----------------------------------------------------------------------

# parse_h2load FILE -> "rps mean_ms max_ms errors" (h2load prints no percentiles)
parse_h2load() {
    awk '
    function ms(v) {
        if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
        if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
        if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
        return ""
    }
    /^finished in/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^req\/s/) rps = $i }
    /^requests:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^(failed|timeout)/) err += $i }
    /^status codes:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^[345]xx/) bad += $i }
    /^time for request:/ { mean = ms($6); max = ms($5) }
    END {
        if (bad > err) err = bad
        printf "%s %s %s %d\n", (rps == "" ? "-" : rps), (mean == "" ? "-" : mean), (max == "" ? "-" : max), err
    }
    ' "$1"
}

declare -A T_LABEL=() T_TOOL=() T_URL=() T_TOKEN=()
add_target() { T_LABEL[$1]=$2; T_TOOL[$1]=$3; T_URL[$1]=$4; T_TOKEN[$1]=${5:-}; }
# Optional per target (wrk only): T_LUA = a wrk Lua script (lib/*.lua), T_LUA_ARGS = its
# arguments, tab-separated; T_NOTE = a note for the target's table row; T_HOOK = a function
# called as `HOOK pre ID OUTFILE` before and `HOOK post ID OUTFILE EXIT_STATUS` after every run
# (warm-up included: LOAD_ROUND is 0 then, else the round number); T_SECS = a shorter run
# length for this target than --duration (the notes say why).
declare -A T_LUA=() T_LUA_ARGS=() T_NOTE=() T_HOOK=() T_SECS=()
LOAD_ROUND=0

RUNS_TSV=""
# load ID SECONDS OUTFILE: run the target's load tool (and its hooks); returns its exit status
load() {
    local id=$1 out=$3 hook=${T_HOOK[$1]:-} rc=0
    if [[ -n $hook ]]; then "$hook" pre "$id" "$out"; fi
    load_tool "$@" || rc=$?
    if [[ -n $hook ]]; then "$hook" post "$id" "$out" "$rc"; fi
    return "$rc"
}

load_tool() {
    local id=$1 secs=$2 out=$3 tool=${T_TOOL[$1]} url=${T_URL[$1]} token=${T_TOKEN[$1]} args=() lua_args=()
    local limit=$((secs + 60))
    case $tool in
        wrk)
            args=(-t1 "-c$CONNS" "-d${secs}s" --latency)
            [[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
            if [[ -n ${T_LUA[$id]:-} ]]; then
                IFS=$'\t' read -r -a lua_args <<<"${T_LUA_ARGS[$id]:-}"
                timeout -k 5 "$limit" wrk "${args[@]}" -s "${T_LUA[$id]}" "$url" -- "${lua_args[@]}" >"$out" 2>&1
            else
                timeout -k 5 "$limit" wrk "${args[@]}" "$url" >"$out" 2>&1
            fi
            ;;
        h2load|h2load-h1)
            args=("-c$CONNS" -m1 -t1 -D "$secs")
            [[ $tool == h2load-h1 ]] && args+=(--h1)
            [[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
            timeout -k 5 "$limit" h2load "${args[@]}" "$url" >"$out" 2>&1
            ;;
        *) die "unknown load tool $tool" ;;
    esac
}

record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RUNS_TSV"; }

# run_section SECTION ID...: warm every target up, then ROUNDS rounds; each round runs every
# target once, starting one further along the list each round (so no target is always first).
run_section() {
    local section=$1 ids=() id r i n off out rc parsed rps a b errs kind
    shift
    for id in "$@"; do
        if [[ -n ${T_TOOL[$id]:-} ]]; then ids+=("$id"); fi
    done
    n=${#ids[@]}
    [[ $n -gt 0 ]] || return 0
    LOAD_ROUND=0
    if [[ $WARMUP -gt 0 ]]; then
        log "[$section] warm-up ${WARMUP}s per target"
        for id in "${ids[@]}"; do load "$id" "$WARMUP" "$TMP/out/warmup-$section-$id.txt" || true; done
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        LOAD_ROUND=$r
        off=$(((r - 1) % n))
        for ((i = 0; i < n; i++)); do
            id=${ids[(i + off) % n]}
            out="$TMP/out/$section-$id-r$r.txt"
            rc=0
            load "$id" "${T_SECS[$id]:-$DURATION}" "$out" || rc=$?
            case ${T_TOOL[$id]} in wrk) parsed=$(parse_wrk "$out"); kind=wrk ;; *) parsed=$(parse_h2load "$out"); kind=h2load ;; esac
            read -r rps a b errs <<<"$parsed"
            if [[ $rc != 0 || $rps == - ]]; then
                log "[$section] round $r ${T_LABEL[$id]}: FAILED (exit $rc): $(grep -m1 -iE 'error|fail|unable|refused' "$out" || tail -n1 "$out")"
                record "$section" "$id" "${T_LABEL[$id]}" "$r" fail "" "" "" 0 "load tool failed (exit $rc), see $out"
            else
                [[ $a == - ]] && a=""
                [[ $b == - ]] && b=""
                log "[$section] round $r/$ROUNDS ${T_LABEL[$id]}: ${rps} req/s$([[ $errs == 0 ]] || echo ", WARNING: $errs errors")"
                record "$section" "$id" "${T_LABEL[$id]}" "$r" "$kind" "$rps" "$a" "$b" "$errs" "${T_NOTE[$id]:-}"
            fi
            sleep 0.5
        done
    done
}

skip_row() { record "$1" "$2" "$3" 0 skip "" "" "" 0 "$4"; }
# info_row SECTION ID LABEL NOTE [RPS] [LAT_A_MS] [LAT_B_MS]: a measured fact, not a load run
info_row() { record "$1" "$2" "$3" 0 info "${5:-}" "${6:-}" "${7:-}" 0 "$4"; }



# --- section "tokens": many distinct tokens in rotation -----------------------------------

declare -A MINT_SECS=()
MINTED=""
# mint_many ALG KID KEYFILE N [TAG]: N tokens (distinct jti, sub alice, ttl 7200 s), one per line,
# in $TMP/tokens/ALG-N[-TAG].txt; minted once per run, then reused. Sets MINTED to the file and
# MINT_SECS[ALG-N] to the seconds `jwtgate token --count N` took.
mint_many() {
    local alg=$1 kid=$2 keyf=$3 n=$4 tag=${5:-} f t0 t1 got distinct
    f=$TMP/tokens/$alg-$n${tag:+-$tag}.txt
    MINTED=$f
    [[ -s $f ]] && return 0
    mkdir -p "$TMP/tokens"
    log "[mint] minting $(commas "$n") $alg tokens (jwtgate token --count $n) ..."
    t0=$(date +%s.%N)
    timeout 3600 "$JG" token --alg "$alg" --key "$keyf" --kid "$kid" --iss "$ISSUER" --sub alice \
        --ttl 7200 --count "$n" >"$f.raw" 2>"$f.err" ||
        { cat "$f.err" >&2; die "jwtgate token --alg $alg --count $n failed (or took over an hour)"; }
    t1=$(date +%s.%N)
    grep -E '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' "$f.raw" >"$f.tmp" || true
    got=$(wc -l <"$f.tmp")
    [[ $got == "$n" ]] ||
        die "jwtgate token --alg $alg --count $n printed $got JWT lines (stdout had $(wc -l <"$f.raw") lines), expected $n"
    distinct=$(cut -d. -f2 "$f.tmp" | sort -u | wc -l)
    [[ $distinct == "$n" ]] || die "jwtgate token --alg $alg --count $n: only $distinct distinct payloads"
    rm -f "$f.raw"
    mv "$f.tmp" "$f"
    MINT_SECS[$alg-$n]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
    log "[mint] minted $(commas "$n") $alg tokens in ${MINT_SECS[$alg-$n]} s"
}

# lua_rotation ID LABEL URL TOKEN_FILE NOTE: a wrk target sending the tokens of the file in turn
lua_rotation() {
    add_target "$1" "$2" wrk "$3"
    T_LUA[$1]=$BENCH/lib/rotate_tokens.lua
    # 1 = wrk's -t; prebuilt: the request strings built once, so the client's cost per request
    # does not grow with the number of tokens (docs/BENCHMARKS.md "s11-B")
    T_LUA_ARGS[$1]="$4"$'\t'1$'\t'token$'\t'prebuilt
    T_NOTE[$1]=$5
}

# requests_sent ID: requests wrk completed for ID in this run (warm-up and rounds)
requests_sent() {
    local id=$1 f total=0 n
    for f in "$TMP/out/warmup-tokens-$id.txt" "$TMP"/out/tokens-"$id"-r*.txt; do
        [[ -f $f ]] || continue
        n=$(wrk_requests "$f")
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

section_tokens() {
    local url=$S:$JGA_TLS_PORT/ many=$MANY_TOKENS many_label f_es1 f_es10k f_many f_rs1 f_rs10k
    local probe=$TMP/out/tokens-probe.txt rc=0 t0 t1 loaded_s f note="" err mint_note ids
    local same="wrk Lua rotation (lib/rotate_tokens.lua), the same script on every row"
    mint_many ES256 e1 "$TMP/keys/ec.pem" 1
    f_es1=$MINTED
    mint_many ES256 e1 "$TMP/keys/ec.pem" 10000
    f_es10k=$MINTED
    mint_many ES256 e1 "$TMP/keys/ec.pem" "$many"
    f_many=$MINTED
    mint_many RS256 r1 "$TMP/keys/rsa.pem" 1
    f_rs1=$MINTED
    mint_many RS256 r1 "$TMP/keys/rsa.pem" 10000
    f_rs10k=$MINTED

    # Can wrk's LuaJIT hold the big file? One short probe run (1 connection, 1 s) tells.
    log "[tokens] probing wrk with $(commas "$many") tokens in one Lua state ..."
    t0=$(date +%s.%N)
    timeout -k 5 600 wrk -t1 -c1 -d1s -s "$BENCH/lib/rotate_tokens.lua" "$url" -- "$f_many" 1 token prebuilt >"$probe" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    loaded_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a - 1}')
    if [[ $rc == 0 ]] && grep -q "holds $many of $many tokens" "$probe"; then
        many_label=$(commas "$many")
        log "[tokens] wrk holds $many_label tokens ($(grep -o 'Lua heap [0-9]* MiB' "$probe" || true); loading took ~${loaded_s} s)"
    else
        err=$(grep -m1 -iE 'error|memory|panic' "$probe" || true)
        [[ -n $err ]] || err=$(tail -n1 "$probe")
        note="wrk's Lua could not hold $(commas "$many") tokens (exit $rc: $(tr '|\t' '/ ' <<<"$err")); fell back to 200,000"
        log "WARNING: [tokens] $note"
        many=200000
        f=$TMP/tokens/ES256-$many-from-big.txt
        head -n "$many" "$f_many" >"$f"
        f_many=$f
        many_label="200,000 (fallback)"
    fi

    lua_rotation jg-tok-es-1 "jwtgate ES256 TLS, 1 token" "$url" "$f_es1" "$same"
    lua_rotation jg-tok-es-10k "jwtgate ES256 TLS, 10,000 distinct tokens in rotation" "$url" "$f_es10k" "$same"
    lua_rotation jg-tok-es-1m "jwtgate ES256 TLS, $many_label distinct tokens in rotation" "$url" "$f_many" "$same${note:+; $note}"
    lua_rotation jg-tok-rs-1 "jwtgate RS256 TLS, 1 token" "$url" "$f_rs1" "$same"
    lua_rotation jg-tok-rs-10k "jwtgate RS256 TLS, 10,000 distinct tokens in rotation" "$url" "$f_rs10k" "$same"
    ids=(jg-tok-es-1 jg-tok-es-10k jg-tok-es-1m jg-tok-rs-1 jg-tok-rs-10k)
    for f in "$f_es1" "$f_es10k" "$f_many" "$f_rs1" "$f_rs10k"; do
        expect "jwtgate, first token of ${f##*/}" "$url" 200 "$(head -n1 "$f")"
        expect "jwtgate, last token of ${f##*/}" "$url" 200 "$(tail -n1 "$f")"
        expect "jwtgate, first token of ${f##*/} with a bad signature" "$url" 401 "$(tamper "$(head -n1 "$f")")"
    done

    run_section tokens "${ids[@]}"

    mint_note="ES256: 10,000 in ${MINT_SECS[ES256-10000]} s, $(commas "$MANY_TOKENS") in ${MINT_SECS[ES256-$MANY_TOKENS]} s"
    mint_note+=" ($(awk -v n="$MANY_TOKENS" -v s="${MINT_SECS[ES256-$MANY_TOKENS]}" 'BEGIN {printf "%.0f", (s > 0 ? n / s : 0)}') tokens/s)"
    mint_note+="; RS256: 10,000 in ${MINT_SECS[RS256-10000]} s; each with jwtgate token --count N, then checked for N distinct payloads"
    info_row tokens mint "minting the token files (once per run, cached in the tmp folder)" "$mint_note"
    info_row tokens rotation "tokens sent per row in this run (warm-up and rounds, the rotation continues across runs)" \
        "$(for id in "${ids[@]}"; do printf '%s: %s requests; ' "${T_LABEL[$id]#jwtgate }" "$(commas "$(requests_sent "$id")")"; done)wrk loaded the big file in ~${loaded_s} s before each run (not timed)"
}

# --- section "revocation": memory vs Redis store, and propagation between replicas ---------

REDIS_PORT=""
redis_cmdstats() { # "command calls" per line from INFO commandstats (our own INFO calls left out)
    redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
        awk -F'[:,=]' '/^cmdstat_/ && $1 != "cmdstat_info" { sub(/^cmdstat_/, "", $1); print $1, $3 }'
}

# hook_redis_cmds pre|post ID OUT [RC]: Redis commands during one measured run, per request served
hook_redis_cmds() {
    local phase=$1 out=$3 rc=${4:-0} reqs
    if [[ $phase == pre ]]; then
        redis_cmdstats >"$out.cmds-pre" || die "redis-cli INFO commandstats failed"
        return 0
    fi
    redis_cmdstats >"$out.cmds-post" || die "redis-cli INFO commandstats failed"
    [[ $LOAD_ROUND -gt 0 && $rc == 0 ]] || return 0
    reqs=$(wrk_requests "$out")
    awk -v reqs="${reqs:-0}" -v round="$LOAD_ROUND" '
        NR == FNR { pre[$1] = $2; next }
        {
            d = $2 - pre[$1]
            if (d > 0) {
                total += d
                if ($1 == "mget") mget += d
                detail = detail sprintf("%s%s %d", (detail == "" ? "" : ", "), toupper($1), d)
            }
        }
        END { printf "%s\t%s\t%d\t%d\t%s\n", round, reqs, total, mget, detail }
    ' "$out.cmds-pre" "$out.cmds-post" >>"$TMP/revocation-cmds.tsv"
}

# start_auth_variant NAME CONFIG_OUT TLS HTTP ADMIN [FRAGMENT NAME=VALUE...]: a fresh jwtgate
# with gateway-auth.toml, plus the rendered FRAGMENT template appended when given -> LAST_PID
start_auth_variant() {
    local name=$1 cfg=$2 tls=$3 http=$4 admin=$5
    shift 5
    render "$BENCH/templates/gateway-auth.toml" "$cfg" JG_TLS_PORT="$tls" JG_HTTP_PORT="$http" \
        JG_ADMIN_PORT="$admin" CERT="$CERT" KEY="$KEY" UP_PORT="$UP_PORT" ISSUER="$ISSUER" \
        RSA_PUB="$TMP/rsa.pub.pem" EC_PUB="$TMP/ec.pub.pem"
    if [[ $# -gt 0 ]]; then
        local frag=$1
        shift
        render "$BENCH/templates/$frag" "$cfg.part" "$@"
        cat "$cfg.part" >>"$cfg"
        rm -f "$cfg.part"
    fi
    start_jwtgate "$name" "$cfg" "$admin"
}

# start_redis_gateway NAME CONFIG_OUT TLS HTTP ADMIN CACHE_TTL_MS: gateway-auth.toml on the Redis store
start_redis_gateway() {
    start_auth_variant "$1" "$2" "$3" "$4" "$5" revocation-redis.toml REDIS_PORT="$REDIS_PORT" CACHE_TTL_MS="$6"
}

# start_store_redis: an own redis-server (no persistence) on a free port for the Redis store
# -> REDIS_PORT, REDIS_VERSION, LAST_PID
start_store_redis() {
    REDIS_PORT=$(free_ports 1)
    mkdir -p "$TMP/redis-$REDIS_PORT"
    start_bg "redis-server" "$TMP/redis-$REDIS_PORT/redis.log" redis-server --port "$REDIS_PORT" \
        --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir "$TMP/redis-$REDIS_PORT"
    wait_port "redis-server" "$LAST_PID" "$REDIS_PORT" "$TMP/redis-$REDIS_PORT/redis.log"
    [[ $(redis-cli -p "$REDIS_PORT" PING 2>&1) == PONG ]] || die "redis-server on port $REDIS_PORT does not answer PING"
    REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
}

section_revocation() {
    local redis_pid r_tls r_http r_admin r_pid m_tls m_http m_admin m_pid a_tls a_http a_admin a_pid
    local b_tls b_http b_admin b_pid summary prop rc=0 ptokens p50 p99 prop_note
    read -r r_tls r_http r_admin m_tls m_http m_admin <<<"$(free_ports 6)"
    start_store_redis
    redis_pid=$LAST_PID

    # two fresh processes, the same config but for [revocation] (and [admin], unused here)
    start_auth_variant "jwtgate (memory store)" "$TMP/gateway-memory.toml" "$m_tls" "$m_http" "$m_admin"
    m_pid=$LAST_PID
    start_redis_gateway "jwtgate (redis store)" "$TMP/gateway-redis.toml" "$r_tls" "$r_http" "$r_admin" 1000
    r_pid=$LAST_PID
    add_target jg-rev-memory "jwtgate RS256 TLS, revocation store memory (default)" wrk "$S:$m_tls/" "$TOKEN_RS"
    T_NOTE[jg-rev-memory]="also the 'revocation disabled' baseline: jwtgate has no off switch; a memory-store check is two in-process hash probes (jti, sub)"
    add_target jg-rev-redis "jwtgate RS256 TLS, revocation store redis (cache_ttl_ms 1000, warm)" wrk "$S:$r_tls/" "$TOKEN_RS"
    T_NOTE[jg-rev-redis]="target: ratio ≥ 0.95; own redis-server $REDIS_VERSION on loopback; one token, so the cache is warm after the first request"
    T_HOOK[jg-rev-redis]=hook_redis_cmds
    expect "jwtgate (memory store) RS256" "${T_URL[jg-rev-memory]}" 200 "$TOKEN_RS"
    expect "jwtgate (redis store) RS256" "${T_URL[jg-rev-redis]}" 200 "$TOKEN_RS"
    expect "jwtgate (redis store), bad signature" "${T_URL[jg-rev-redis]}" 401 "$(tamper "$TOKEN_RS")"
    : >"$TMP/revocation-cmds.tsv"

    run_section revocation jg-rev-memory jg-rev-redis

    if [[ -s $TMP/revocation-cmds.tsv ]]; then
        summary=$(python3 - "$TMP/revocation-cmds.tsv" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
per, mgets, parts = [], [], []
for rnd, reqs, total, mget, detail in rows:
    reqs, total, mget = int(reqs or 0), int(total), int(mget)
    if reqs:
        per.append(total / reqs)
        mgets.append(mget / reqs)
    parts.append(f"round {rnd}: {total} commands ({detail or 'none'}) for {reqs:,} requests")
print(f"{statistics.median(per):.2e} Redis commands per request, all commands (median over rounds); "
      f"revocation lookups (MGET, one per token per cache_ttl_ms): {statistics.median(mgets):.2e} per request; "
      + "; ".join(parts) + ". PING: the gateway's liveness probe every 2 s")
EOF
)
        info_row revocation redis-cmds "Redis commands per request, redis store at steady state" \
            "$summary; from INFO commandstats before/after each measured run of the redis row"
    fi
    stop_pid "$r_pid"
    forget_pid "$r_pid"
    stop_pid "$m_pid"
    forget_pid "$m_pid"

    # propagation: replicas A and B on the same Redis; B's cache would say "not revoked" for 60 s
    read -r a_tls a_http a_admin b_tls b_http b_admin <<<"$(free_ports 6)"
    start_redis_gateway "jwtgate replica A" "$TMP/gateway-replica-a.toml" "$a_tls" "$a_http" "$a_admin" 60000
    a_pid=$LAST_PID
    start_redis_gateway "jwtgate replica B" "$TMP/gateway-replica-b.toml" "$b_tls" "$b_http" "$b_admin" 60000
    b_pid=$LAST_PID
    mint_many ES256 e1 "$TMP/keys/ec.pem" "$PROPAGATION_N" propagation
    ptokens=$MINTED
    log "[revocation] propagation A -> B over Redis pub/sub, $(commas "$PROPAGATION_N") tokens ..."
    timeout -k 5 600 python3 "$BENCH/lib/propagation.py" --tokens "$ptokens" --n "$PROPAGATION_N" \
        --b-port "$b_http" --a-admin-port "$a_admin" --admin-token-env BENCH_ADMIN_TOKEN \
        >"$TMP/out/propagation.json" 2>"$TMP/out/propagation.err" || rc=$?
    if [[ $rc != 0 ]]; then
        cat "$TMP/out/propagation.err" >&2
        die "propagation test failed (exit $rc); see above (replica logs: ${TMP}/gateway-replica-[ab].log)"
    fi
    [[ -s $TMP/out/propagation.err ]] && cat "$TMP/out/propagation.err" >&2
    prop=$(python3 - "$TMP/out/propagation.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
note = (f"max {d['max_ms']} ms, mean {d['mean_ms']} ms over {d['propagated']} of {d['n']} tokens"
        f" ({d['timeouts']} not seen within {d['timeout_s']} s); B answered 401 at the first poll for"
        f" {d['first_poll_already_401']}; median {d['polls_median']} polls of ~{d['poll_rtt_ms']} ms each;"
        " from A's 204 to B's first 401 (B polled on one keep-alive HTTP connection);"
        " replicas with cache_ttl_ms 60000, so only the pub/sub message can revoke on B")
print(f"{d['p50_ms']}\t{d['p99_ms']}\t{note}")
EOF
)
    IFS=$'\t' read -r p50 p99 prop_note <<<"$prop"
    info_row revocation propagation "revocation propagation A → B (p50 / p99 ms)" "$prop_note" "" "$p50" "$p99"
    log "[revocation] propagation: p50 $p50 ms, p99 $p99 ms; $prop_note"
    stop_pid "$b_pid"
    forget_pid "$b_pid"
    stop_pid "$a_pid"
    forget_pid "$a_pid"
    stop_pid "$redis_pid"
    forget_pid "$redis_pid"
}

# --- section "stores": the Redis store on one server, on Sentinel and on a Cluster ------------

# start_redis NAME PORT DIR [ARGS...]: a private redis-server on 127.0.0.1:PORT -> LAST_PID
start_redis() {
    local name=$1 port=$2 dir=$3
    shift 3
    mkdir -p "$dir"
    start_bg "$name" "$dir/redis.log" redis-server --port "$port" --bind 127.0.0.1 --save "" \
        --appendonly no --daemonize no --dir "$dir" "$@"
    wait_port "$name" "$LAST_PID" "$port" "$dir/redis.log"
}

# wait_for WHAT CMD...: until CMD succeeds (20 s at most)
wait_for() {
    local what=$1 i
    shift
    for ((i = 0; i < 200; i++)); do "$@" && return 0; sleep 0.1; done
    die "$what: not within 20 s"
}

sentinels_agree() { # every sentinel knows the replica and the two other sentinels
    local p m
    for p in "$@"; do
        m=$(redis-cli -p "$p" SENTINEL master mymaster 2>/dev/null | tr -d '\r' | paste -sd' ')
        [[ $m == *"num-slaves 1 "* && $m == *"num-other-sentinels 2 "* ]] || return 1
    done
}

cluster_ok() {
    local p
    for p in "$@"; do
        redis-cli -p "$p" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    done
}

# propagation ID LABEL STORE_LINE: replicas A and B on that store (cache_ttl_ms 60000), as in
# the revocation section, over PROPAGATION_N tokens
store_propagation() {
    local id=$1 label=$2 line=$3 a_tls a_http a_admin b_tls b_http b_admin a_pid b_pid rc=0 prop p50 p99 note
    read -r a_tls a_http a_admin b_tls b_http b_admin <<<"$(free_ports 6)"
    start_auth_variant "jwtgate $id A" "$TMP/gateway-$id-a.toml" "$a_tls" "$a_http" "$a_admin" \
        revocation-store.toml STORE_LINE="$line" CACHE_TTL_MS=60000
    a_pid=$LAST_PID
    start_auth_variant "jwtgate $id B" "$TMP/gateway-$id-b.toml" "$b_tls" "$b_http" "$b_admin" \
        revocation-store.toml STORE_LINE="$line" CACHE_TTL_MS=60000
    b_pid=$LAST_PID
    timeout -k 5 300 python3 "$BENCH/lib/propagation.py" --tokens "$STORE_TOKENS" --n "$PROPAGATION_N" \
        --b-port "$b_http" --a-admin-port "$a_admin" --admin-token-env BENCH_ADMIN_TOKEN \
        >"$TMP/out/propagation-$id.json" 2>"$TMP/out/propagation-$id.err" || rc=$?
    if [[ $rc != 0 ]]; then
        cat "$TMP/out/propagation-$id.err" >&2
        die "propagation ($label) failed (exit $rc); replica logs: $TMP/gateway-$id-[ab].toml.log"
    fi
    prop=$(python3 - "$TMP/out/propagation-$id.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['p50_ms']}\t{d['p99_ms']}\tmax {d['max_ms']} ms over {d['propagated']} of {d['n']} tokens"
      f" ({d['timeouts']} not seen within {d['timeout_s']} s); from A's 204 to B's first 401")
PY
)
    IFS=$'\t' read -r p50 p99 note <<<"$prop"
    info_row stores "prop-$id" "revocation propagation A → B, $label (p50 / p99 ms)" "$note" "" "$p50" "$p99"
    log "[stores] propagation $label: p50 $p50 ms, p99 $p99 ms"
    stop_pid "$b_pid"; forget_pid "$b_pid"
    stop_pid "$a_pid"; forget_pid "$a_pid"
}

section_stores() {
    local single p r s1 s2 s3 c1 c2 c3 s sp ports=() lines=() ids=(single sentinel cluster) i tls http admin
    read -r single p r s1 s2 s3 c1 c2 c3 <<<"$(free_ports 9)"
    # one server
    start_redis "redis (single)" "$single" "$TMP/stores/single"
    # Sentinel: a primary, its replica, three sentinels (quorum 2)
    start_redis "redis (sentinel primary)" "$p" "$TMP/stores/primary" --repl-diskless-sync-delay 0
    start_redis "redis (sentinel replica)" "$r" "$TMP/stores/replica" --repl-diskless-sync-delay 0 \
        --replicaof 127.0.0.1 "$p"
    for sp in "$s1" "$s2" "$s3"; do
        mkdir -p "$TMP/stores/sentinel-$sp"
        printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %s 2\nsentinel down-after-milliseconds mymaster 1000\n' \
            "$sp" "$TMP/stores/sentinel-$sp" "$p" >"$TMP/stores/sentinel-$sp/sentinel.conf"
        start_bg "redis sentinel $sp" "$TMP/stores/sentinel-$sp/log" redis-server \
            "$TMP/stores/sentinel-$sp/sentinel.conf" --sentinel
        wait_port "redis sentinel" "$LAST_PID" "$sp" "$TMP/stores/sentinel-$sp/log"
    done
    wait_for "the sentinels agreeing on primary, replica and each other" sentinels_agree "$s1" "$s2" "$s3"
    # Cluster: three masters
    for s in "$c1" "$c2" "$c3"; do
        start_redis "redis (cluster $s)" "$s" "$TMP/stores/cluster-$s" --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout 1000
    done
    redis-cli --cluster create "127.0.0.1:$c1" "127.0.0.1:$c2" "127.0.0.1:$c3" --cluster-replicas 0 \
        --cluster-yes >"$TMP/stores/cluster-create.log" 2>&1 || { cat "$TMP/stores/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
    wait_for "cluster_state:ok on every node" cluster_ok "$c1" "$c2" "$c3"
    REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')

    lines=("redis_url = \"redis://127.0.0.1:$single/0\""
        "redis_url = \"redis+sentinel://127.0.0.1:$s1,127.0.0.1:$s2,127.0.0.1:$s3/mymaster/0\""
        "redis_cluster = [\"redis://127.0.0.1:$c1\", \"redis://127.0.0.1:$c2\", \"redis://127.0.0.1:$c3\"]")
    local labels=("one redis-server" "Sentinel (1 primary, 1 replica, 3 sentinels)" "Cluster (3 masters)")
    local pids=()
    for i in 0 1 2; do
        read -r tls http admin <<<"$(free_ports 3)"
        start_auth_variant "jwtgate (${ids[i]} store)" "$TMP/gateway-store-${ids[i]}.toml" "$tls" "$http" "$admin" \
            revocation-store.toml STORE_LINE="${lines[i]}" CACHE_TTL_MS=1000
        pids+=("$LAST_PID")
        add_target "jg-store-${ids[i]}" "jwtgate RS256 TLS, Redis store: ${labels[i]} (cache_ttl_ms 1000, warm)" wrk "$S:$tls/" "$TOKEN_RS"
        T_NOTE[jg-store-${ids[i]}]="own redis-server $REDIS_VERSION processes on loopback; one token, so the cache is warm after the first request"
        expect "jwtgate (${ids[i]} store) RS256" "${T_URL[jg-store-${ids[i]}]}" 200 "$TOKEN_RS"
    done
    T_NOTE[jg-store-sentinel]+="; target: within 3 % of one redis-server (ratio ≥ 0.97)"
    T_NOTE[jg-store-cluster]+="; target: within 3 % of one redis-server (ratio ≥ 0.97)"
    run_section stores jg-store-single jg-store-sentinel jg-store-cluster
    for i in 2 1 0; do stop_pid "${pids[i]}"; forget_pid "${pids[i]}"; done

    mint_many ES256 e1 "$TMP/keys/ec.pem" "$((PROPAGATION_N * 3))" stores
    STORE_TOKENS=$MINTED
    # each mode revokes its own third of the tokens
    for i in 0 1 2; do
        sed -n "$((i * PROPAGATION_N + 1)),$(((i + 1) * PROPAGATION_N))p" "$STORE_TOKENS" >"$STORE_TOKENS.$i"
    done
    local all=$STORE_TOKENS
    for i in 0 1 2; do
        STORE_TOKENS=$all.$i
        store_propagation "${ids[i]}" "${labels[i]}" "${lines[i]}"
    done
}

# --- section "refresh": edge refresh against a mock IdP ------------------------------------

IDP_PORT=""
REFRESH_TOKENS=50
REFRESH_PCT=5
REDIS_VERSION=""

# hook_refresh_batch pre|post ID OUT [RC]: a fresh batch of refresh tokens (and their near-expiry
# access tokens) from the mock IdP before every run, its calls per refresh token after it
hook_refresh_batch() {
    local phase=$1 out=$3 rc=${4:-0} batch
    batch=$(basename "$out" .txt)
    if [[ $phase == pre ]]; then
        curl -fsS --max-time 10 -X POST -o "$TMP/refresh/mix.txt" \
            "http://127.0.0.1:$IDP_PORT/bench/issue?batch=$batch&n=$REFRESH_TOKENS&ttl=30" ||
            die "mock IdP: POST /bench/issue failed"
        [[ $(grep -c . "$TMP/refresh/mix.txt") == "$REFRESH_TOKENS" ]] || die "mock IdP: /bench/issue did not give $REFRESH_TOKENS lines"
        return 0
    fi
    curl -fsS --max-time 10 -o "$out.idp.json" "http://127.0.0.1:$IDP_PORT/stats?batch=$batch" ||
        die "mock IdP: GET /stats failed"
    [[ $LOAD_ROUND -gt 0 && $rc == 0 ]] || return 0
    python3 - "$out.idp.json" "$LOAD_ROUND" "$(wrk_requests "$out")" >>"$TMP/refresh-idp.tsv" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
b = d["batch"]
print("\t".join(str(x) for x in (sys.argv[2], sys.argv[3] or 0, b["tokens"], b["used"], b["calls"],
                                 b["max_calls"], d["invalid_grant"], d["invalid_client"])))
EOF
}

# expect_refresh NAME URL WANT ACCESS REFRESH: one curl with Authorization + refresh cookie
# must answer WANT; leaves the response headers in $TMP/curl.head
expect_refresh() {
    local name=$1 url=$2 want=$3 access=$4 refresh=$5 got
    got=$(curl -s --http1.1 --max-time 10 -D "$TMP/curl.head" -o "$TMP/curl.body" -w '%{http_code}' \
        -H "Authorization: Bearer $access" -H "Cookie: refresh_token=$refresh" "$url" 2>&1) || true
    if [[ $got != "$want" ]]; then
        die "check failed: $name: GET $url with 'Authorization: Bearer <near-expiry access token>' and
    'Cookie: refresh_token=<refresh token>' answered '$got', expected HTTP $want.
    Response headers: $(tr -d '\r' <"$TMP/curl.head" | tr '\n' '|')
    Body: $(head -c 300 "$TMP/curl.body" 2>/dev/null)
    mock IdP /stats: $(curl -s --max-time 5 "http://127.0.0.1:$IDP_PORT/stats" || true)"
    fi
}

idp_calls() { # BATCH INDEX: calls the mock IdP counted for that refresh token
    curl -fsS --max-time 5 "http://127.0.0.1:$IDP_PORT/stats?batch=$1" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["batch"]["calls_per_token"][int(sys.argv[1])])' "$2"
}

# --- section "features": the optional protections' cost ------------------------------------

section_features() {
    local b_tls b_http b_admin b_pid f_tls f_http f_admin f_pid
    read -r b_tls b_http b_admin f_tls f_http f_admin <<<"$(free_ports 6)"
    openssl ecparam -name prime256v1 -genkey -noout -out "$TMP/keys/assertion.key" 2>/dev/null ||
        die "openssl ecparam failed (the features section needs an EC key)"
    start_auth_variant "jwtgate (no options)" "$TMP/gateway-features-base.toml" "$b_tls" "$b_http" "$b_admin"
    b_pid=$LAST_PID
    start_auth_variant "jwtgate (every option)" "$TMP/gateway-features.toml" "$f_tls" "$f_http" "$f_admin" \
        features.toml ASSERTION_KEY="$TMP/keys/assertion.key" UP_PORT="$UP_PORT"
    f_pid=$LAST_PID
    add_target jg-feat-base "jwtgate HS256 HTTP, no optional protection" wrk "$U:$b_http/" "$TOKEN_HS"
    add_target jg-feat-global "jwtgate HS256 HTTP, + identity assertion + [anomaly]" wrk "$U:$f_http/" "$TOKEN_HS"
    T_NOTE[jg-feat-global]="one token: its assertion is signed once per 30 s and reused; the anomaly window is counted on every request"
    add_target jg-feat-all "jwtgate HS256 HTTP, + rate_limit (per sub) + cors as well" wrk "$U:$f_http/features/" "$TOKEN_HS"
    T_NOTE[jg-feat-all]="rate_limit far above the load (every request takes a token from its bucket); cors sets Vary on every answer"
    expect "jwtgate (every option) HS256" "${T_URL[jg-feat-all]}" 200 "$TOKEN_HS"
    expect "jwtgate (every option), no token" "${T_URL[jg-feat-all]}" 401
    curl -fsS --max-time 10 -o /dev/null "http://127.0.0.1:$f_admin/.well-known/jwks.json" ||
        die "check failed: jwtgate (every option) serves no /.well-known/jwks.json"
    run_section features jg-feat-base jg-feat-global jg-feat-all
    stop_pid "$f_pid"
    forget_pid "$f_pid"
    stop_pid "$b_pid"
    forget_pid "$b_pid"
}

# --- section "rules": what a route's `allow` rule costs -------------------------------------

# One process (gateway-auth.toml + templates/rules.toml): RS256 over TLS to "/" (no rule) and
# to "/rules/" (a group check and a method check), alternating each round.
section_rules() {
    local r_tls r_http r_admin r_pid
    read -r r_tls r_http r_admin <<<"$(free_ports 3)"
    start_auth_variant "jwtgate (rules)" "$TMP/gateway-rules.toml" "$r_tls" "$r_http" "$r_admin" \
        rules.toml UP_PORT="$UP_PORT"
    r_pid=$LAST_PID
    add_target jg-rules-none "jwtgate RS256 TLS, route without a rule" wrk "$S:$r_tls/" "$TOKEN_RS"
    add_target jg-rules-allow "jwtgate RS256 TLS, route with allow = 'in_group(\"admin\") || request.method in [\"GET\", \"HEAD\"]'" wrk "$S:$r_tls/rules/" "$TOKEN_RS"
    expect "jwtgate (rules) RS256, no rule" "${T_URL[jg-rules-none]}" 200 "$TOKEN_RS"
    expect "jwtgate (rules) RS256, rule" "${T_URL[jg-rules-allow]}" 200 "$TOKEN_RS"
    run_section rules jg-rules-none jg-rules-allow
    stop_pid "$r_pid"
    forget_pid "$r_pid"
}

# --- section "tracing": OpenTelemetry on, every request sampled, vs off -----------------------

# Two processes from gateway-auth.toml, RS256 bearer over TLS to "/": one without OTEL_*
# (tracing off: one flag read per request), one exporting every request's server span over
# OTLP/HTTP to an nginx sink (templates/otlp-sink.nginx.conf: `return 200`, the body
# discarded in C; a Python sink parsing ~100 MB of exports took a core's worth of CPU from
# the gateway, where a real collector runs on another host). The batch queue is made large
# enough that no span is dropped at these rates; the sink's access log counts the export
# requests and their bytes, so a reader can see the spans really left.
section_tracing() {
    local sink_port f_tls f_http f_admin f_pid n_tls n_http n_admin n_pid sink_pid sink_reqs sink_bytes
    read -r sink_port f_tls f_http f_admin n_tls n_http n_admin <<<"$(free_ports 7)"
    mkdir -p "$TMP/tracing"
    start_nginx "OTLP sink (nginx)" "$TMP/tracing/sink" "$BENCH/templates/otlp-sink.nginx.conf" "$sink_port" \
        SINK_PORT="$sink_port"
    sink_pid=$LAST_PID
    start_auth_variant "jwtgate (tracing off)" "$TMP/gateway-trace-off.toml" "$f_tls" "$f_http" "$f_admin"
    f_pid=$LAST_PID
    JG_ENV=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" OTEL_TRACES_SAMPLER=always_on
        OTEL_BSP_MAX_QUEUE_SIZE=262144 OTEL_BSP_SCHEDULE_DELAY=200 OTEL_BSP_MAX_EXPORT_BATCH_SIZE=2048)
    start_auth_variant "jwtgate (tracing on)" "$TMP/gateway-trace-on.toml" "$n_tls" "$n_http" "$n_admin"
    JG_ENV=()
    n_pid=$LAST_PID
    add_target jg-trace-off "jwtgate RS256 TLS, tracing off (no OTEL_* set)" wrk "$S:$f_tls/" "$TOKEN_RS"
    add_target jg-trace-on "jwtgate RS256 TLS, tracing on: OTLP/HTTP export, sampled at 100%" wrk "$S:$n_tls/" "$TOKEN_RS"
    expect "jwtgate (tracing off) RS256" "${T_URL[jg-trace-off]}" 200 "$TOKEN_RS"
    expect "jwtgate (tracing on) RS256" "${T_URL[jg-trace-on]}" 200 "$TOKEN_RS"
    run_section tracing jg-trace-off jg-trace-on
    stop_pid "$n_pid"
    forget_pid "$n_pid"
    stop_pid "$f_pid"
    forget_pid "$f_pid"
    stop_pid "$sink_pid"
    forget_pid "$sink_pid"
    read -r sink_reqs sink_bytes < <(awk '$2 == 200 {n++; b += $1} END {print n + 0, b + 0}' "$TMP/tracing/sink/exports.log")
    log "[tracing] the OTLP sink received $sink_reqs export requests, $sink_bytes bytes"
}

# --- section "free": issue 19's targets, authentication at no cost ---------------------------

# Authenticated RS256 over TLS with the Redis store (warm cache) and identity headers (the
# defaults), against nginx's *unauthenticated* TLS proxy, HTTP/1.1 (wrk) and h2 (h2load); and
# jwtgate's plain HTTP/1.1 (auth = "none") against the bare hyper proxy
# (examples/hyper_floor.rs: the least a hyper 1.x proxy does per request, no auth, no log).
# The floor also listens on TLS (tokio-rustls, jwtgate's rustls settings, h2 by ALPN): its TLS
# and h2 rows say how far a hyper proxy that does nothing gets against nginx on this machine.
section_free() {
    local floor=${HYPER_FLOOR_BIN:-$ROOT/target/release/examples/hyper_floor} floor_port floor_tls floor_pid
    local fh_port fh_tls fh_pid
    local redis_pid r_tls r_http r_admin r_pid
    [[ -x $floor ]] || die "$floor is missing: cargo build --release --example hyper_floor (or set HYPER_FLOOR_BIN)"
    read -r floor_port floor_tls r_tls r_http r_admin fh_port fh_tls <<<"$(free_ports 7)"
    start_bg "hyper floor" "$TMP/hyper-floor.log" "$floor" "127.0.0.1:$floor_port" "127.0.0.1:$UP_PORT" \
        "127.0.0.1:$floor_tls" "$CERT" "$KEY"
    floor_pid=$LAST_PID
    wait_port "hyper floor" "$floor_pid" "$floor_port" "$TMP/hyper-floor.log"
    wait_port "hyper floor (TLS)" "$floor_pid" "$floor_tls" "$TMP/hyper-floor.log"
    # The same floor adding SPEC.md's seven request headers and the response's x-request-id
    # (FLOOR_ADDS=headers): what a hyper gateway bound to SPEC.md's headers starts from.
    start_bg "hyper floor + SPEC headers" "$TMP/hyper-floor-headers.log" env FLOOR_ADDS=headers "$floor" \
        "127.0.0.1:$fh_port" "127.0.0.1:$UP_PORT" "127.0.0.1:$fh_tls" "$CERT" "$KEY"
    fh_pid=$LAST_PID
    wait_port "hyper floor + SPEC headers (TLS)" "$fh_pid" "$fh_tls" "$TMP/hyper-floor-headers.log"
    start_store_redis
    redis_pid=$LAST_PID
    start_redis_gateway "jwtgate (redis store)" "$TMP/gateway-free.toml" "$r_tls" "$r_http" "$r_admin" 1000
    r_pid=$LAST_PID
    add_target floor-http "bare hyper proxy (examples/hyper_floor), plain HTTP" wrk "$U:$floor_port/"
    add_target floor-tls "bare hyper proxy (examples/hyper_floor), TLS" wrk "$S:$floor_tls/"
    add_target floor-hdr-tls "bare hyper proxy + SPEC.md's headers (FLOOR_ADDS=headers), TLS" wrk "$S:$fh_tls/"
    add_target jg-free-tls "jwtgate RS256 TLS, Redis store (warm), identity headers" wrk "$S:$r_tls/" "$TOKEN_RS"
    T_NOTE[jg-free-tls]="target: ≥ 1.0× nginx's unauthenticated TLS proxy (issue 19)"
    expect "hyper floor" "${T_URL[floor-http]}" 200
    expect "hyper floor TLS" "${T_URL[floor-tls]}" 200
    expect "hyper floor + SPEC headers TLS" "${T_URL[floor-hdr-tls]}" 200
    expect "jwtgate (redis store) RS256" "${T_URL[jg-free-tls]}" 200 "$TOKEN_RS"
    expect "jwtgate (redis store), no token" "${T_URL[jg-free-tls]}" 401
    local ids=(nginx-tls jg-free-tls floor-tls floor-hdr-tls floor-http jg-http)
    if [[ $HAVE_H2LOAD == 1 ]]; then
        add_target floor-h2 "bare hyper proxy (examples/hyper_floor), h2" h2load "$S:$floor_tls/"
        add_target floor-hdr-h2 "bare hyper proxy + SPEC.md's headers (FLOOR_ADDS=headers), h2" h2load "$S:$fh_tls/"
        add_target jg-free-h2 "jwtgate RS256 h2, Redis store (warm), identity headers" h2load "$S:$r_tls/" "$TOKEN_RS"
        expect "hyper floor h2" "${T_URL[floor-h2]}" 200 "" h2
        expect "jwtgate (redis store) RS256, h2" "${T_URL[jg-free-h2]}" 200 "$TOKEN_RS" h2
        ids+=(nginx-h2 jg-free-h2 floor-h2 floor-hdr-h2)
    else
        skip_row free jg-free-h2 "h2 rows" "skipped: h2load not installed (apt-get install nghttp2-client)"
    fi
    run_section free "${ids[@]}"
    stop_pid "$r_pid"
    forget_pid "$r_pid"
    stop_pid "$redis_pid"
    forget_pid "$redis_pid"
    stop_pid "$floor_pid"
    forget_pid "$floor_pid"
    stop_pid "$fh_pid"
    forget_pid "$fh_pid"
}

# --- section "login": what [login] costs the bearer-token hot path ---------------------------

# Two processes from gateway-auth.toml: + templates/login-off.toml (a second issuer, discovered
# at the mock IdP, and an /app route) and + templates/login-on.toml (the same, with [login] and
# /app `login = true`). RS256 bearer tokens over TLS to /app on both, alternating each round.
section_login() {
    local idp_pid o_tls o_http o_admin o_pid n_tls n_http n_admin n_pid nav
    read -r IDP_PORT o_tls o_http o_admin n_tls n_http n_admin <<<"$(free_ports 7)"
    mkdir -p "$TMP/login"
    BENCH_SESSION_SECRET=$(openssl rand -hex 32)
    export BENCH_SESSION_SECRET
    start_bg "mock IdP (login)" "$TMP/login/mock_idp.log" python3 "$BENCH/lib/mock_idp.py" --port "$IDP_PORT" \
        --client-id bench --issuer "http://127.0.0.1:$IDP_PORT" --kid h1 --access-ttl 600
    idp_pid=$LAST_PID
    wait_port "mock IdP (login)" "$idp_pid" "$IDP_PORT" "$TMP/login/mock_idp.log"
    start_auth_variant "jwtgate (no [login])" "$TMP/gateway-login-off.toml" "$o_tls" "$o_http" "$o_admin" \
        login-off.toml IDP_PORT="$IDP_PORT" UP_PORT="$UP_PORT"
    o_pid=$LAST_PID
    start_auth_variant "jwtgate ([login])" "$TMP/gateway-login-on.toml" "$n_tls" "$n_http" "$n_admin" \
        login-on.toml IDP_PORT="$IDP_PORT" UP_PORT="$UP_PORT"
    n_pid=$LAST_PID
    add_target jg-login-off "jwtgate RS256 TLS, /app, no [login]" wrk "$S:$o_tls/app/" "$TOKEN_RS"
    add_target jg-login-on "jwtgate RS256 TLS, /app with login = true, [login] configured" wrk "$S:$n_tls/app/" "$TOKEN_RS"
    T_NOTE[jg-login-on]="bearer tokens (an API client): the sign-in redirect is never taken; same issuers and routes as the row above"
    expect "jwtgate (no [login]) RS256" "${T_URL[jg-login-off]}" 200 "$TOKEN_RS"
    expect "jwtgate ([login]) RS256" "${T_URL[jg-login-on]}" 200 "$TOKEN_RS"
    expect "jwtgate ([login]), no token (API client)" "${T_URL[jg-login-on]}" 401
    # [login] is live: a browser navigation without a session goes to the discovered
    # authorization endpoint (over HTTP: 127.0.0.1 is loopback, where sign-in is allowed)
    nav=$(curl -s -o /dev/null --max-time 10 -H 'Accept: text/html' -w '%{http_code} %{redirect_url}' "$U:$n_http/app/" || true)
    [[ $nav == "302 http://127.0.0.1:$IDP_PORT/authorize?"* ]] ||
        die "check failed: jwtgate ([login]) answered a navigation to /app with '$nav', expected a 302 to the mock IdP's /authorize"
    nav=$(curl -s -o /dev/null --max-time 10 -H 'Accept: text/html' -w '%{http_code}' "$U:$o_http/app/" || true)
    [[ $nav == 401 ]] || die "check failed: jwtgate (no [login]) answered a navigation to /app with $nav, expected 401"
    run_section login jg-login-off jg-login-on
    stop_pid "$n_pid"
    forget_pid "$n_pid"
    stop_pid "$o_pid"
    forget_pid "$o_pid"
    stop_pid "$idp_pid"
    forget_pid "$idp_pid"
}

section_refresh() {
    local f_http f_tls f_admin f_pid idp_pid url secs note access refresh new_access calls summary
    read -r IDP_PORT f_http f_tls f_admin <<<"$(free_ports 4)"
    mkdir -p "$TMP/refresh"
    start_bg "mock IdP" "$TMP/refresh/mock_idp.log" python3 "$BENCH/lib/mock_idp.py" --port "$IDP_PORT" \
        --client-id bench --issuer "$ISSUER" --kid h1 --access-ttl 600
    idp_pid=$LAST_PID
    wait_port "mock IdP" "$idp_pid" "$IDP_PORT" "$TMP/refresh/mock_idp.log"
    start_auth_variant "jwtgate (refresh)" "$TMP/gateway-refresh.toml" "$f_tls" "$f_http" "$f_admin" \
        refresh.toml IDP_PORT="$IDP_PORT"
    f_pid=$LAST_PID
    url=$U:$f_http/

    # sanity: a refresh happens once, is reused, and its token works; an unknown refresh token is refused
    expect "jwtgate (refresh) HS256, far from expiry" "$url" 200 "$TOKEN_HS"
    curl -fsS --max-time 10 -X POST -o "$TMP/refresh/check.txt" \
        "http://127.0.0.1:$IDP_PORT/bench/issue?batch=check&n=2&ttl=30" || die "mock IdP: POST /bench/issue failed"
    read -r access refresh <"$TMP/refresh/check.txt"
    expect_refresh "near-expiry token + refresh cookie" "$url" 200 "$access" "$refresh"
    new_access=$(tr -d '\r' <"$TMP/curl.head" | sed -n 's/^[Ss]et-[Cc]ookie: access_token=\([^;]*\).*/\1/p' | head -n1)
    [[ -n $new_access ]] || die "check failed: near-expiry token + refresh cookie answered 200 without
    'Set-Cookie: access_token=...'; response headers: $(tr -d '\r' <"$TMP/curl.head" | tr '\n' '|')"
    grep -qi '^set-cookie: refresh_token=' "$TMP/curl.head" ||
        die "check failed: the refresh answered without a rotated 'Set-Cookie: refresh_token=...'"
    expect_refresh "same near-expiry token + the same (now spent) refresh cookie, within 30 s" "$url" 200 "$access" "$refresh"
    calls=$(idp_calls check 0)
    [[ $calls == 1 ]] || die "check failed: two requests with the same refresh token made $calls calls to the mock IdP, expected 1"
    expect "the access token the refresh returned" "$url" 200 "$new_access"
    expect_refresh "near-expiry token + a refresh token the IdP never issued" "$url" 401 \
        "$(sed -n 2p "$TMP/refresh/check.txt" | cut -d' ' -f1)" "never-issued-$RANDOM"

    secs=$DURATION
    if [[ $secs -gt 25 ]]; then
        secs=25
        note="; runs cut to 25 s: each run's refresh tokens are spent at the first call and the gateway reuses the result for 30 s only"
        log "[refresh] runs are cut to $secs s (see the note in the table)"
    fi
    add_target jg-refresh-none "jwtgate HS256 HTTP, every token far from expiry" wrk "$url"
    T_LUA[jg-refresh-none]=$BENCH/lib/refresh_mix.lua
    T_LUA_ARGS[jg-refresh-none]="$TOKEN_HS"$'\t'-$'\t'0
    T_NOTE[jg-refresh-none]="wrk Lua lib/refresh_mix.lua with 0%${note:-}"
    add_target jg-refresh-mix "jwtgate HS256 HTTP, ${REFRESH_PCT}% near expiry + refresh cookie" wrk "$url"
    T_LUA[jg-refresh-mix]=$BENCH/lib/refresh_mix.lua
    T_LUA_ARGS[jg-refresh-mix]="$TOKEN_HS"$'\t'"$TMP/refresh/mix.txt"$'\t'$REFRESH_PCT
    T_NOTE[jg-refresh-mix]="every $((100 / REFRESH_PCT))th request: an access token expiring in 30 s + one of $REFRESH_TOKENS refresh tokens (a fresh set from the mock IdP for every run)${note:-}"
    T_HOOK[jg-refresh-mix]=hook_refresh_batch
    T_SECS[jg-refresh-none]=$secs
    T_SECS[jg-refresh-mix]=$secs
    : >"$TMP/refresh-idp.tsv"

    run_section refresh jg-refresh-none jg-refresh-mix

    if [[ -s $TMP/refresh-idp.tsv ]]; then
        summary=$(python3 - "$TMP/refresh-idp.tsv" "$REFRESH_PCT" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
pct = int(sys.argv[2])
used = sum(int(r[3]) for r in rows)
calls = sum(int(r[4]) for r in rows)
mx = max(int(r[5]) for r in rows)
issued = sum(int(r[2]) for r in rows)
near = sum(int(r[1]) for r in rows) * pct / 100
ig, ic = rows[-1][6], rows[-1][7]
verdict = "OK" if mx == 1 and calls == used else "WARNING: more than one call per refresh token"
print(f"{verdict}: max {mx} call(s) per refresh token, {calls} calls for {used} refresh tokens used "
      f"(of {issued} issued over {len(rows)} round(s)), ~{near:,.0f} near-expiry requests; "
      f"mock IdP totals since start: invalid_grant {ig} (1 is the sanity check's never-issued token), invalid_client {ic}")
EOF
)
        info_row refresh idp-calls "mock IdP token endpoint calls per refresh token" "$summary"
        log "[refresh] $summary"
    fi
    stop_pid "$f_pid"
    forget_pid "$f_pid"
    stop_pid "$idp_pid"
    forget_pid "$idp_pid"
}

# --- setup -------------------------------------------------------------------------------

ensure_tools
if [[ $USE_JG == 1 ]]; then ensure_jwtgate; fi

if ! ulimit -n 65536 2>/dev/null; then
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    log "WARNING: could not raise the open-file limit to 65536 (now $(ulimit -n))"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/jwtgate-bench.XXXXXX")
chmod 711 "$TMP" # nginx workers run as "nobody" and must reach their prefix folders
mkdir -p "$TMP/out" "$TMP/keys" "$TMP/certs"
chmod 700 "$TMP/keys"
RUNS_TSV=$TMP/runs.tsv
MEM_TSV=$TMP/mem.tsv
: >"$RUNS_TSV"
: >"$MEM_TSV"
log "work folder: $TMP"

read -r UP_PORT NGX_HTTP_PORT NGX_TLS_PORT HA_HTTP_PORT HA_TLS_PORT HA_RS_TLS_PORT HA_HS_PORT \
    JG_HTTP_PORT JG_TLS_PORT JG_ADMIN_PORT JGA_HTTP_PORT JGA_TLS_PORT JGA_ADMIN_PORT <<<"$(free_ports 13)"

# keys and secrets for the auth section (throwaway, in $TMP)
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/keys/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/keys/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/keys/ec.pem" 2>/dev/null
openssl pkey -in "$TMP/keys/ec.pem" -pubout -out "$TMP/ec.pub.pem"
BENCH_HS_SECRET=$(openssl rand -hex 32) # 64 bytes of text = 256 random bits; used as-is by both
JWTGATE_ADMIN_TOKEN=$(openssl rand -hex 16)
BENCH_ADMIN_TOKEN=$(openssl rand -hex 16)      # revocation section: [admin] token_env of its replicas
BENCH_CLIENT_SECRET=$(openssl rand -hex 24)    # refresh section: the gateway's secret at the mock IdP
export BENCH_HS_SECRET JWTGATE_ADMIN_TOKEN BENCH_ADMIN_TOKEN BENCH_CLIENT_SECRET

# development certificate shared by every TLS endpoint (same key type for all)
if [[ $USE_JG == 1 ]]; then
    "$JG" gen-cert --out "$TMP/certs" --host localhost >"$TMP/gen-cert.log" 2>&1 ||
        { cat "$TMP/gen-cert.log" >&2; die "jwtgate gen-cert failed"; }
else
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -keyout "$TMP/certs/localhost.key" -out "$TMP/certs/localhost.crt" 2>/dev/null
fi
CERT=$TMP/certs/localhost.crt
KEY=$TMP/certs/localhost.key
[[ -s $CERT && -s $KEY ]] || die "expected $CERT and $KEY after creating the development certificate"
cat "$CERT" "$KEY" >"$TMP/certs/haproxy.pem"

# upstream
start_nginx "nginx upstream" "$TMP/nginx-up" "$BENCH/templates/upstream.nginx.conf" "$UP_PORT" UP_PORT="$UP_PORT"
UP_PID=$LAST_PID

# nginx proxy
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if version_ge "$NGINX_VERSION" 1.25.1; then
    NGX_FLAGS="ssl" NGX_H2="http2 on;"
else
    NGX_FLAGS="ssl http2" NGX_H2="# (http2 is the listen flag above on nginx < 1.25.1)"
fi
start_nginx "nginx proxy" "$TMP/nginx-proxy" "$BENCH/templates/proxy.nginx.conf" "$NGX_HTTP_PORT" \
    UP_PORT="$UP_PORT" NGX_HTTP_PORT="$NGX_HTTP_PORT" NGX_TLS_PORT="$NGX_TLS_PORT" \
    NGX_TLS_LISTEN_FLAGS="$NGX_FLAGS" NGX_HTTP2_DIRECTIVE="$NGX_H2" CERT="$CERT" KEY="$KEY"
NGX_PID=$LAST_PID
wait_port "nginx proxy" "$NGX_PID" "$NGX_TLS_PORT" "$TMP/nginx-proxy/error.log"

# HAProxy (jwt_verify needs >= 2.5)
HAPROXY_VERSION=$(haproxy -v 2>&1 | sed -n 's/^HA-\{0,1\}Proxy version \([0-9.]*\).*/\1/p' | head -n1)
HA_JWT=0
if version_ge "${HAPROXY_VERSION:-0}" 2.5; then HA_JWT=1; fi
mkdir -p "$TMP/haproxy"
render "$BENCH/templates/haproxy.cfg" "$TMP/haproxy/haproxy.cfg" UP_PORT="$UP_PORT" \
    HA_HTTP_PORT="$HA_HTTP_PORT" HA_TLS_PORT="$HA_TLS_PORT" HAPROXY_PEM="$TMP/certs/haproxy.pem"
if [[ $HA_JWT == 1 ]]; then
    render "$BENCH/templates/haproxy-jwt.cfg" "$TMP/haproxy/haproxy-jwt.cfg" HA_RS_TLS_PORT="$HA_RS_TLS_PORT" \
        HA_HS_PORT="$HA_HS_PORT" HAPROXY_PEM="$TMP/certs/haproxy.pem" RSA_PUB="$TMP/rsa.pub.pem" ISSUER="$ISSUER"
    cat "$TMP/haproxy/haproxy-jwt.cfg" >>"$TMP/haproxy/haproxy.cfg"
else
    log "WARNING: HAProxy $HAPROXY_VERSION has no jwt_verify (needs 2.5+); HAProxy auth rows are skipped"
fi
haproxy -c -q -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/check.log" 2>&1 ||
    { cat "$TMP/haproxy/check.log" >&2; die "HAProxy rejected $TMP/haproxy/haproxy.cfg"; }
start_bg "haproxy" "$TMP/haproxy/stderr.log" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
HA_PID=$LAST_PID
for p in "$HA_HTTP_PORT" "$HA_TLS_PORT"; do wait_port haproxy "$HA_PID" "$p" "$TMP/haproxy/stderr.log"; done
if [[ $HA_JWT == 1 ]]; then
    for p in "$HA_RS_TLS_PORT" "$HA_HS_PORT"; do wait_port haproxy "$HA_PID" "$p" "$TMP/haproxy/stderr.log"; done
fi

if [[ $USE_JG == 1 ]]; then
    render "$BENCH/templates/gateway.toml" "$TMP/gateway.toml" JG_TLS_PORT="$JG_TLS_PORT" \
        JG_HTTP_PORT="$JG_HTTP_PORT" JG_ADMIN_PORT="$JG_ADMIN_PORT" CERT="$CERT" KEY="$KEY" UP_PORT="$UP_PORT"
    start_jwtgate "jwtgate" "$TMP/gateway.toml" "$JG_ADMIN_PORT"
    if want_section auth || want_section tokens; then
        render "$BENCH/templates/gateway-auth.toml" "$TMP/gateway-auth.toml" JG_TLS_PORT="$JGA_TLS_PORT" \
            JG_HTTP_PORT="$JGA_HTTP_PORT" JG_ADMIN_PORT="$JGA_ADMIN_PORT" CERT="$CERT" KEY="$KEY" \
            UP_PORT="$UP_PORT" ISSUER="$ISSUER" RSA_PUB="$TMP/rsa.pub.pem" EC_PUB="$TMP/ec.pub.pem"
        start_jwtgate "jwtgate (auth)" "$TMP/gateway-auth.toml" "$JGA_ADMIN_PORT"
    fi
fi

# tokens
if [[ $USE_JG == 1 ]]; then
    TOKEN_RS=$(mint_token_jwtgate RS256 r1 --key "$TMP/keys/rsa.pem")
    TOKEN_ES=$(mint_token_jwtgate ES256 e1 --key "$TMP/keys/ec.pem")
    TOKEN_HS=$(mint_token_jwtgate HS256 h1 --secret-env BENCH_HS_SECRET)
else
    TOKEN_RS=$(mint_token_openssl RS256 r1 "$TMP/keys/rsa.pem")
    TOKEN_HS=$(mint_token_openssl HS256 h1 "$BENCH_HS_SECRET")
    TOKEN_ES=""
fi

# --- targets and sanity checks -----------------------------------------------------------

U=http://127.0.0.1
S=https://127.0.0.1
add_target direct "upstream direct, plain HTTP (nginx return 200)" wrk "$U:$UP_PORT/"
add_target nginx-http "nginx proxy HTTP" wrk "$U:$NGX_HTTP_PORT/"
add_target haproxy-http "HAProxy proxy HTTP" wrk "$U:$HA_HTTP_PORT/"
add_target nginx-tls "nginx proxy TLS" wrk "$S:$NGX_TLS_PORT/"
add_target haproxy-tls "HAProxy proxy TLS" wrk "$S:$HA_TLS_PORT/"
if [[ $HAVE_H2LOAD == 1 ]]; then
    add_target direct-h1 "upstream direct (h2load --h1, plain HTTP/1.1)" h2load-h1 "$U:$UP_PORT/"
    add_target nginx-h2 "nginx proxy h2" h2load "$S:$NGX_TLS_PORT/"
    add_target haproxy-h2 "HAProxy proxy h2" h2load "$S:$HA_TLS_PORT/"
fi
if [[ $HA_JWT == 1 ]]; then
    add_target haproxy-rs256-tls "HAProxy jwt_verify RS256 TLS" wrk "$S:$HA_RS_TLS_PORT/" "$TOKEN_RS"
    add_target haproxy-hs256-http "HAProxy jwt_verify HS256 HTTP" wrk "$U:$HA_HS_PORT/" "$TOKEN_HS"
fi
if [[ $USE_JG == 1 ]]; then
    add_target jg-http "jwtgate HTTP" wrk "$U:$JG_HTTP_PORT/"
    add_target jg-tls "jwtgate TLS" wrk "$S:$JG_TLS_PORT/"
    if [[ $HAVE_H2LOAD == 1 ]]; then add_target jg-h2 "jwtgate h2" h2load "$S:$JG_TLS_PORT/"; fi
    if want_section auth; then
        add_target jg-open-tls "jwtgate TLS, auth=none route" wrk "$S:$JGA_TLS_PORT/open"
        add_target jg-rs256-tls "jwtgate RS256 TLS" wrk "$S:$JGA_TLS_PORT/" "$TOKEN_RS"
        add_target jg-es256-tls "jwtgate ES256 TLS" wrk "$S:$JGA_TLS_PORT/" "$TOKEN_ES"
        add_target jg-open-http "jwtgate HTTP, auth=none route" wrk "$U:$JGA_HTTP_PORT/open"
        add_target jg-hs256-http "jwtgate HS256 HTTP" wrk "$U:$JGA_HTTP_PORT/" "$TOKEN_HS"
    fi
fi

log "sanity checks"
expect "upstream" "${T_URL[direct]}" 200
[[ $(cat "$TMP/curl.body") == ok ]] || die "upstream did not answer 'ok'"
for id in nginx-http haproxy-http nginx-tls haproxy-tls jg-http jg-tls; do
    if [[ -n ${T_URL[$id]:-} ]]; then expect "${T_LABEL[$id]}" "${T_URL[$id]}" 200; fi
done
for id in nginx-h2 haproxy-h2 jg-h2; do
    if [[ -n ${T_URL[$id]:-} ]]; then expect "${T_LABEL[$id]}" "${T_URL[$id]}" 200 "" h2; fi
done
if [[ $HA_JWT == 1 ]]; then
    rs_url=${T_URL[haproxy-rs256-tls]} hs_url=${T_URL[haproxy-hs256-http]}
    expect "HAProxy RS256, valid token" "$rs_url" 200 "$TOKEN_RS"
    expect "HAProxy RS256, no token" "$rs_url" 401
    expect "HAProxy RS256, bad signature" "$rs_url" 401 "$(tamper "$TOKEN_RS")"
    expect "HAProxy RS256, HS256 token" "$rs_url" 401 "$TOKEN_HS"
    expect "HAProxy RS256, expired" "$rs_url" 401 "$(mint_token_openssl RS256 r1 "$TMP/keys/rsa.pem" -60)"
    expect "HAProxy RS256, wrong issuer" "$rs_url" 401 "$(mint_token_openssl RS256 r1 "$TMP/keys/rsa.pem" 3600 other)"
    expect "HAProxy HS256, valid token" "$hs_url" 200 "$TOKEN_HS"
    expect "HAProxy HS256, no token" "$hs_url" 401
    expect "HAProxy HS256, bad signature" "$hs_url" 401 "$(tamper "$TOKEN_HS")"
    expect "HAProxy HS256, expired" "$hs_url" 401 "$(mint_token_openssl HS256 h1 "$BENCH_HS_SECRET" -60)"
fi
if [[ $USE_JG == 1 ]] && want_section auth; then
    expect "jwtgate auth=none route" "${T_URL[jg-open-tls]}" 200
    expect "jwtgate auth=none route, HTTP" "${T_URL[jg-open-http]}" 200
    expect "jwtgate RS256" "${T_URL[jg-rs256-tls]}" 200 "$TOKEN_RS"
    expect "jwtgate ES256" "${T_URL[jg-es256-tls]}" 200 "$TOKEN_ES"
    expect "jwtgate HS256" "${T_URL[jg-hs256-http]}" 200 "$TOKEN_HS"
    expect "jwtgate, no token" "${T_URL[jg-rs256-tls]}" 401
    expect "jwtgate, bad signature" "${T_URL[jg-rs256-tls]}" 401 "$(tamper "$TOKEN_RS")"
    expect "jwtgate, expired (openssl-minted)" "${T_URL[jg-rs256-tls]}" 401 "$(mint_token_openssl RS256 r1 "$TMP/keys/rsa.pem" -3600)"
    # interop: a token from an independent minter must pass too (warning only)
    xcode=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(mint_token_openssl RS256 r1 "$TMP/keys/rsa.pem")" "${T_URL[jg-rs256-tls]}" || true)
    [[ $xcode == 200 ]] || log "WARNING: jwtgate answered $xcode to an RS256 token minted with openssl (expected 200)"
fi

# --- sections ----------------------------------------------------------------------------

for section in "${SECTIONS[@]}"; do
    case $section in
        plain) run_section plain direct nginx-http haproxy-http jg-http ;;
        tls) run_section tls direct nginx-tls haproxy-tls jg-tls ;;
        h2)
            if [[ $HAVE_H2LOAD == 1 ]]; then
                run_section h2 direct-h1 nginx-h2 haproxy-h2 jg-h2
            else
                skip_row h2 h2 "HTTP/2 rows" "skipped: h2load not installed (apt-get install nghttp2-client)"
            fi
            ;;
        auth)
            if [[ $HA_JWT == 0 ]]; then
                skip_row auth haproxy-rs256-tls "HAProxy jwt_verify rows" "skipped: HAProxy $HAPROXY_VERSION has no jwt_verify (needs 2.5+)"
            fi
            run_section auth jg-open-tls jg-rs256-tls jg-es256-tls haproxy-rs256-tls jg-open-http jg-hs256-http haproxy-hs256-http
            ;;
        tokens|revocation|refresh|features|login|rules|stores|tracing|free)
            if [[ $USE_JG == 1 ]]; then
                "section_$section"
            else
                skip_row "$section" "$section" "jwtgate rows" "skipped: --only peers (this section measures jwtgate alone)"
            fi
            ;;
        mem) ;; # below
    esac
done

# mem: RSS idle and with MEM_CONNS idle keep-alive connections, per transport
# mem_measure LABEL TRANSPORT(http|tls) PORT PID NOTE
mem_measure() {
    local label=$1 transport=$2 port=$3 pid=$4 note=$5 idle loaded ok=0 failed=0 i tls_args=()
    [[ $transport == tls ]] && tls_args=(--tls)
    idle=$(rss_kib "$pid")
    rm -f "$TMP/hold.ready"
    start_bg "hold_conns" "$TMP/hold-$port.log" python3 "$BENCH/lib/hold_conns.py" --port "$port" \
        --n "$MEM_CONNS" "${tls_args[@]}" --ready "$TMP/hold.ready"
    local hpid=$LAST_PID
    for ((i = 0; i < 1200; i++)); do
        [[ -s $TMP/hold.ready ]] && break
        is_alive "$hpid" || break
        sleep 0.1
    done
    if [[ -s $TMP/hold.ready ]]; then
        read -r ok failed <"$TMP/hold.ready"
        sleep 1
        loaded=$(rss_kib "$pid")
    else
        show_log "$TMP/hold-$port.log"
        log "WARNING: $label ($transport): could not open $MEM_CONNS connections"
        loaded=""
        failed=$MEM_CONNS
    fi
    stop_pid "$hpid"
    forget_pid "$hpid"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$transport" "$idle" "$loaded" "$ok" "$failed" "$note" >>"$MEM_TSV"
    log "[mem] $label ($transport): idle ${idle} KiB, with $ok conns ${loaded:-?} KiB"
}

if want_section mem; then
    if [[ $USE_JG == 1 ]]; then
        for transport in http tls; do
            read -r mh mt ma <<<"$(free_ports 3)"
            render "$BENCH/templates/gateway.toml" "$TMP/gateway-mem-$transport.toml" JG_TLS_PORT="$mt" \
                JG_HTTP_PORT="$mh" JG_ADMIN_PORT="$ma" CERT="$CERT" KEY="$KEY" UP_PORT="$UP_PORT"
            start_jwtgate "jwtgate (mem $transport)" "$TMP/gateway-mem-$transport.toml" "$ma"
            mpid=$LAST_PID
            sleep 1
            [[ $transport == http ]] && mport=$mh || mport=$mt
            mem_measure "jwtgate, fresh process" "$transport" "$mport" "$mpid" ""
            stop_pid "$mpid"
            forget_pid "$mpid"
        done
    fi
    ref="reference: long-running instance (served the load above), RSS summed over master and workers"
    mem_measure "nginx proxy" http "$NGX_HTTP_PORT" "$NGX_PID" "$ref"
    mem_measure "nginx proxy" tls "$NGX_TLS_PORT" "$NGX_PID" "$ref"
    mem_measure "HAProxy proxy" http "$HA_HTTP_PORT" "$HA_PID" "${ref%%, RSS*}"
    mem_measure "HAProxy proxy" tls "$HA_TLS_PORT" "$HA_PID" "${ref%%, RSS*}"
fi

# --- report ------------------------------------------------------------------------------

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH/results"
RESULT=$BENCH/results/$STAMP$([[ $USE_JG == 1 ]] || echo -peers).md
{
    echo "# jwtgate benchmark $STAMP"
    echo
    if [[ $USE_JG == 1 ]]; then
        rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
        dirty=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -c1)
        echo "- jwtgate: $JG (git $rev${dirty:+, uncommitted changes in src/Cargo}, built $(date -u -r "$JG" +%Y-%m-%dT%H:%MZ))"
    else
        echo "- peers only (--only peers): no jwtgate rows, tokens minted with openssl"
    fi
    echo "- machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), Linux $(uname -r)"
    echo "- peers: nginx $NGINX_VERSION (2 workers), HAProxy ${HAPROXY_VERSION:-?} (nbthread 2); upstream: nginx return 200, 2 workers"
    echo "- load: $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}') -t1 -c$CONNS -d${DURATION}s --latency$([[ $HAVE_H2LOAD == 1 ]] && echo "; $(h2load --version | head -n1) -c$CONNS -m1 -t1 -D $DURATION")"
    echo "- $ROUNDS round(s) of ${DURATION}s per target after a ${WARMUP}s warm-up; the target order rotates each round; sections: ${SECTIONS[*]}"
    echo "- mem: $MEM_CONNS idle keep-alive connections (one GET each), VmRSS from /proc"
    if [[ $USE_JG == 1 ]] && want_section mem; then
        # The idle figures depend on the code layout (build.rs, link/jwtgate.order): a list
        # gone stale after a toolchain or Cargo.lock change keeps ~5 MiB more code resident.
        layout=$(python3 "$ROOT/tools/order_file.py" check "$JG" "$ROOT/link/jwtgate.order") &&
            layout_note="" || layout_note="; STALE (< 90% found): build the binary on its own (not with --example or --tests in one cargo command), or regenerate with tools/order-file.sh"
        echo "- code layout: ${layout%%$'\n'*}$layout_note"
    fi
    if [[ $USE_JG == 1 ]]; then
        if want_section tokens; then
            echo "- tokens: ES256 and RS256 tokens minted by jwtgate token --count, sent in turn by wrk's Lua (lib/rotate_tokens.lua, request strings prebuilt)"
        fi
        if want_section revocation; then
            echo "- revocation: own redis-server ${REDIS_VERSION:-?} on loopback (no persistence); propagation: $(commas "$PROPAGATION_N") tokens, lib/propagation.py"
        fi
        if want_section stores; then
            echo "- stores: own redis-server ${REDIS_VERSION:-?} processes on loopback: one server; Sentinel (primary, replica, 3 sentinels); Cluster (3 masters); propagation: $(commas "$PROPAGATION_N") tokens per mode, lib/propagation.py"
        fi
        if want_section login; then
            echo "- login: mock IdP lib/mock_idp.py serving the discovery document for [login]; RS256 bearer tokens over TLS"
        fi
        if want_section refresh; then
            echo "- refresh: mock IdP lib/mock_idp.py (python3 http.server, threaded), $REFRESH_TOKENS refresh tokens per run, lib/refresh_mix.lua"
        fi
    fi
    echo
    python3 "$BENCH/lib/report.py" "$RUNS_TSV" "$MEM_TSV"
} >"$TMP/report.md"
cp "$TMP/report.md" "$RESULT"
cat "$TMP/report.md"
log "saved to ${RESULT#"$ROOT"/}"
