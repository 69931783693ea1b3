#!/usr/bin/env python3
"""bench/lib/propagation.py: how long a revocation made through replica A takes to reach replica B.

For each of the first --n tokens of --tokens (one JWT per line, each with jti and exp):
  1. GET / on B (plain HTTP, one keep-alive connection) must answer 200: B now holds a cached
     "not revoked" for the token (the replicas run with a long cache_ttl_ms, so only the pub/sub
     message can make B refuse it before the cache entry expires);
  2. POST {"jti": ..., "exp": ...} to A's admin /revocations with the admin bearer token must
     answer 204;
  3. GET / on B again and again (same connection, no pause) until it answers 401.
The latency is the time from A's 204 arriving to B's first 401 arriving. Every poll is one full
request to B, so the resolution is one round trip to B (printed as poll_rtt_ms).

Prints one JSON object on stdout. Anything unexpected (another status, a 401 without
"token revoked") is printed to stderr with what was sent and what came back, exit status 2.
Bounded: --timeout-s per token (then it counts as a timeout), --deadline-s in all.
"""
import argparse
import base64
import http.client
import json
import math
import os
import statistics
import sys
import time


def claims(tok):
    p = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    return sorted_vals[max(0, math.ceil(q * len(sorted_vals)) - 1)]


def unexpected(what, method, url, sent_headers, sent_body, resp, body):
    print(f"propagation: UNEXPECTED {what}\n  sent: {method} {url}\n  headers: {sent_headers}\n"
          f"  body: {sent_body!r}\n  got: HTTP {resp.status} {resp.reason}\n"
          f"  response headers: {resp.getheaders()}\n  response body: {body[:500]!r}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--b-port", type=int, required=True, help="replica B, plain HTTP listener")
    ap.add_argument("--b-path", default="/")
    ap.add_argument("--a-admin-port", type=int, required=True, help="replica A, admin listener")
    ap.add_argument("--admin-token-env", default="BENCH_ADMIN_TOKEN")
    ap.add_argument("--timeout-s", type=float, default=5.0)
    ap.add_argument("--deadline-s", type=float, default=300.0)
    a = ap.parse_args()

    admin_token = os.environ.get(a.admin_token_env)
    if not admin_token:
        sys.exit(f"propagation: ${a.admin_token_env} is not set")
    with open(a.tokens) as f:
        tokens = [line.strip() for line in f if line.strip()][: a.n]
    if len(tokens) < a.n:
        sys.exit(f"propagation: {a.tokens} has only {len(tokens)} tokens, need {a.n}")

    b = http.client.HTTPConnection("127.0.0.1", a.b_port, timeout=10)
    adm = http.client.HTTPConnection("127.0.0.1", a.a_admin_port, timeout=10)
    b_url = f"http://127.0.0.1:{a.b_port}{a.b_path}"
    adm_url = f"http://127.0.0.1:{a.a_admin_port}/revocations"
    lat, polls, rtts, timeouts, first_poll_401 = [], [], [], 0, 0
    start = time.monotonic()
    for tok in tokens:
        if time.monotonic() - start > a.deadline_s:
            print(f"propagation: deadline of {a.deadline_s}s reached after {len(lat) + timeouts} tokens",
                  file=sys.stderr)
            break
        c = claims(tok)
        hdrs = {"Authorization": f"Bearer {tok}"}
        shown = {"Authorization": "Bearer <token jti=%s>" % c.get("jti")}
        # 1. warm B
        b.request("GET", a.b_path, headers=hdrs)
        r = b.getresponse()
        body = r.read()
        if r.status != 200:
            unexpected("warm-up GET on B", "GET", b_url, shown, b"", r, body)
        # 2. revoke through A
        payload = json.dumps({"jti": c["jti"], "exp": c["exp"]})
        ah = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
        adm.request("POST", "/revocations", body=payload, headers=ah)
        r = adm.getresponse()
        body = r.read()
        t0 = time.perf_counter()
        if r.status != 204:
            unexpected("POST /revocations on A", "POST", adm_url,
                       {"Authorization": "Bearer $" + a.admin_token_env, "Content-Type": "application/json"},
                       payload, r, body)
        # 3. poll B until 401
        n = 0
        while True:
            tp = time.perf_counter()
            b.request("GET", a.b_path, headers=hdrs)
            r = b.getresponse()
            body = r.read()
            t1 = time.perf_counter()
            n += 1
            rtts.append(t1 - tp)
            if r.status == 401:
                www = r.getheader("WWW-Authenticate") or ""
                if "token revoked" not in www:
                    unexpected("401 without 'token revoked' in WWW-Authenticate", "GET", b_url, shown, b"", r, body)
                lat.append(t1 - t0)
                polls.append(n)
                if n == 1:
                    first_poll_401 += 1
                break
            if r.status != 200:
                unexpected("status while polling B", "GET", b_url, shown, b"", r, body)
            if t1 - t0 > a.timeout_s:
                timeouts += 1
                polls.append(n)
                break

    s = sorted(lat)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    out = {
        "n": len(lat) + timeouts,
        "propagated": len(lat),
        "timeouts": timeouts,
        "timeout_s": a.timeout_s,
        "p50_ms": ms(pct(s, 0.50)),
        "p99_ms": ms(pct(s, 0.99)),
        "max_ms": ms(s[-1] if s else None),
        "mean_ms": ms(statistics.fmean(s) if s else None),
        "first_poll_already_401": first_poll_401,
        "polls_median": statistics.median(polls) if polls else None,
        "poll_rtt_ms": ms(statistics.median(rtts) if rtts else None),
        "elapsed_s": round(time.monotonic() - start, 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
