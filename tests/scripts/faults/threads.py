# machines: machine
# Machine methods called from several threads: each call gets its own reply.
import threading

start_all()
results: dict[int, str] = {}


def worker(i: int) -> None:
    for j in range(5):
        results[i * 10 + j] = machine.succeed(f"echo {i * 10 + j}")


threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
for th in threads:
    th.start()
for th in threads:
    th.join()
assert len(results) == 30, results
for k, v in results.items():
    assert v == f"{k}\n", (k, v)
print("threads ok")
