import datetime as dt
import socket

start_all()
machine.wait_for_unit("multi-user.target")
machine.wait_for_unit("ntd-vsock-echo.service")

assert driver.vhost_vsock is not None
host_socket = driver.vhost_vsock.sockets["machine"].host
assert driver.vhost_vsock.sockets["machine"].cid == 3
assert machine.ssh_backdoor_command() == f"ssh -o User=root vsock-mux/{host_socket}"

with subtest("the host reaches the guest's vsock port 22 through the vsock-mux socket"):
    reply = b""

    def talk(_remaining: float | None) -> bool:
        global reply
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(host_socket))
            s.sendall(b"CONNECT 22\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(1)
                if not chunk:
                    return False
                answer += chunk
            if not answer.startswith(b"OK "):
                return False
            s.sendall(b"hello over vsock\n")
            while not reply.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return True

    retry(talk, timeout=dt.timedelta(seconds=60))
    assert reply == b"hello over vsock\n", reply
    print("vsock-mux: echoed", reply)

dump_machine_ssh()
