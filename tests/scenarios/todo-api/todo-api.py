#!/usr/bin/python3
"""GET /todos as PostgREST answers it (PostgREST is not packaged in Debian).

Logs in as the `authenticator` role, switches to the anonymous role `web_anon`
for each request like PostgREST does, and returns the rows of api.todos as
PostgreSQL's json_agg renders them. Tells systemd it is ready once it listens.

It also prints when it listens and when each request arrived, on this guest's
CLOCK_MONOTONIC, to the console (the unit's StandardOutput=journal+console), so a
driver's log carries them: benches/whole.rs takes the detection delay of the client's
wait_until_succeeds as the arrival of the first answered GET /todos minus "listening".
Both times are read from this one guest's clock, so the offset between the two guests'
clocks (set from the 1-second RTC at boot) does not enter it.
"""
import http.server
import json
import os
import socket
import subprocess
import time

PORT = 3000
QUERY = """
begin isolation level read committed read only;
set local role web_anon;
select coalesce(json_agg(t), '[]') from (select * from api.todos) t;
commit;
"""


def query():
    env = dict(os.environ, PGHOST="localhost", PGUSER="authenticator", PGDATABASE="postgres")
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                          input=QUERY, env=env, capture_output=True, text=True, check=True).stdout


def probe(event, at):
    print(f"todo-api: {event} at {at:.3f}", flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        arrived = time.monotonic()
        if self.path.split("?")[0] != "/todos":
            self.reply(404, '{"message":"not found"}')
        else:
            try:
                self.reply(200, query().strip())
            except subprocess.CalledProcessError as e:
                self.reply(500, json.dumps({"message": e.stderr.strip()}))
        probe(f"GET {self.path} {self.status}", arrived)

    def reply(self, status, body):
        self.status = status
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def notify_ready():
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", addr)


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        # Both IPv4 and IPv6 clients: `server` resolves to either.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


server = Server(("::", PORT), Handler)
probe("listening", time.monotonic())
notify_ready()
server.serve_forever()
