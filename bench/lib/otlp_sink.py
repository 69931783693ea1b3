#!/usr/bin/env python3
"""An OTLP/HTTP receiver that discards: answers every POST 200 with an empty protobuf body
(ExportTraceServiceResponse{}), counting requests and bytes, which it writes to --stats on
SIGTERM. For bench/run.sh's "tracing" section: what exporting costs the gateway, not what a
collector does with the spans."""
import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

stats = {"requests": 0, "bytes": 0}
lock = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        with lock:
            stats["requests"] += 1
            stats["bytes"] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stats", required=True)
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Sink)

    def stop(*_):
        with open(a.stats, "w") as f:
            f.write(f"{stats['requests']} {stats['bytes']}\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    srv.serve_forever()


if __name__ == "__main__":
    main()
