#!/usr/bin/python3
"""GET /todos as PostgREST answers it (PostgREST is not packaged in Debian).

Logs in as the `authenticator` role, switches to the anonymous role `web_anon`
for each request like PostgREST does, and returns the rows of api.todos as
PostgreSQL's json_agg renders them. Tells systemd it is ready once it listens.
"""
import http.server
import json
import os
import socket
import subprocess

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


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != "/todos":
            self.reply(404, '{"message":"not found"}')
            return
        try:
            self.reply(200, query().strip())
        except subprocess.CalledProcessError as e:
            self.reply(500, json.dumps({"message": e.stderr.strip()}))

    def reply(self, status, body):
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
notify_ready()
server.serve_forever()
