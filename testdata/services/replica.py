#!/usr/bin/env python3
"""A service replica for tests: answers with its version, and can be told to fail or to
stream slowly. Standard library only.

    replica.py --port 0 --version v1 [--host 127.0.0.1] [--crash-on PATH]

Prints "listening HOST:PORT" on stdout once bound (port 0 picks a free one). Paths:
  GET  /anything          200 "version=V port=P path=/anything\n"
  GET  /slow?ms=N         the same, after N milliseconds
  GET  /stream?chunks=N&ms=M   N chunks "chunk i version=V\n", M ms apart (chunked)
  POST /echo              200 with the request body, as it came
  POST /admin/fail        every later request but /admin/* answers 500 (readiness fails)
  POST /admin/recover     back to normal
  PATH of --crash-on      the process exits at once, answering nothing (a replica that dies
                          holding a request)
"""
import argparse
import http.server
import os
import sys
import threading
import time
import urllib.parse

FAILING = threading.Event()


def make_handler(version, port_box, crash_on):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real serving stack

        def log_message(self, *args):
            pass

        def _send(self, status, body, ctype="text/plain"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Replica-Version", version)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _route(self):
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if crash_on and url.path == crash_on:
                os._exit(1)
            if url.path == "/admin/fail":
                FAILING.set()
                return self._send(200, b"failing\n")
            if url.path == "/admin/recover":
                FAILING.clear()
                return self._send(200, b"recovered\n")
            if FAILING.is_set():
                return self._send(500, f"version={version} failing\n".encode())
            if url.path == "/echo":
                return self._send(200, body, "application/octet-stream")
            if url.path == "/stream":
                chunks = int(query.get("chunks", ["5"])[0])
                pause = int(query.get("ms", ["200"])[0]) / 1000
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("X-Replica-Version", version)
                self.end_headers()
                for i in range(chunks):
                    data = f"chunk {i} version={version}\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    if i + 1 < chunks:
                        time.sleep(pause)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return None
            if url.path == "/slow":
                time.sleep(int(query.get("ms", ["500"])[0]) / 1000)
            return self._send(200, f"version={version} port={port_box[0]} path={url.path}\n".encode())

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _route

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--version", default="v1")
    ap.add_argument("--crash-on", default=None)
    args = ap.parse_args()
    port_box = [args.port]
    server = http.server.ThreadingHTTPServer((args.host, args.port), make_handler(args.version, port_box, args.crash_on))
    server.daemon_threads = True
    port_box[0] = server.server_address[1]
    print(f"listening {args.host}:{port_box[0]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
