# machines: alpha, beta, gamma
# vlans: 1

alpha.start()
beta.start()
alpha.succeed("echo at-failure > /root/marker")
beta.succeed("ping -c 1 -W 5 192.168.1.1")
assert alpha.succeed("cat /root/marker").strip() == "expected", "the marker is wrong"
