#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per proxied request, counted by valgrind's
# callgrind. Unlike req/s on a small shared machine, the count repeats to within ~1% from
# run to run, whatever else the machine is doing, so two builds can be compared exactly.
#
# Usage: bench/instructions.sh [TARGET...]     (default: target/release/jwtgate)
#   TARGET: a jwtgate binary; or `nginx` (nginx 1.22 as the same plain proxy, one process,
#           `master_process off`, upstream keepalive); or `hyper-floor` (examples/
#           hyper_floor.rs, the least a hyper proxy does per request; built here if needed);
#           or `hyper-floor-headers` (the same with FLOOR_ADDS=headers: it also adds the seven
#           request headers and the response's x-request-id that SPEC.md makes jwtgate add)
#   env: BENCH_IR_SECONDS (measured seconds per binary, default 10)
#        BENCH_IR_ROUTE=none|jwt|rule|rs256|bearer|dpop (default none): the route is open; or needs
#        an HS256 bearer token (one token, so every measured request is a verified-cache
#        hit); or also has an `allow` rule (a group check and a method check); or `bearer`:
#        an RS256 bearer token (a cache hit too), `sender_constraint = "off"`; or `dpop`:
#        the same token bound to an ES256 key (`cnf.jkt`), `sender_constraint =
#        "required"`, a new proof per request (bench/lib/dpop_proofs.lua, proofs made by
#        the first jwtgate binary given), the replay cache in a redis-server started here
#        (BENCH_IR_REDIS=0: the memory store). `bearer` and `dpop` need openssl and
#        redis-server.
#        `rs256`: an RS256 bearer token with jti and scope (one token, key made here with
#        openssl), for issue 19's configuration
#        BENCH_IR_STORE=memory|redis (default memory): the revocation store; `redis` starts
#        its own redis-server on a free port (one token, so the revocation cache is warm)
#        BENCH_IR_ACCESS_LOG=off|on (default off): `on` runs with RUST_LOG=info, the
#        access-log line per request written by the log thread (to a file here)
#        BENCH_IR_OTEL=off|on (default off): `on` starts an OTLP/HTTP sink (nginx, templates/
#        otlp-sink.nginx.conf: 200, body discarded) and runs the gateway with
#        OTEL_EXPORTER_OTLP_ENDPOINT pointing at it and OTEL_TRACES_SAMPLER=always_on: every
#        request's server span is built, batched, encoded and posted, all counted (the
#        exporter runs in the gateway's process). OTEL_BSP_* set by the caller pass through.
#        The sink's count of export requests and bytes is printed.
#        Issue 19's configuration: BENCH_IR_ROUTE=rs256 BENCH_IR_STORE=redis
#        BENCH_IR_ACCESS_LOG=on (identity headers are on by default)
#        BENCH_IR_PROFILE=release|profiling (default release): the cargo profile whose
#        target/PROFILE/jwtgate is the default binary and whose hyper_floor is used
#        BENCH_IR_KEEP=DIR keeps each callgrind dump there as callgrind.BINARY.REQUESTS
#        (read it with `callgrind_annotate --inclusive=yes`)
#
# For each binary: a plain-HTTP jwtgate (2 workers, one auth = "none" route) in front of an
# nginx `return 200` upstream runs under callgrind; wrk -t1 -c8 warms it up for 3 s, the
# counters are zeroed, wrk runs again, and the instructions counted during that run are
# divided by the requests wrk completed. Kernel time is not counted (syscalls are the same
# for every build); only the gateway's own work is. Needs valgrind, wrk, nginx (apt-get).
set -Eeuo pipefail

