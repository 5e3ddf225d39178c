# machines: db
# guest: debian
# Mid-generation style (M): PostgreSQL on Debian, retry(fn, timeout_seconds=…),
# get_unit_info, wait_for_open_unix_socket on the server's socket.
from test_driver.machine import BaseMachine


def psql(m: BaseMachine, sql: str) -> str:
    return m.succeed(f"su postgres -c \"psql -XAtq -c '{sql}'\"")


db.start()
db.wait_for_unit("postgresql.service")
db.wait_for_unit("postgresql@15-main.service", timeout=300)
db.wait_for_open_unix_socket("/run/postgresql/.s.PGSQL.5432")
db.wait_for_open_unix_socket("/run/systemd/journal/socket", is_datagram=True)
db.wait_for_open_port(5432)

info = db.get_unit_info("postgresql@15-main.service")
assert info["ActiveState"] == "active", info
assert info["SubState"] == "running", info

psql(db, "CREATE TABLE notes (id serial PRIMARY KEY, body text)")
psql(db, "INSERT INTO notes (body) VALUES (\\$\\$first\\$\\$), (\\$\\$second\\$\\$)")


def two_rows(_last_try: bool) -> bool:
    return psql(db, "SELECT count(*) FROM notes").strip() == "2"


retry(two_rows, timeout_seconds=60)
assert psql(db, "SELECT body FROM notes ORDER BY id").split() == ["first", "second"]
