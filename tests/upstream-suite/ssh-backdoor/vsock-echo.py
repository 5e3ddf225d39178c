#!/usr/bin/python3
"""vsock-echo PORT: accept vsock connections on PORT and echo every line back."""
import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
server.bind((socket.VMADDR_CID_ANY, int(sys.argv[1])))
server.listen()
print(f"vsock-echo: listening on vsock port {sys.argv[1]}", flush=True)
while True:
    conn, peer = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