SECONDS_PER_RUN=${BENCH_IR_SECONDS:-10}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${BENCH_IR_PROFILE:-release}
BINS=("$@")
[[ ${#BINS[@]} -gt 0 ]] || BINS=("$ROOT/target/$PROFILE/jwtgate")

log() { printf '[instructions] %s\n' "$*" >&2; }
die() { printf '[instructions] ERROR: %s\n' "$*" >&2; exit 1; }

missing=()
tools=(valgrind:valgrind callgrind_control:valgrind wrk:wrk nginx:nginx curl:curl python3:python3)
[[ ${BENCH_IR_STORE:-memory} == redis ]] && tools+=(redis-server:redis-server redis-cli:redis-tools)
[[ ${BENCH_IR_ROUTE:-none} =~ ^(rs256|bearer|dpop)$ ]] && tools+=(openssl:openssl)
for t in "${tools[@]}"; do
    command -v "${t%%:*}" >/dev/null || missing+=("${t##*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    command -v apt-get >/dev/null || die "missing: ${missing[*]}"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for b in "${BINS[@]}"; do
    case $b in
        nginx) ;;
        hyper-floor|hyper-floor-headers)
            log "building examples/hyper_floor.rs ($PROFILE)"
            (cd "$ROOT" && cargo build --profile "$PROFILE" --quiet --example hyper_floor) ;;
        *) [[ -x $b ]] || die "$b is not an executable (cargo build --release?)" ;;
    esac
done

TMP=$(mktemp -d /tmp/jwtgate-ir.XXXXXX)
chmod 711 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f $TMP/up/nginx.pid ]] && kill "$(cat "$TMP/up/nginx.pid")" 2>/dev/null || true
    [[ -f $TMP/sink/nginx.pid ]] && kill "$(cat "$TMP/sink/nginx.pid")" 2>/dev/null || true
    [[ -f $TMP/redis.pid ]] && kill "$(cat "$TMP/redis.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

read -r UP GW ADMIN REDIS_PORT SINK <<<"$(python3 -c '
import socket
s=[socket.socket() for _ in range(5)]
for x in s: x.bind(("127.0.0.1",0))
print(*[x.getsockname()[1] for x in s])')"

mkdir -p "$TMP"/up/{client_body,proxy,fastcgi,uwsgi,scgi}
sed -e "s#@PREFIX@#$TMP/up#g" -e "s#@UP_PORT@#$UP#g" "$ROOT/bench/templates/upstream.nginx.conf" >"$TMP/up/nginx.conf"
nginx -p "$TMP/up" -c "$TMP/up/nginx.conf" -e "$TMP/up/error.log"

ROUTE_KIND=${BENCH_IR_ROUTE:-none}
WRK_AUTH=()
WRK_SCRIPT=()
ISSUER_BLOCK=""
ROUTE_EXTRA='auth = "none"'
case $ROUTE_KIND in
    none) ;;
    bearer|dpop)
        JG=""
        for b in "${BINS[@]}"; do [[ $b == nginx || $b == hyper-floor* ]] || { JG=$b; break; }; done
        [[ -n $JG ]] || die "BENCH_IR_ROUTE=$ROUTE_KIND needs a jwtgate binary among the targets"
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
        openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
        ISSUER_BLOCK=$(printf '[[issuers]]\nname = "b"\nissuer = "bench"\nkeys = [{ kid = "r1", alg = "RS256", pem = "%s" }]\n\n[tokens]\ndpop_iat_window_s = 3600\n' "$TMP/rsa.pub.pem")
        mint() { "$JG" token --alg RS256 --key "$TMP/rsa.pem" --kid r1 --iss bench --sub alice --ttl 7200 "$@" | tail -n 1; }
        if [[ $ROUTE_KIND == bearer ]]; then
            ROUTE_EXTRA=$'auth = "required"\nsender_constraint = "off"'
            WRK_AUTH=(-H "Authorization: Bearer $(mint)")
        else
            ROUTE_EXTRA=$'auth = "required"\nsender_constraint = "required"'
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/dpop.pem" 2>/dev/null
            DPOP_TOKEN=$(mint --dpop-key "$TMP/dpop.pem")
            export DPOP_TOKEN
            if [[ ${BENCH_IR_REDIS:-1} == 1 ]]; then
                REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
                redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
                PIDS+=($!)
                for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
                ISSUER_BLOCK+=$(printf '\n\n[revocation]\nstore = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT")
            fi
        fi
        ;;
    jwt|rule)
        export BENCH_IR_HS_SECRET="instructions-bench-secret-of-32-bytes-or-more"
        ISSUER_BLOCK=$(printf '[[issuers]]\nname = "b"\nissuer = "https://bench.test"\nkeys = [{ kid = "h1", alg = "HS256", secret_env = "BENCH_IR_HS_SECRET" }]\n')
        ROUTE_EXTRA='auth = "required"'
        if [[ $ROUTE_KIND == rule ]]; then
            ROUTE_EXTRA+=$'\n'"allow = 'in_group(\"admin\") || request.method in [\"GET\", \"HEAD\"]'"
        fi
        TOKEN=$(python3 -c '
import base64, hashlib, hmac, json, os, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "kid": "h1", "typ": "JWT"}).encode())
p = b(json.dumps({"iss": "https://bench.test", "sub": "bench", "exp": int(time.time()) + 86400, "groups": ["dev"]}).encode())
s = b(hmac.new(os.environ["BENCH_IR_HS_SECRET"].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")')
        WRK_AUTH=(-H "Authorization: Bearer $TOKEN")
        ;;
    rs256)
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
        openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
        ISSUER_BLOCK=$(printf '[[issuers]]\nname = "b"\nissuer = "https://bench.test"\nkeys = [{ kid = "r1", alg = "RS256", pem = "%s" }]\n' "$TMP/rsa.pub.pem")
        ROUTE_EXTRA='auth = "required"'
        b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
        h=$(printf '{"alg":"RS256","kid":"r1","typ":"JWT"}' | b64url)
        p=$(printf '{"iss":"https://bench.test","sub":"bench","exp":%d,"jti":"bench-1","scope":"read write"}' "$(($(date +%s) + 86400))" | b64url)
        s=$(printf '%s' "$h.$p" | openssl dgst -sha256 -sign "$TMP/rsa.pem" -binary | b64url)
        WRK_AUTH=(-H "Authorization: Bearer $h.$p.$s")
        ;;
    *) die "BENCH_IR_ROUTE must be none, jwt, rule, rs256, bearer or dpop" ;;
