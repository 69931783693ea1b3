#!/usr/bin/env python3
"""bench/lib/mock_idp.py: a minimal OAuth 2.0 token endpoint for bench/run.sh's refresh section.

POST /token
    refresh_token grant (RFC 6749 §6). Client authentication client_secret_basic: client id
    --client-id, secret from $BENCH_CLIENT_SECRET (RFC 6749 §2.3.1: both form-urlencoded, then
    Basic). Refresh tokens rotate: each works once and the answer carries a new one; a spent or
    unknown refresh token gets 400 {"error": "invalid_grant"}. Every call is counted per
    presented refresh token. Access tokens are HS256 JWTs (header kid --kid; claims iss --issuer,
    sub, iat, exp = now + --access-ttl, jti) signed with the exact bytes of $BENCH_HS_SECRET.
POST /bench/issue?batch=NAME&n=N&ttl=S
    set-up helper for the benchmark: issue N fresh refresh tokens, remembered as batch NAME, and
    answer N text lines "ACCESS_TOKEN REFRESH_TOKEN" where ACCESS_TOKEN (same subject) expires in
    S seconds, i.e. the near-expiry token a client would hold together with that refresh token.
GET /stats[?batch=NAME]
    JSON counters: calls to /token by outcome and, for batch NAME, the calls per refresh token.
GET /.well-known/openid-configuration
    an OpenID provider metadata document naming --issuer (give it this server's own URL for the
    gateway's `discovery = true`), with /authorize, /token, /jwks and /end-session under it; the
    login section only needs the gateway to find it (its measured requests never reach the IdP).

Binds 127.0.0.1 only; threaded; quiet unless something is wrong.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlsplit


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Idp:
    def __init__(self, args, hs_secret, client_secret):
        self.a = args
        self.hs_secret = hs_secret
        self.client_secret = client_secret
        self.lock = threading.Lock()
        # refresh token -> {"batch", "idx", "sub", "spent", "calls"}
        self.refresh = {}
        self.batches = {}  # batch -> [refresh tokens in issue order]
        self.counts = {"calls": 0, "ok": 0, "invalid_grant": 0, "invalid_client": 0,
                       "invalid_request": 0, "rotated_tokens_used": 0}

    def jwt(self, sub, ttl):
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT", "kid": self.a.kid}
        claims = {"iss": self.a.issuer, "sub": sub, "iat": now, "exp": now + ttl,
                  "jti": secrets.token_hex(16)}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = hmac.new(self.hs_secret, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64url(sig)

    def new_refresh(self, batch, idx, sub):
        rt = secrets.token_urlsafe(32)
        self.refresh[rt] = {"batch": batch, "idx": idx, "sub": sub, "spent": False, "calls": 0}
        return rt

    def issue(self, batch, n, ttl):
        lines = []
        with self.lock:
            if batch in self.batches:
                return None
            toks = []
            for i in range(n):
                sub = f"bench-{batch}-{i}"
                rt = self.new_refresh(batch, i, sub)
                toks.append(rt)
                lines.append(f"{self.jwt(sub, ttl)} {rt}")
            self.batches[batch] = toks
        return "\n".join(lines) + "\n"

    def client_ok(self, authz):
        if not authz or not authz.startswith("Basic "):
            return False
        try:
            raw = base64.b64decode(authz[6:].strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        cid, sep, secret = raw.partition(":")
        if not sep:
            return False
        return (hmac.compare_digest(unquote_plus(cid), self.a.client_id) and
                hmac.compare_digest(unquote_plus(secret), self.client_secret))

    def token(self, authz, form):
        """-> (status, json body)"""
        with self.lock:
            self.counts["calls"] += 1
            if not self.client_ok(authz):
                self.counts["invalid_client"] += 1
                return 401, {"error": "invalid_client"}
            grant = form.get("grant_type", [""])[0]
            rt = form.get("refresh_token", [""])[0]
            if grant != "refresh_token" or not rt:
                self.counts["invalid_request"] += 1
                return 400, {"error": "unsupported_grant_type" if grant != "refresh_token" else "invalid_request"}
            ent = self.refresh.get(rt)
            if ent is None:
                self.counts["invalid_grant"] += 1
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            ent["calls"] += 1
            if ent["batch"].endswith(":rotated"):
                self.counts["rotated_tokens_used"] += 1
            if ent["spent"]:
                self.counts["invalid_grant"] += 1
                return 400, {"error": "invalid_grant", "error_description": "refresh token already used"}
            ent["spent"] = True
            self.counts["ok"] += 1
            new_rt = self.new_refresh(ent["batch"].split(":")[0] + ":rotated", ent["idx"], ent["sub"])
            access = self.jwt(ent["sub"], self.a.access_ttl)
        return 200, {"access_token": access, "token_type": "Bearer", "expires_in": self.a.access_ttl,
                     "refresh_token": new_rt}

    def stats(self, batch):
        with self.lock:
            out = dict(self.counts)
            if batch is not None:
                toks = self.batches.get(batch)
                if toks is None:
                    out["batch"] = None
                else:
                    calls = [self.refresh[t]["calls"] for t in toks]
                    out["batch"] = {"name": batch, "tokens": len(toks),
                                    "used": sum(1 for c in calls if c > 0),
                                    "calls": sum(calls), "max_calls": max(calls) if calls else 0,
                                    "calls_per_token": calls}
        return out


def handler_for(idp):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real IdP behind the gateway's pool

        def send(self, status, body, ctype="application/json"):
            data = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n > 0 else b""

        def do_POST(self):
            u = urlsplit(self.path)
            raw = self.body()
            if u.path == "/token":
                form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
                status, body = idp.token(self.headers.get("Authorization"), form)
                self.send(status, body)
            elif u.path == "/bench/issue":
                q = parse_qs(u.query)
                try:
                    batch = q["batch"][0]
                    n = int(q.get("n", ["50"])[0])
                    ttl = int(q.get("ttl", ["30"])[0])
                except (KeyError, ValueError):
                    self.send(400, {"error": "invalid_request", "error_description": "batch, n, ttl"})
                    return
                text = idp.issue(batch, n, ttl)
                if text is None:
                    self.send(409, {"error": "batch exists"})
                else:
                    self.send(200, text, "text/plain")
            else:
                self.send(404, {"error": "not_found"})

        def do_GET(self):
            u = urlsplit(self.path)
            if u.path == "/stats":
                q = parse_qs(u.query)
                self.send(200, idp.stats(q.get("batch", [None])[0]))
            elif u.path == "/.well-known/openid-configuration":
                iss = idp.a.issuer
                self.send(200, {
                    "issuer": iss,
                    "authorization_endpoint": iss + "/authorize",
                    "token_endpoint": iss + "/token",
                    "jwks_uri": iss + "/jwks",
                    "end_session_endpoint": iss + "/end-session",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["HS256"],
                    "code_challenge_methods_supported": ["S256"],
                })
            elif u.path == "/jwks":
                self.send(200, {"keys": []})
            else:
                self.send(404, {"error": "not_found"})

        def log_message(self, fmt, *args):  # quiet: the benchmark reads /stats instead
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser(description="mock OAuth 2.0 token endpoint (refresh_token grant)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", default="bench")
    ap.add_argument("--issuer", default="bench")
    ap.add_argument("--kid", default="h1")
    ap.add_argument("--access-ttl", type=int, default=600)
    a = ap.parse_args()
    hs = os.environb.get(b"BENCH_HS_SECRET")
    cs = os.environ.get("BENCH_CLIENT_SECRET")
    if not hs or len(hs) < 32 or not cs:
        sys.exit("mock_idp: needs BENCH_HS_SECRET (>= 32 bytes) and BENCH_CLIENT_SECRET in the environment")
    idp = Idp(a, hs, cs)
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), handler_for(idp))
    srv.daemon_threads = True
    print(f"mock_idp: listening on 127.0.0.1:{a.port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
