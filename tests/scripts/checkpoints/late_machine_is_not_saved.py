# machines: early, late

early.start()
early.succeed("true")
late.start()
late.succeed("true")
print("both ran")