esac

STORE_BLOCK=""
case ${BENCH_IR_STORE:-memory} in
    memory) ;;
    redis)
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --daemonize yes --pidfile "$TMP/redis.pid" --logfile "$TMP/redis.log" --dir "$TMP"
        for _ in $(seq 50); do [[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] && break; sleep 0.1; done
        [[ $(redis-cli -p "$REDIS_PORT" PING 2>&1) == PONG ]] || die "redis-server on port $REDIS_PORT does not answer"
        STORE_BLOCK=$(printf '[revocation]\nstore = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT")
        ;;
    *) die "BENCH_IR_STORE must be memory or redis" ;;
esac
OTEL_ENV=()
case ${BENCH_IR_OTEL:-off} in
    off) ;;
    on)
        mkdir -p "$TMP"/sink/{client_body,proxy,fastcgi,uwsgi,scgi}
        sed -e "s#@PREFIX@#$TMP/sink#g" -e "s#@SINK_PORT@#$SINK#g" "$ROOT/bench/templates/otlp-sink.nginx.conf" >"$TMP/sink/nginx.conf"
        nginx -p "$TMP/sink" -c "$TMP/sink/nginx.conf" -e "$TMP/sink/error.log"
        OTEL_ENV=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK" OTEL_TRACES_SAMPLER=always_on)
        ;;
    *) die "BENCH_IR_OTEL must be off or on" ;;
esac
case ${BENCH_IR_ACCESS_LOG:-off} in
    off) LOG_LEVEL=warn ;;
    on) LOG_LEVEL=info ;;
    *) die "BENCH_IR_ACCESS_LOG must be off or on" ;;
esac

cat >"$TMP/gateway.toml" <<EOF
[listen]
http = "127.0.0.1:$GW"
admin = "127.0.0.1:$ADMIN"

[server]
worker_threads = 2
log_format = "text"

$ISSUER_BLOCK

$STORE_BLOCK

[[routes]]
name = "bench"
path_prefix = "/"
upstreams = ["http://127.0.0.1:$UP"]
$ROUTE_EXTRA
EOF

