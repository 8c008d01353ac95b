"""The audit store: the only module that imports sqlite3.

One row per flow (its latest state: ``new`` inserts, later snapshots and ``end`` update the
counters), one row per scan/block/unblock/probe summary event. WAL mode; writes are buffered
and committed in one transaction per flush (the daemon flushes once per ``flush_interval``);
the schema is versioned with ``PRAGMA user_version`` and migrated forward on open; retention
deletes rows older than a cut-off and a size cap trims the oldest flows. A database that
SQLite says is corrupt is moved aside (``netwarden.db.corrupt-<time>``) with one log line, and
a new one is created: never a crash loop.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_network
from typing import Any

from netwarden.errors import UsageError
from netwarden.events import FIELDS, Event, EventType

log = logging.getLogger(__name__)

DB_NAME = "netwarden.db"

# Columns of the flows table: every event field, plus first/last seen and the remote side.
FLOW_COLUMNS: tuple[str, ...] = (*FIELDS, "first", "last", "remote", "remote_bin", "ended")
_INT_COLUMNS = {
    "ipproto",
    "family",
    "sport",
    "dport",
    "orig_bytes",
    "resp_bytes",
    "orig_pkts",
    "resp_pkts",
    "netns",
    "pid",
    "ppid",
    "uid",
    "gid",
    "ended",
}
_REAL_COLUMNS = {"ts", "duration", "first", "last"}


def _coltype(c: str) -> str:
    if c in _INT_COLUMNS:
        return "INTEGER"
    if c in _REAL_COLUMNS:
        return "REAL"
    if c == "remote_bin":
        return "BLOB"
    return "TEXT"


_FLOWS_DDL = (
    "CREATE TABLE flows (flow TEXT PRIMARY KEY, "
    + ", ".join(f"{c} {_coltype(c)}" for c in FLOW_COLUMNS if c != "flow")
    + ")"
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # version 1
    (
        _FLOWS_DDL,
        "CREATE INDEX flows_last ON flows(last)",
        "CREATE INDEX flows_remote ON flows(remote_bin)",
        "CREATE INDEX flows_pid ON flows(pid)",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL, "
        "scanner TEXT, kind TEXT, data TEXT NOT NULL)",
        "CREATE INDEX events_ts ON events(ts)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def remote_side(e: Event) -> tuple[str | None, bytes | None]:
    """The peer of the local socket: the initiator for ``in`` flows, else the responder."""
    addr = e.src if e.direction == "in" else e.dst
    if addr is None:
        return None, None
    return str(addr), addr.packed


def _flow_row(e: Event) -> tuple[Any, ...]:
    d = e.to_dict()
    remote, remote_bin = remote_side(e)
    # a new event's ts is the flow's first packet (a snapshot carries the duration so far);
    # an end event's ts is its last packet
    if e.event is EventType.NEW:
        first, last = e.ts, e.ts + (e.duration or 0.0)
    else:
        first, last = e.ts - (e.duration or 0.0), e.ts
    d.update(
        first=first,
        last=last,
        remote=remote,
        remote_bin=remote_bin,
        ended=1 if e.event is EventType.END else 0,
    )
    return tuple(d[c] for c in FLOW_COLUMNS)


_UPSERT = (
    f"INSERT INTO flows ({', '.join(FLOW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in FLOW_COLUMNS)}) "
    "ON CONFLICT(flow) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in FLOW_COLUMNS
        if c not in ("flow", "first")
        and c
        not in ("pid", "ppid", "uid", "gid", "user", "comm", "exe", "cmdline", "unit", "container")
    )
    + ", "
    # keep what attribution found first unless the update brings a process
    + ", ".join(
        f"{c} = COALESCE(excluded.{c}, {c})"
        for c in (
            "pid",
            "ppid",
            "uid",
            "gid",
            "user",
            "comm",
            "exe",
            "cmdline",
            "unit",
            "container",
        )
    )
    + ", first = MIN(first, excluded.first)"
)


@dataclass(frozen=True)
class FlowFilter:
    """The ``query`` filters (all optional)."""

    since: float | None = None
    until: float | None = None
    src: str | None = None
    dst: str | None = None
    port: int | None = None
    proto: str | None = None
    pid: int | None = None
    comm: str | None = None
    exe: str | None = None
    unit: str | None = None
    limit: int | None = None


def _net_range(value: str, option: str) -> tuple[bytes, bytes]:
    try:
        net = ip_network(value, strict=False)
    except ValueError:
        raise UsageError(
            "not an address or CIDR", option=option, value=value, allowed="e.g. 192.0.2.0/24"
        ) from None
    return net.network_address.packed, net.broadcast_address.packed


class Store:
    """The SQLite audit trail in ``state_dir``."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._pending_flows: dict[str, Event] = {}
        self._pending_events: list[tuple[Any, ...]] = []
        self.written = 0
        #: one connection, used from several threads (the daemon's loop, its ticker, the
        #: dump trigger): every statement runs under this lock
        self._db = threading.RLock()
        self.conn = self._open()

    # ------------------------------------------------------------------ open / migrate
    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = f"file:{self.path}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    def _open(self) -> sqlite3.Connection:
        if self.readonly and not os.path.exists(self.path):
            raise UsageError(f"no audit store at {self.path} (has `netwarden run` run here?)")
        if not self.readonly:
            d = os.path.dirname(self.path) or "."
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"state dir {d}: {exc.strerror}", option="--state-dir") from None
            if not os.access(d, os.W_OK):
                raise UsageError("not writable", option="--state-dir", value=d)
        try:
            conn = self._connect()
            self._migrate(conn)
            return conn
        except sqlite3.DatabaseError as exc:
            if self.readonly:
                raise UsageError(f"{self.path}: unreadable database: {exc}") from None
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.error(
                "%s is corrupt (%s): moved aside to %s, starting a new one", self.path, exc, aside
            )
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            conn = self._connect()
            self._migrate(conn)
            return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if self.readonly:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"{self.path}: schema version {version} is newer than this netwarden's "
                f"({SCHEMA_VERSION}); upgrade netwarden"
            )
        for v in range(version, SCHEMA_VERSION):
            with conn:
                for stmt in MIGRATIONS[v]:
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {v + 1}")
        conn.execute("PRAGMA quick_check").fetchone()

    # ------------------------------------------------------------------ writing
    def add(self, e: Event) -> None:
        """Buffer an event; it is written at the next :meth:`flush`.

        Only a flow's latest event is kept until then (a short flow's ``new`` and ``end``
        become one row), and rows are built at flush time.
        """
        fid = e.flow
        if e.scan is None and e.event in (EventType.NEW, EventType.END) and fid:
            old = self._pending_flows.get(fid)
            if old is not None and e.process.pid is None and old.process.pid is not None:
                # keep what attribution found on the earlier event
                e = replace(e, process=old.process, attribution=old.attribution)
            self._pending_flows[fid] = e
        else:
            d = e.to_dict()
            self._pending_events.append(
                (e.ts, str(e.event), d.get("scanner"), d.get("kind"), json.dumps(d))
            )

    def add_flow_snapshot(self, e: Event) -> None:
        """A flow's counters so far (freshness for long flows): same as a ``new``."""
        self.add(e)

    def backlog(self) -> int:
        """Rows waiting for the next write."""
        return len(self._pending_flows) + len(self._pending_events)

    def take(self) -> tuple[list[Event], list[tuple[Any, ...]]]:
        """Hand over what is buffered (cheap: the caller may hold its own lock)."""
        flows = list(self._pending_flows.values())
        events = self._pending_events
        self._pending_flows = {}
        self._pending_events = []
        return flows, events

    def write(self, taken: tuple[list[Event], list[tuple[Any, ...]]]) -> int:
        """Write what :meth:`take` handed over, in one transaction; returns the rows."""
        flow_events, events = taken
        if not flow_events and not events:
            return 0
        # rows are built one at a time as SQLite takes them: a flood's tens of thousands of
        # flows per flush never exist as rows all at once
        with self._db, self.conn:
            if flow_events:
                self.conn.executemany(_UPSERT, map(_flow_row, flow_events))
            if events:
                self.conn.executemany(
                    "INSERT INTO events (ts, event, scanner, kind, data) VALUES (?, ?, ?, ?, ?)",
                    events,
                )
        n = len(flow_events) + len(events)
        self.written += n
        return n

    def flush(self) -> int:
        """Write everything buffered in one transaction; returns the rows written."""
        return self.write(self.take())

    def retain(self, max_age: float, max_bytes: int | None = None, now: float | None = None) -> int:
        """Delete rows older than ``max_age`` seconds; then trim the oldest flows while the
        database is larger than ``max_bytes``. Returns the rows deleted."""
        now = time.time() if now is None else now
        cut = now - max_age
        with self._db, self.conn:
            n = self.conn.execute("DELETE FROM flows WHERE last < ?", (cut,)).rowcount
            n += self.conn.execute("DELETE FROM events WHERE ts < ?", (cut,)).rowcount
        if max_bytes is not None:
            while self.size() > max_bytes:
                with self._db, self.conn:
                    deleted = self.conn.execute(
                        "DELETE FROM flows WHERE flow IN "
                        "(SELECT flow FROM flows ORDER BY last LIMIT 10000)"
                    ).rowcount
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.execute("VACUUM")
                n += deleted
                if not deleted:
                    break
        return n

    def size(self) -> int:
        page = self.conn.execute("PRAGMA page_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int(page) * int(size)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.conn.close()

    # ------------------------------------------------------------------ reading
    def flows(self, f: FlowFilter = FlowFilter()) -> list[dict[str, Any]]:
        """Flows matching the filters, newest activity last, as event-field dicts."""
        where: list[str] = []
        args: list[Any] = []
        if f.since is not None:
            where.append("last >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("first <= ?")
            args.append(f.until)
        for value, col, option in ((f.src, "src", "--src"), (f.dst, "dst", "--dst")):
            if value is not None:
                lo, hi = _net_range(value, option)
                where.append(f"{col} IS NOT NULL")
                # compare packed addresses: store text, so use the remote_bin for the remote
                # side and an exact match for a single address on the named side
                if lo == hi:
                    where.append(f"{col} = ?")
                    args.append(str(ip_network(value, strict=False).network_address))
                else:
                    where.append(f"nw_in_range({col}, ?, ?)")
                    args.extend([lo, hi])
        if f.port is not None:
            where.append("(sport = ? OR dport = ?)")
            args.extend([f.port, f.port])
        for value, col in ((f.proto, "proto"), (f.comm, "comm"), (f.exe, "exe"), (f.unit, "unit")):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if f.pid is not None:
            where.append("pid = ?")
            args.append(f.pid)
        sql = f"SELECT {', '.join(FIELDS)}, last AS _last FROM flows"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY last"
        if f.limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT {int(f.limit)}) ORDER BY _last"
        out = []
        with self._db:
            self.conn.create_function("nw_in_range", 3, _in_range, deterministic=True)
            rows = self.conn.execute(sql, args).fetchall()
        for r in rows:
            d = dict(r)
            del d["_last"]
            out.append(d)
        return out

    def remote_totals(
        self, since: float | None = None, limit: int | None = None
    ) -> tuple[tuple[int, int, int], Iterator[RemoteTotals]]:
        """The latest ``limit`` flows (activity since ``since``) added up per remote
        address by SQLite, for stats.json: ((remotes, conns, bytes) in all, then one
        :data:`RemoteTotals` per remote, most bytes first). Python then holds one row at a
        time, however many remotes a spoofed flood made. The rows are :func:`aggregate`'s
        (``netwarden.stats.report``) by ``ip``, with the processes as {comm: bytes}.

        Reads through a connection of its own (WAL: the writer goes on meanwhile, and the
        store's lock is not held); consume the rows whole."""
        where, args = "", []
        if since is not None:
            where, args = "WHERE last >= ?", [since]
        lim = "" if limit is None else f"LIMIT {int(limit)}"
        cte = _REMOTE_CTE.format(where=where, limit=lim)
        conn = self._connect() if not self.readonly else self.conn
        try:
            totals = conn.execute(
                cte
                + "SELECT COUNT(*), IFNULL(SUM(conns), 0), IFNULL(SUM(b_in + b_out), 0) FROM per",
                args,
            ).fetchone()
        except BaseException:
            if conn is not self.conn:
                conn.close()
            raise

        def rows() -> Iterator[RemoteTotals]:
            try:
                cur = conn.execute(cte + _REMOTE_ROWS, args)
                while chunk := cur.fetchmany(256):
                    for remote, b_in, b_out, conns, first, last, procs in chunk:
                        comms: dict[str, int] = {}
                        for item in (procs or "").split(","):
                            if item:
                                name, _, b = item.partition(":")
                                comms[bytes.fromhex(name).decode("utf-8", "replace")] = int(b)
                        yield remote, b_in, b_out, conns, first, last, comms
            finally:
                if conn is not self.conn:
                    conn.close()

        return (int(totals[0]), int(totals[1]), int(totals[2])), rows()

    def events(self, since: float | None = None, kinds: Sequence[str] = ()) -> list[dict[str, Any]]:
        sql = "SELECT data FROM events"
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if kinds:
            where.append(f"event IN ({', '.join('?' for _ in kinds)})")
            args.extend(kinds)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts"
        with self._db:
            rows = self.conn.execute(sql, args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def integrity(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])


#: (remote, bytes_in, bytes_out, conns, first, last, {comm: bytes})
RemoteTotals = tuple[str, int, int, int, float, float, dict[str, int]]

# Store.remote_totals: the latest flows, their remote side, and the sums per remote, as
# netwarden.stats.report.summarize makes them (tests/unit/test_store.py compares the two)
_REMOTE_CTE = """
WITH recent AS (
  SELECT CASE WHEN direction = 'in' THEN src ELSE dst END AS remote, direction,
         IFNULL(orig_bytes, 0) AS ob, IFNULL(resp_bytes, 0) AS rb,
         IFNULL(ts, 0.0) AS t, IFNULL(duration, 0.0) AS d, event, comm
  FROM flows {where} ORDER BY last DESC {limit}
), per AS (
  SELECT remote,
         SUM(CASE WHEN direction = 'in' THEN ob ELSE rb END) AS b_in,
         SUM(CASE WHEN direction = 'in' THEN rb ELSE ob END) AS b_out,
         COUNT(*) AS conns,
         MIN(CASE WHEN event = 'end' THEN t - d ELSE t END) AS first,
         MAX(t) AS last
  FROM recent WHERE remote IS NOT NULL GROUP BY remote
), procs AS (
  SELECT remote, group_concat(hex(comm) || ':' || b, ',') AS procs FROM (
    SELECT remote, comm, SUM(ob + rb) AS b FROM recent
    WHERE remote IS NOT NULL AND comm IS NOT NULL AND comm != '' GROUP BY remote, comm
  ) GROUP BY remote
)
"""
_REMOTE_ROWS = """
SELECT per.remote, b_in, b_out, conns, first, last, procs.procs
FROM per LEFT JOIN procs ON procs.remote = per.remote
ORDER BY b_in + b_out DESC, per.remote
"""


def _in_range(addr: str | None, lo: bytes, hi: bytes) -> bool:
    if addr is None:
        return False
    from ipaddress import ip_address

    try:
        packed = ip_address(addr).packed
    except ValueError:
        return False
    return len(packed) == len(lo) and lo <= packed <= hi


def open_store(state_dir: str, *, readonly: bool = False) -> Store:
    return Store(os.path.join(state_dir, DB_NAME), readonly=readonly)


def rows_to_events(rows: Iterable[dict[str, Any]]) -> list[Event]:
    return [Event.from_dict(r) for r in rows]
