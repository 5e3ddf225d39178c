#!/usr/bin/python3
"""The backend behind nginx: answers every GET on 127.0.0.1:3000 with a greeting.
Tells systemd it is ready once it listens."""
import http.server
import os
import socket
import sys

BODY = (sys.argv[1] if len(sys.argv) > 1 else "<h1>Hello, World!</h1>").encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


server = http.server.HTTPServer(("127.0.0.1", 3000), Handler)
notify = os.environ.get("NOTIFY_SOCKET", "")
if notify:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", "\0" + notify[1:] if notify.startswith("@") else notify)
server.serve_forever()