printf '| binary | requests | instructions | instructions per request |\n|---|---:|---:|---:|\n'
mkdir -p "$TMP"/px/{client_body,proxy,fastcgi,uwsgi,scgi}
cat >"$TMP/px/nginx.conf" <<EOF
master_process off;
daemon off;
pid $TMP/px/nginx.pid;
error_log $TMP/px/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/px/client_body;
    proxy_temp_path $TMP/px/proxy;
    fastcgi_temp_path $TMP/px/fastcgi;
    uwsgi_temp_path $TMP/px/uwsgi;
    scgi_temp_path $TMP/px/scgi;
    upstream bench_up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$GW;
        location / { proxy_pass http://bench_up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF

for b in "${BINS[@]}"; do
    out="$TMP/callgrind.out"
    case $b in
        nginx) cmd=(nginx -p "$TMP/px" -c "$TMP/px/nginx.conf" -e "$TMP/px/error.log") ;;
        hyper-floor|hyper-floor-headers) cmd=("$ROOT/target/$PROFILE/examples/hyper_floor" "127.0.0.1:$GW" "127.0.0.1:$UP") ;;
        *) cmd=("$b" run -c "$TMP/gateway.toml") ;;
    esac
    [[ ! -d $TMP/sink ]] || : >"$TMP/sink/exports.log"
    adds=()
    [[ $b != hyper-floor-headers ]] || adds=(FLOOR_ADDS=headers)
    env RUST_LOG=$LOG_LEVEL "${OTEL_ENV[@]}" "${adds[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" \
        >"$TMP/gateway.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    if [[ $ROUTE_KIND == dpop ]]; then
        # Proofs for this binary's warm-up and measured run, never sent before; a proof
        # per request at what callgrind lets through (a few hundred per second).
        for part in warm run; do
            "$JG" dpop-proof --key "$TMP/dpop.pem" --url "http://127.0.0.1:$GW/" --token "$DPOP_TOKEN" \
                --count $((2000 * (SECONDS_PER_RUN + 3))) >"$TMP/proofs-$part.txt"
        done
        probe=(-H "Authorization: DPoP $DPOP_TOKEN" -H "DPoP: $("$JG" dpop-proof --key "$TMP/dpop.pem" --url "http://127.0.0.1:$GW/" --token "$DPOP_TOKEN")")
        WRK_SCRIPT=(-s "$ROOT/bench/lib/dpop_proofs.lua")
    else
        probe=("${WRK_AUTH[@]}")
    fi
    for _ in $(seq 150); do curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.2; done
    curl -fs -o /dev/null "${probe[@]}" "http://127.0.0.1:$GW/" || die "$b did not start under valgrind, or refused the request (see $TMP/gateway.log)"
    DPOP_PROOFS=$TMP/proofs-warm.txt wrk -t1 -c8 -d3s "${WRK_AUTH[@]}" "${WRK_SCRIPT[@]}" "http://127.0.0.1:$GW/" >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    w=$(DPOP_PROOFS=$TMP/proofs-run.txt wrk -t1 -c8 -d"${SECONDS_PER_RUN}s" "${WRK_AUTH[@]}" "${WRK_SCRIPT[@]}" "http://127.0.0.1:$GW/")
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$w")
    [[ -z $bad ]] || log "WARNING: $b: $bad non-2xx responses in the measured run"
    callgrind_control -d "$vg" >/dev/null 2>&1
    kill "$vg"; wait "$vg" 2>/dev/null || true
    reqs=$(awk '/requests in/{print $1}' <<<"$w")
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    [[ -n $dump && -n $reqs ]] || die "no callgrind dump or wrk result for $b"
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
    printf '| %s | %s | %s | %s |\n' "$b" "$reqs" "$ir" "$((ir / reqs))"
    if [[ ${BENCH_IR_OTEL:-off} == on ]]; then
        # The exporter flushed what was queued when the gateway exited (SIGTERM).
        log "$b: the OTLP sink received $(wc -l <"$TMP/sink/exports.log") export requests, $(awk '{n += $1} END {print n + 0}' "$TMP/sink/exports.log") bytes (warm-up included)"
    fi
    if [[ -n ${BENCH_IR_KEEP:-} ]]; then
        mkdir -p "$BENCH_IR_KEEP"
        cp "$dump" "$BENCH_IR_KEEP/callgrind.$(basename "$b").$reqs"
    fi
    rm -f "$out"*
done
