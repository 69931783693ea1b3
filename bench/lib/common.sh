# bench/lib/common.sh: what the bench scripts (run.sh, forward_auth.sh, dpop.sh, scale.sh) share:
# logging, the processes a script starts and their cleanup, readiness waits, apt-get
# installs that start no service, free ports, templates, test tokens, jwtgate start-up, RSS
# and wrk output parsing.
#
# The sourcing script sets ROOT (the repository), BENCH ($ROOT/bench), JG (the jwtgate
# binary), ISSUER (the tokens' iss) and KEEP_TMP (1 = keep $TMP), and later TMP (its one
# mktemp folder). Sourcing installs the EXIT/INT/TERM traps: on exit exactly the processes
# started with start_bg are stopped, newest first.
# shellcheck shell=bash

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '\n[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# --- processes and cleanup ---------------------------------------------------------------

PIDS=()
declare -A PID_NAME=()
TMP=""
POLICY_RC_CREATED=0

is_alive() { # a zombie (exited, not yet reaped) counts as dead
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z ]]
}

stop_pid() {
    local pid=$1 i
    if is_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do is_alive "$pid" || break; sleep 0.1; done
        if is_alive "$pid"; then
            log "${PID_NAME[$pid]:-process} (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    set +e
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    if [[ $POLICY_RC_CREATED == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_TMP:-0} == 1 || $rc != 0 ]]; then
            log "temporary files kept in $TMP (logs of every process are there)"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME LOGFILE CMD...: start CMD in the background, remember its pid in LAST_PID
start_bg() {
    local name=$1 logf=$2
    shift 2
    "$@" >"$logf" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    PID_NAME[$LAST_PID]=$name
}

