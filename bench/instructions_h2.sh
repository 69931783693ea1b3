#!/usr/bin/env bash
# bench/instructions_h2.sh: user-space instructions per request over TLS h2, counted by
# valgrind's callgrind (TLS and HPACK included), the h2 companion of bench/instructions.sh.
#
# Usage: bench/instructions_h2.sh [TARGET...]   (default: target/release/jwtgate hyper-floor)
#   TARGET: a jwtgate binary (RS256 bearer route, memory revocation store, identity headers,
#           access log off); `hyper-floor` (examples/hyper_floor.rs on TLS, h2 by ALPN); or
#           `hyper-floor-headers` (the same with FLOOR_ADDS=headers: SPEC.md's seven request
#           headers and the response's x-request-id). The floor is built here if missing.
#   env: BENCH_H2_REQUESTS (measured requests, default 20000), after 4,000 to warm up;
#        h2load -c4 -m10 (4 connections, 10 streams each), one RS256 token on every request.
# For each target the counters are zeroed after the warm-up, h2load sends its requests, and
# the instructions counted are divided by the requests that succeeded. Needs valgrind,
# h2load (nghttp2-client), nginx, openssl, curl, python3.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ISSUER=https://bench.test
KEEP_TMP=0
# log, die, start_bg, stop_pid, free_ports, start_nginx, mint_token_openssl, the cleanup traps.
# shellcheck source=lib/common.sh
source "$BENCH/lib/common.sh"

REQUESTS=${BENCH_H2_REQUESTS:-20000}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("$ROOT/target/release/jwtgate" hyper-floor)
for t in valgrind callgrind_control h2load nginx openssl curl python3; do
    command -v "$t" >/dev/null || die "$t is missing (apt-get install valgrind nghttp2-client nginx openssl curl)"
done
JG=$ROOT/target/release/jwtgate
FLOOR=$ROOT/target/release/examples/hyper_floor
for t in "${TARGETS[@]}"; do
    case $t in
        hyper-floor|hyper-floor-headers)
            [[ -x $FLOOR ]] || (cd "$ROOT" && cargo build --release --quiet --example hyper_floor) ;;
        *) [[ -x $t ]] || die "$t is not an executable (cargo build --release?)"; JG=$t ;;
    esac
done
[[ -x $JG ]] || die "$JG is missing (cargo build --release): it makes the certificate"

TMP=$(mktemp -d /tmp/jwtgate-ir-h2.XXXXXX)
read -r UP GW ADMIN TLS <<<"$(free_ports 4)"
start_nginx "upstream nginx" "$TMP/up" "$BENCH/templates/upstream.nginx.conf" "$UP" UP_PORT="$UP"

"$JG" gen-cert --out "$TMP/certs" --host localhost --host 127.0.0.1 >/dev/null
CERT=$TMP/certs/localhost.crt
KEY=$TMP/certs/localhost.key
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
AUTH="Authorization: Bearer $(mint_token_openssl RS256 r1 "$TMP/rsa.pem" 86400)"

cat >"$TMP/gateway.toml" <<TOML
[listen]
http = "127.0.0.1:$GW"
https = "127.0.0.1:$TLS"
admin = "127.0.0.1:$ADMIN"

[server]
worker_threads = 2
log_format = "text"

[tls]
cert = "$CERT"
key = "$KEY"

[[issuers]]
name = "b"
issuer = "$ISSUER"
keys = [{ kid = "r1", alg = "RS256", pem = "$TMP/rsa.pub.pem" }]

[[routes]]
name = "bench"
path_prefix = "/"
upstreams = ["http://127.0.0.1:$UP"]
auth = "required"
TOML

URL=https://127.0.0.1:$TLS/
printf '| target | requests | instructions | instructions per request |\n|---|---:|---:|---:|\n'
for t in "${TARGETS[@]}"; do
    out=$TMP/callgrind.out
    adds=()
    case $t in
        hyper-floor|hyper-floor-headers)
            cmd=("$FLOOR" "127.0.0.1:$GW" "127.0.0.1:$UP" "127.0.0.1:$TLS" "$CERT" "$KEY")
            [[ $t == hyper-floor ]] || adds=(FLOOR_ADDS=headers) ;;
        *) cmd=("$t" run -c "$TMP/gateway.toml") ;;
    esac
    start_bg "$t under callgrind" "$TMP/target.log" env RUST_LOG=warn ${adds[@]+"${adds[@]}"} \
        valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}"
    vg=$LAST_PID
    for _ in $(seq 300); do curl -kfs -o /dev/null -H "$AUTH" "$URL" && break; sleep 0.2; done
    curl -kfs -o /dev/null --http2 -H "$AUTH" "$URL" || die "$t does not answer over TLS (see $TMP/target.log)"
    h2load -n 4000 -c 4 -m 10 -H "$AUTH" "$URL" >/dev/null 2>&1
    callgrind_control -z "$vg" >/dev/null 2>&1
    r=$(h2load -n "$REQUESTS" -c 4 -m 10 -H "$AUTH" "$URL" 2>&1)
    callgrind_control -d "$vg" >/dev/null 2>&1
    stop_pid "$vg"
    forget_pid "$vg"
    n=$(awk '/^requests:/{print $8}' <<<"$r")
    [[ ${n:-0} -gt 0 ]] || die "no successful requests for $t: $r"
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    [[ -n $dump ]] || die "no callgrind dump for $t"
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
    printf '| %s | %s | %s | %s |\n' "$t" "$n" "$ir" "$((ir / n))"
    rm -f "$out"*
done
