# machines: guest
# vlans: 1
# typecheck: allow union-attr (typeshed types Popen.stdin/stdout as optional; the script opens both as pipes)

import os, select, struct, subprocess, time
start_all()
guest.succeed("true")
plug = subprocess.Popen(["vde_plug", str(vlan1.socket_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
mine = bytes.fromhex("020000000099")
arp = (b"\xff" * 6 + mine + b"\x08\x06" + bytes.fromhex("0001080006040001") + mine
       + bytes([192, 168, 1, 99]) + b"\x00" * 6 + bytes([192, 168, 1, 1]))
buf = b""
reply = None
deadline = time.monotonic() + 60
while reply is None and time.monotonic() < deadline:
    plug.stdin.write(struct.pack(">H", len(arp)) + arp)
    plug.stdin.flush()
    until = time.monotonic() + 1
    while reply is None and time.monotonic() < until:
        r, _, _ = select.select([plug.stdout.fileno()], [], [], 0.2)
        if not r:
            continue
        buf += os.read(plug.stdout.fileno(), 65536)
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
            n = struct.unpack(">H", buf[:2])[0]
            frame, buf = buf[2:2 + n], buf[2 + n:]
            if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02" and frame[28:32] == bytes([192, 168, 1, 1]):
                reply = frame
plug.stdin.close()
plug.wait(timeout=10)
assert reply is not None, "no ARP reply from the guest through vde_plug"
assert reply[0:6] == mine, reply.hex()
assert reply[6:12] == bytes.fromhex("525400120101"), reply.hex()
print("ARP reply from", reply[6:12].hex(":"))