forget_pid() { # after stop_pid: drop it from the cleanup list
    local pid=$1 p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

show_log() { log "--- last lines of $1 ---"; tail -n 30 "$1" >&2 || true; }

# wait_port NAME PID PORT LOGFILE: until something accepts on 127.0.0.1:PORT
wait_port() {
    local name=$1 pid=$2 port=$3 logf=$4 i
    for ((i = 0; i < 150; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! is_alive "$pid"; then show_log "$logf"; die "$name exited during startup (log: $logf)"; fi
        sleep 0.1
    done
    show_log "$logf"
    die "$name did not listen on 127.0.0.1:$port within 15 s (log: $logf)"
}

# --- tools -------------------------------------------------------------------------------

apt_install() {
    [[ $EUID -eq 0 ]] || die "missing packages: $*; run as root, or install them first: apt-get install $*"
    command -v apt-get >/dev/null || die "missing packages: $*; this script installs them only with apt-get (Debian/Ubuntu)"
    # Keep apt from starting the packages' system services (nginx on :80, haproxy, caddy):
    # a temporary policy-rc.d (exit 101 = "not allowed"), only if none exists already.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from jwtgate bench/lib/common.sh: no service starts during install\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    log "installing: $* (apt-get)"
    local rc=0
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >&2 || rc=$?
    if [[ $POLICY_RC_CREATED == 1 ]]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
    return "$rc"
}

# need_cmds CMD=PACKAGE...: install the packages of the missing commands, then insist on all
need_cmds() {
    local kv missing=()
    for kv in "$@"; do command -v "${kv%%=*}" >/dev/null 2>&1 || missing+=("${kv#*=}"); done
    if [[ ${#missing[@]} -gt 0 ]]; then
        apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    fi
    for kv in "$@"; do command -v "${kv%%=*}" >/dev/null 2>&1 || die "${kv%%=*} still missing after install"; done
}

version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

ensure_jwtgate() {
    if [[ -x $JG ]]; then
        if [[ -d $ROOT/src && -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" -newer "$JG" -print -quit 2>/dev/null)" ]]; then
            log "WARNING: $JG is older than src/ or Cargo.toml; run 'cargo build --release' to bench the current code"
        fi
        return 0
    fi
    [[ -z ${JWTGATE_BIN:-} ]] || die "JWTGATE_BIN=$JG is not an executable file"
    local cargo
    cargo=$(command -v cargo 2>/dev/null || true)
    if [[ -z $cargo && -x ${HOME:-/root}/.cargo/bin/cargo ]]; then cargo=${HOME:-/root}/.cargo/bin/cargo; fi
    if [[ -z $cargo ]]; then
        die "$JG does not exist and cargo is not available to build it.
    Build jwtgate first ('cargo build --release' in $ROOT, with a Rust toolchain installed through rustup),
    or point JWTGATE_BIN at a release binary."
    fi
    log "target/release/jwtgate is missing: building it (cargo build --release) ..."
    (cd "$ROOT" && "$cargo" build --release) || die "cargo build --release failed"
    [[ -x $JG ]] || die "cargo build --release finished but $JG does not exist"
}

# --- helpers -----------------------------------------------------------------------------

free_ports() { # N free TCP ports on 127.0.0.1 (held open together, so they are distinct)
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# render TEMPLATE OUT NAME=VALUE...: replace @NAME@ with VALUE
render() {
    local tmpl=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do
        local k=${kv%%=*} v=${kv#*=}
        v=${v//\\/\\\\}
        v=${v//|/\\|}
        v=${v//&/\\&}
        args+=(-e "s|@${k}@|${v}|g")
    done
    sed "${args[@]}" "$tmpl" >"$out"
    if grep -n '@[A-Z0-9_]*@' "$out" >&2; then die "unfilled placeholder in $out (from $tmpl)"; fi
}

rss_kib() { # VmRSS of a process plus its direct children (nginx master + workers), in KiB
    local total=0 p v
    for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

commas() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; } # 1000000 -> 1,000,000

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# mint_token_openssl ALG KID KEYFILE|SECRET [EXP_OFFSET_S] [ISS]: a JWT made with openssl alone
# (RS256, HS256), independent of jwtgate: sub alice, a random jti
mint_token_openssl() {
    local alg=$1 kid=$2 key=$3 exp_off=${4:-3600} iss=${5:-$ISSUER} now h p sig
    now=$(date +%s)
    h=$(printf '{"alg":"%s","typ":"JWT","kid":"%s"}' "$alg" "$kid" | b64url)
    p=$(printf '{"iss":"%s","sub":"alice","iat":%d,"exp":%d,"jti":"%s"}' \
        "$iss" "$now" "$((now + exp_off))" "$(openssl rand -hex 8)" | b64url)
    case $alg in
        RS256) sig=$(printf '%s' "$h.$p" | openssl dgst -sha256 -sign "$key" -binary | b64url) ;;
        HS256) sig=$(printf '%s' "$h.$p" | openssl dgst -sha256 -mac HMAC -macopt "key:$key" -binary | b64url) ;;
        *) die "mint_token_openssl: $alg not supported" ;;
    esac
    printf '%s.%s.%s\n' "$h" "$p" "$sig"
}

# start_jwtgate NAME CONFIG ADMIN_PORT: `jwtgate check`, then `jwtgate run` until the admin
# listener's /readyz answers 200 -> LAST_PID, and START_MS: milliseconds from `run` to that
# first 200 (polled every 20 ms); its log is CONFIG with .log for .toml
START_MS=0
start_jwtgate() {
    local name=$1 cfg=$2 admin=$3 logf=${2%.toml}.log i t0
    "$JG" check -c "$cfg" >"${cfg%.toml}.check.log" 2>&1 ||
        { cat "${cfg%.toml}.check.log" >&2; die "jwtgate check -c $cfg failed"; }
    t0=$(date +%s%N)
    # JG_ENV: extra NAME=VALUE words for this process (the "tracing" section's OTEL_*).
    start_bg "$name" "$logf" env RUST_LOG=warn ${JG_ENV[@]+"${JG_ENV[@]}"} "$JG" run -c "$cfg"
    local pid=$LAST_PID
    for ((i = 0; i < 1000; i++)); do
        if curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$admin/readyz"; then
            START_MS=$((($(date +%s%N) - t0) / 1000000))
            return 0
        fi
        is_alive "$pid" || { show_log "$logf"; die "$name exited during startup (log: $logf)"; }
        sleep 0.02
    done
    show_log "$logf"
    die "$name: admin /readyz on 127.0.0.1:$admin did not answer 200 within 20 s (log: $logf)"
}

# start_nginx NAME DIR TEMPLATE PORT NAME=VALUE...: DIR/nginx.conf from TEMPLATE (PREFIX=DIR
# added), its own instance (-p DIR, never the system service), until PORT accepts -> LAST_PID
start_nginx() {
    local name=$1 dir=$2 tmpl=$3 port=$4
    shift 4
    mkdir -p "$dir"
    render "$tmpl" "$dir/nginx.conf" PREFIX="$dir" "$@"
    start_bg "$name" "$dir/stderr.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
    wait_port "$name" "$LAST_PID" "$port" "$dir/error.log"
}

# --- load generators ----------------------------------------------------------------------

# parse_wrk FILE -> "rps p50_ms p99_ms errors"
parse_wrk() {
    awk '
    function ms(v) {
        if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
        if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
        if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
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

wrk_requests() { awk '/ requests in / {print $1; exit}' "$1"; } # requests wrk completed
