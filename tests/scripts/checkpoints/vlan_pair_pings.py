# machines: alpha, beta
# vlans: 1

start_all()
alpha.succeed("ping -c 1 -W 5 192.168.1.2")
beta.succeed("ping -c 1 -W 5 192.168.1.1")
print("pinged both ways")
