#!/usr/bin/env bash
# tools/order-file.sh [BINARY]: regenerate link/jwtgate.order (the code layout build.rs hands
# the linker) from what BINARY (default target/release/jwtgate) runs under callgrind:
#   1. start-up with bench/templates/gateway.toml (HTTP, TLS and admin listeners), requests
#      over HTTP/1.1, h2c, TLS h1 and h2, /metrics, 20 idle connections each over HTTP and
#      TLS, then shutdown;
#   2. bench/instructions.sh's request path, plain, and issue 19's RS256 + Redis + access
#      log configuration.
# Run it under the shared build lock (flock /work/.cargo.lock ...) after a toolchain or
# Cargo.lock change, or when `python3 tools/order_file.py check BINARY` finds < 90% of the
# names; then rebuild (release) and check bench/run.sh --only mem. BINARY must be built on
# its own (`cargo build --release`): built in one command with an example or the tests, its
# dependencies carry other hashes (tools/order_file.py) and the list would fit no other build.
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/jwtgate}")
B=$ROOT/bench
T=$(mktemp -d /tmp/order-file.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"' EXIT
read -r UP H S A < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
[s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/key.pem" -out "$T/cert.pem" -days 1 \
    -subj /CN=localhost 2>/dev/null
mkdir -p "$T/ng"
sed -e "s#@PREFIX@#$T/ng#g;s/@UP_PORT@/$UP/" "$B/templates/upstream.nginx.conf" >"$T/ng/nginx.conf"
nginx -p "$T/ng" -e "$T/ng/error.log" -c "$T/ng/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
sed -e "s/@JG_TLS_PORT@/$S/;s/@JG_HTTP_PORT@/$H/;s/@JG_ADMIN_PORT@/$A/;s#@CERT@#$T/cert.pem#" \
    -e "s#@KEY@#$T/key.pem#;s/@UP_PORT@/$UP/" "$B/templates/gateway.toml" >"$T/gateway.toml"
RUST_LOG=info valgrind --tool=callgrind --demangle=no --callgrind-out-file="$T/start.cg" \
    "$BIN" run -c "$T/gateway.toml" >"$T/gateway.log" 2>&1 &
vg=$!
for _ in $(seq 1500); do curl -fs -o /dev/null "http://127.0.0.1:$A/readyz" && break; sleep 0.05; done
for _ in 1 2 3; do
    curl -fs -o /dev/null "http://127.0.0.1:$H/x"
    curl -fs -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$H/x"
    curl -fsk -o /dev/null --http1.1 "https://127.0.0.1:$S/x"
    curl -fsk -o /dev/null --http2 "https://127.0.0.1:$S/x"
    curl -fs -o /dev/null "http://127.0.0.1:$A/metrics"
done
for tls in "" --tls; do
    timeout 60 python3 "$B/lib/hold_conns.py" --port "$([[ -z $tls ]] && echo "$H" || echo "$S")" $tls \
        --n 20 --ready "$T/ready$tls" --hold 3 >/dev/null 2>&1 || true
done
kill -TERM "$vg"
wait "$vg" || true
mkdir -p "$T/keep"
VALGRIND_OPTS=--demangle=no BENCH_IR_SECONDS=3 BENCH_IR_KEEP=$T/keep "$B/instructions.sh" "$BIN" >/dev/null
VALGRIND_OPTS=--demangle=no BENCH_IR_SECONDS=3 BENCH_IR_KEEP=$T/keep BENCH_IR_ROUTE=rs256 BENCH_IR_STORE=redis \
    BENCH_IR_ACCESS_LOG=on "$B/instructions.sh" "$BIN" >/dev/null
# Request-path functions first (both configurations), then start-up's.
python3 "$ROOT/tools/order_file.py" write "$BIN" "$ROOT/link/jwtgate.order" "$T"/keep/callgrind.* "$T/start.cg"
