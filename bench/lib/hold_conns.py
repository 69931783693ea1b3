#!/usr/bin/env python3
# bench/lib/hold_conns.py: open N idle keep-alive connections to a server and hold them, so
# bench/run.sh can read the server's RSS with those connections open.
#
# Each connection sends one `GET PATH HTTP/1.1` with `Connection: keep-alive`, reads the whole
# response, then stays open and idle. When all are open the script writes "<ok> <failed>" to
# --ready FILE and sleeps until it is killed (or --hold seconds pass).
import argparse
import resource
import socket
import ssl
import sys
import time


def read_response(sock):
    """Read one HTTP/1.1 response (status line, headers, Content-Length or chunked body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        want = int(headers[b"content-length"])
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the body")
            body += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a chunked body")
            body += chunk
    if headers.get(b"connection", b"").lower() == b"close":
        raise ConnectionError("server answered Connection: close")
    return status


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--source", default=None,
                    help="local address to connect from (127.0.0.2, ...): each source address has "
                         "its own ~28,000 ephemeral ports towards one server port")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--tls", action="store_true", help="TLS (certificate not verified), SNI localhost")
    ap.add_argument("--path", default="/")
    ap.add_argument("--ready", required=True, help="file written once all connections are open")
    ap.add_argument("--hold", type=float, default=600, help="seconds to hold before exiting")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.n + 64
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
        except (ValueError, OSError) as e:
            print(f"hold_conns: cannot raise the fd limit to {want}: {e}", file=sys.stderr)

    ctx = None
    if a.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])

    req = (f"GET {a.path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n"
           "User-Agent: jwtgate-bench-hold\r\n\r\n").encode()
    held, ok, failed, first_err = [], 0, 0, None
    for _ in range(a.n):
        try:
            s = socket.create_connection((a.host, a.port), timeout=10,
                                         source_address=(a.source, 0) if a.source else None)
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(req)
            status = read_response(s)
            if 200 <= status < 300:
                ok += 1
            else:
                failed += 1
                first_err = first_err or f"HTTP {status}"
            held.append(s)
        except (OSError, ValueError, IndexError, ConnectionError) as e:
            failed += 1
            first_err = first_err or repr(e)
    if first_err:
        print(f"hold_conns: {failed} of {a.n} connections failed; first error: {first_err}", file=sys.stderr)
    with open(a.ready, "w") as f:
        f.write(f"{ok} {failed}\n")
    deadline = time.monotonic() + a.hold
    while time.monotonic() < deadline:
        time.sleep(0.5)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
