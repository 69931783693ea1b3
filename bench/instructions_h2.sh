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
REQUESTS=${BENCH_H2_REQUESTS:-20000}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("$ROOT/target/release/jwtgate" hyper-floor)

die() { printf '[instructions-h2] ERROR: %s\n' "$*" >&2; exit 1; }
for t in valgrind callgrind_control h2load nginx openssl curl python3; do
    command -v "$t" >/dev/null || die "$t is missing (apt-get install valgrind nghttp2-client nginx openssl curl)"
done
JG=$ROOT/target/release/jwtgate
for t in "${TARGETS[@]}"; do
    case $t in
        hyper-floor*) [[ -x $ROOT/target/release/examples/hyper_floor ]] ||
            (cd "$ROOT" && cargo build --release --quiet --example hyper_floor) ;;
        *) [[ -x $t ]] || die "$t is not an executable (cargo build --release?)"; JG=$t ;;
    esac
done
[[ -x $JG ]] || die "$JG is missing (cargo build --release): it makes the certificate"
FLOOR=$ROOT/target/release/examples/hyper_floor

TMP=$(mktemp -d /tmp/jwtgate-ir-h2.XXXXXX)
VG=""
cleanup() {
    [[ -z $VG ]] || kill "$VG" 2>/dev/null || true
    [[ -f $TMP/up/nginx.pid ]] && kill "$(cat "$TMP/up/nginx.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

read -r UP GW ADMIN TLS <<<"$(python3 -c '
import socket
s=[socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1",0))
print(*[x.getsockname()[1] for x in s])')"
mkdir -p "$TMP"/up/{client_body,proxy,fastcgi,uwsgi,scgi}
sed -e "s#@PREFIX@#$TMP/up#g" -e "s#@UP_PORT@#$UP#g" "$ROOT/bench/templates/upstream.nginx.conf" >"$TMP/up/nginx.conf"
nginx -p "$TMP/up" -c "$TMP/up/nginx.conf" -e "$TMP/up/error.log"

"$JG" gen-cert --out "$TMP/certs" --host localhost --host 127.0.0.1 >/dev/null
CERT=$TMP/certs/localhost.crt
KEY=$TMP/certs/localhost.key
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
h=$(printf '{"alg":"RS256","kid":"r1","typ":"JWT"}' | b64url)
p=$(printf '{"iss":"https://bench.test","sub":"bench","exp":%d,"jti":"bench-1","scope":"read write"}' "$(($(date +%s) + 86400))" | b64url)
s=$(printf '%s' "$h.$p" | openssl dgst -sha256 -sign "$TMP/rsa.pem" -binary | b64url)
AUTH="Authorization: Bearer $h.$p.$s"

cat >"$TMP/gateway.toml" <<EOF
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
issuer = "https://bench.test"
keys = [{ kid = "r1", alg = "RS256", pem = "$TMP/rsa.pub.pem" }]

[[routes]]
name = "bench"
path_prefix = "/"
upstreams = ["http://127.0.0.1:$UP"]
auth = "required"
EOF

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
    env RUST_LOG=warn "${adds[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" \
        >"$TMP/target.log" 2>&1 &
    VG=$!
    for _ in $(seq 300); do curl -kfs -o /dev/null -H "$AUTH" "$URL" && break; sleep 0.2; done
    curl -kfs -o /dev/null --http2 -H "$AUTH" "$URL" || die "$t does not answer over TLS (see $TMP/target.log)"
    h2load -n 4000 -c 4 -m 10 -H "$AUTH" "$URL" >/dev/null 2>&1
    callgrind_control -z "$VG" >/dev/null 2>&1
    r=$(h2load -n "$REQUESTS" -c 4 -m 10 -H "$AUTH" "$URL" 2>&1)
    callgrind_control -d "$VG" >/dev/null 2>&1
    kill "$VG"; wait "$VG" 2>/dev/null || true
    VG=""
    n=$(awk '/^requests:/{print $8}' <<<"$r")
    [[ ${n:-0} -gt 0 ]] || die "no successful requests for $t: $r"
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    [[ -n $dump ]] || die "no callgrind dump for $t"
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
    printf '| %s | %s | %s | %s |\n' "$t" "$n" "$ir" "$((ir / n))"
    rm -f "$out"*
done
