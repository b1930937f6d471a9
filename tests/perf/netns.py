"""P10: P1 and P2 with Postgres behind a 1 ms round trip, beside the loopback P1 and P2 of the
same run.

The bench makes a network namespace of its own with one veth pair into it (host side
10.213.N.1/30, namespace side .2), puts `tc netem delay 0.5ms` on both ends (1 ms per round
trip), and starts a second Postgres inside the namespace, listening on the veth address:
the same binaries and defaults as the embedded one (pgserver's, `initdb --auth=trust`), its
data in a temporary folder. The run's template database is copied there (`pg_dump | psql`, so
the org, key and broadcasts keep their ids), and P1 (one api, wrk) and P2 (a backlog, 2
workers) run as usual with only DATABASE_URL pointing across the veth: Redis, the sink and
the load generator stay on loopback. Nothing leaves the machine: the veth's other end is in
a namespace on this host, and nothing routes beyond it.

Kernels built without netem (CONFIG_NET_SCH_NETEM unset) get the delay from `delayrelay.c`
instead, a C relay inside the namespace in front of Postgres (`delay_by` says which).

First, unless BENCH_P10_BASELINE=0, the same two figures with no added delay: the same
server over the same path, so that the cost of the round trip is told apart from the cost of
a different server over TCP instead of the embedded one's Unix socket. Then, unless
BENCH_P10_BESIDE=0, each figure is measured on loopback right before it is measured across
the delay, and the ratio is to that one: on a shared machine, the load during the run's own
P1 minutes earlier was another load.

Where the round trips are: each measured figure carries the Postgres transactions per
message (`pg_stat_database.xact_commit`) and the packets each way per message (netem's own
counters), over the whole scenario.

Needs root, `ip` and `tc` (iproute2; BENCH_INSTALL=1 installs it) and the kernel's netem; the
result says why it was skipped otherwise. Everything is removed at the end (the server
stopped, the namespace deleted, which deletes the veth pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import common
import tools
from backlog import backlog_run
from common import log
from harness import START_TIMEOUT_S, Harness
from report import ratio

DELAY_MS = 0.5  # each way: 1 ms per round trip
PG_PORT = 5432  # inside the namespace: no other server there
RELAY_PORT = 6432  # the delay relay's, in front of it (kernels without netem)
RTT_SAMPLES = 200


def unavailable() -> str | None:
    """Why P10 cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (ip netns, tc)"
    missing = [t for t in ("ip", "tc", "setpriv") if not shutil.which(t)]
    if missing:
        return f"{', '.join(missing)} not installed (iproute2, util-linux; BENCH_INSTALL=1 installs iproute2)"
    return None


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _pg_bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


class Link:
    """The namespace and its veth pair; `delay(ms)` sets netem on both ends (0: none)."""

    def __init__(self, run_id: str) -> None:
        self.ns = f"tidings-p10-{run_id}"
        self.host_if = f"tdh{run_id[:8]}"  # interface names: at most 15 bytes
        self.ns_if = f"tdn{run_id[:8]}"
        used = {line.split()[3].rsplit(".", 1)[0] for line in _run("ip", "-4", "-o", "addr").splitlines()}
        free = [n for n in range(1, 255) if f"10.213.{n}" not in used]
        n = random.choice(free)
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"

    def up(self) -> None:
        _run("ip", "netns", "add", self.ns)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", self.ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _run("ip", "-n", self.ns, "link", "set", self.ns_if, "up")
        _run("ip", "-n", self.ns, "link", "set", "lo", "up")
        # The route to the server goes through our veth, nowhere else.
        route = _run("ip", "-4", "route", "get", self.ns_ip)
        if f"dev {self.host_if}" not in route:
            raise RuntimeError(f"{self.ns_ip} is not routed through {self.host_if}: {route.strip()}")

    def down(self) -> None:
        # Deleting the namespace deletes the veth pair with it.
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            _run("ip", "netns", "del", self.ns)
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            _run("ip", "link", "del", self.host_if)

    def has_netem(self) -> bool:
        """Whether this kernel has netem (some are built without it: CONFIG_NET_SCH_NETEM)."""
        try:
            _run("tc", "qdisc", "add", "dev", self.host_if, "root", "netem", "delay", "0ms")
        except RuntimeError:
            return False
        _run("tc", "qdisc", "del", "dev", self.host_if, "root")
        return True

    def netem(self, ms: float) -> None:
        """`tc netem delay ms` on both ends of the veth (0: none)."""
        for prefix, dev in (((), self.host_if), (("-n", self.ns), self.ns_if)):
            with contextlib.suppress(RuntimeError):
                _run("tc", *prefix, "qdisc", "del", "dev", dev, "root")
            if ms > 0:
                _run("tc", *prefix, "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{ms}ms", "limit", "100000")

    def packets(self) -> dict[str, int]:
        """Packets so far toward Postgres and back, from the host end's counters (a veth's
        received packets are the ones its peer sent)."""
        stats = Path("/sys/class/net") / self.host_if / "statistics"
        return {
            "to_postgres": int((stats / "tx_packets").read_text()),
            "from_postgres": int((stats / "rx_packets").read_text()),
        }


class Remote:
    """The namespace's Postgres as the bench reaches it: across the veth, with the delay set by
    `set_delay` (netem on the veth, else the delay relay in front of the server)."""

    def __init__(self, h: Harness, link: Link, setpriv: list[str], env: dict[str, str]) -> None:
        self.h, self.link, self.setpriv, self.env = h, link, setpriv, env
        self.delay_by = "netem" if link.has_netem() else "relay"
        self.relay: common.Child | None = None
        self.delay_ms = 0.0
        self.dsn = f"postgresql://postgres@{link.ns_ip}:{PG_PORT}/postgres"

    async def set_delay(self, ms: float) -> None:
        self.delay_ms = ms
        if self.delay_by == "netem":
            self.link.netem(ms)
            return
        # The relay, even at 0 ms, so that the figures with and without the delay pay for it alike.
        await self.stop_relay()
        self.relay = await self.h.child(
            f"delayrelay-{ms:g}ms",
            [
                *("ip", "netns", "exec", self.link.ns, *self.setpriv, str(_relay_binary(self.h))),
                *(self.link.ns_ip, str(RELAY_PORT), "127.0.0.1", str(PG_PORT), str(round(ms * 1000))),
            ],
            self.env,
        )
        self.dsn = f"postgresql://postgres@{self.link.ns_ip}:{RELAY_PORT}/postgres"
        await _wait_ready(self.dsn, self.relay)

    async def stop_relay(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None


def _relay_binary(h: Harness) -> Path:
    """delayrelay.c compiled into the output folder (again when the source is newer)."""
    source = common.HERE / "delayrelay.c"
    binary = h.cfg.out_dir / "delayrelay"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("this kernel has no netem and there is no C compiler for delayrelay.c")
        _run(cc, "-O2", "-o", str(binary), str(source))
    binary.chmod(0o755)
    return binary


@contextlib.asynccontextmanager
async def remote_postgres(h: Harness) -> AsyncIterator[Remote]:
    """The namespace, its link and a Postgres inside, listening on the veth address (and on the
    namespace's own loopback, for the relay)."""
    link = Link(h.run_id)
    user = pwd.getpwnam("nobody")
    data = Path(tempfile.mkdtemp(prefix="tidings-p10-"))
    server: common.Child | None = None
    remote: Remote | None = None
    try:
        link.up()
        os.chown(data, user.pw_uid, user.pw_gid)
        setpriv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        pgdata = data / "pgdata"
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}
        await asyncio.to_thread(
            subprocess.run,
            [*setpriv, _pg_bin("initdb"), "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(pgdata)],
            env=env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        # initdb trusts loopback only; the clients come from the host end of the veth.
        with (pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {link.host_ip}/32 trust\n")
        server = await h.child(
            "postgres-p10",
            [
                *("ip", "netns", "exec", link.ns, *setpriv, _pg_bin("postgres"), "-D", str(pgdata)),
                *("-h", f"{link.ns_ip},127.0.0.1", "-p", str(PG_PORT), "-k", str(data)),
            ],
            env,
        )
        remote = Remote(h, link, setpriv, env)
        await _wait_ready(remote.dsn, server)
        yield remote
    finally:
        if remote is not None:
            await remote.stop_relay()
        if server is not None and server.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(server.pid, signal.SIGINT)  # a fast shutdown: no client is left by now
            await server.stop()
        link.down()
        shutil.rmtree(data, ignore_errors=True)


async def _wait_ready(dsn: str, server: common.Child) -> None:
    import asyncpg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if not server.alive:
            raise RuntimeError(f"the namespace's Postgres exited:\n{server.tail()}")
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the namespace's Postgres was not ready:\n{server.tail()}") from None
            await asyncio.sleep(0.2)
            continue
        await conn.close()
        return


async def _copy_template(h: Harness, dsn: str) -> None:
    """The run's template database, made again on the namespace's server under the same name."""
    from shared.migrate import migrate
    from tidings.dev.embedded import create_database, database_dsn

    target = await create_database(dsn, h.template)
    # The schema from the migrations (as on any server), the rows from the template: a data-only
    # dump does not carry a server's own column options across versions.
    await migrate(target)
    source = database_dsn(h.server_dsn, h.template)
    dump = await asyncio.create_subprocess_exec(
        *(_pg_bin("pg_dump"), "--data-only", "--disable-triggers", "--exclude-table=schema_migrations"),
        *("--no-owner", "--no-privileges", "-d", source),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    sql, err = await asyncio.wait_for(dump.communicate(), 120)
    if dump.returncode != 0:
        raise RuntimeError(f"pg_dump of the template failed: {err.decode(errors='replace')}")
    restore = await asyncio.create_subprocess_exec(
        *(_pg_bin("psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", target),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(restore.communicate(sql), 120)
    if restore.returncode != 0:
        raise RuntimeError(f"restoring the template failed: {err.decode(errors='replace')}")


async def _rtt_ms(dsn: str) -> float:
    """The median time of `SELECT 1` on one connection: the round trip as the service sees it."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        samples = []
        for _ in range(RTT_SAMPLES):
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        await conn.close()
    return round(statistics.median(samples), 3)


async def _commits(h: Harness) -> int:
    value: int = await h.pool.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return value


async def _p1(h: Harness, link: Link | None, label: str) -> dict[str, Any]:
    """P1's figure (no ceiling: the loopback P1 is the reference), with its round trips."""
    async with h.scenario_database("p1"):
        await h.start_api("p1")
        try:
            await h.preflight("p1", background=True, expect=202)
            commits0, packets0 = await _commits(h), _packets(link)
            figure = await h.http_load(h.send_url("p1"), f"p10-p1-{label}")
        finally:
            await h.stop_api()
        await asyncio.sleep(0.2)  # the last statistics reach pg_stat_database
        commits, packets = await _commits(h) - commits0, _packets(link)
        sends = await h.pool.fetchval("SELECT count(*) FROM sends")
    return figure | _per_message(sends, commits, packets0, packets)


def _packets(link: Link | None) -> dict[str, int]:
    return link.packets() if link is not None else {"to_postgres": 0, "from_postgres": 0}


async def _p2(h: Harness, link: Link | None) -> dict[str, Any]:
    """P2's run as usual, while a sampler reads the delivered count, Postgres's commits and the
    link's packets, so that the round trips per email are counted over the delivery only."""
    samples: list[tuple[int, int, dict[str, int]]] = []

    async def sample() -> None:
        while True:
            pool = h.pool
            if pool is not None:
                with contextlib.suppress(Exception):
                    row = await pool.fetchrow(
                        "SELECT (SELECT count(*) FROM messages WHERE status = 'sent') AS sent,"
                        " (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits"
                    )
                    samples.append((row["sent"], row["commits"], _packets(link)))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        run = await backlog_run(h, "p2-2", "email", 2, sample=False)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    # From the first sample with something sent to the last one before the backlog ran out.
    during = [s for s in samples if 0 < s[0] < h.cfg.backlog]
    if len(during) >= 2:
        (n0, c0, p0), (n1, c1, p1) = during[0], during[-1]
        run |= _per_message(n1 - n0, c1 - c0, p0, p1)
    return run


def _per_message(n: int, commits: int, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    if not n:
        return {}
    return {
        "messages_counted": n,
        "commits_per_message": round(commits / n, 3),
        "packets_to_postgres_per_message": round((after["to_postgres"] - before["to_postgres"]) / n, 2),
        "packets_from_postgres_per_message": round((after["from_postgres"] - before["from_postgres"]) / n, 2),
    }


async def p10(h: Harness, p1: dict[str, Any] | None, p2: dict[str, Any] | None) -> dict[str, Any]:
    """P1 and P2 across the namespace's 1 ms round trip, beside the same run's loopback P1, P2."""
    tools.ensure_iproute2(install=h.cfg.install)
    why = unavailable()
    if why is not None:
        log(f"P10 skipped: {why}")
        return {"skipped": why}
    baseline = os.environ.get("BENCH_P10_BASELINE", "0" if h.cfg.smoke else "1") == "1"
    beside = os.environ.get("BENCH_P10_BESIDE", "0" if h.cfg.smoke else "1") == "1"
    try:
        return await _p10(h, p1, p2, baseline, beside)
    except Exception:
        # Logged here: the clean-up that follows may fail in turn and hide it.
        log(f"P10 failed:\n{traceback.format_exc()}")
        raise


async def _p10(
    h: Harness, p1: dict[str, Any] | None, p2: dict[str, Any] | None, baseline: bool, beside: bool
) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    loopback_dsn = h.server_dsn
    async with remote_postgres(h) as remote:
        link, direct = remote.link, remote.dsn
        await _copy_template(h, direct)
        try:
            if baseline:  # first: it also warms the fresh server (its first WAL segments)
                await remote.set_delay(0.0)
                h.server_dsn = remote.dsn  # scenario databases are now copies on the namespace's server
                rtt = await _rtt_ms(remote.dsn)
                log(f"P10: Postgres in a namespace, no added delay (SELECT 1: {rtt} ms)")
                runs["0ms"] = {"rtt_ms": rtt, "P1": await _p1(h, link, "0ms"), "P2": await _p2(h, link)}
            await remote.set_delay(DELAY_MS)
            rtt = await _rtt_ms(remote.dsn)
            far: dict[str, Any] = {"rtt_ms": rtt}
            near: dict[str, Any] = {}
            # Each figure right after its loopback twin (the embedded server, as P1 and P2 ran):
            # on a shared machine, the load of minutes ago is not the load of now.
            for name in ("P1", "P2"):
                if beside:
                    h.server_dsn = loopback_dsn
                    log(f"P10: {name} on loopback, beside the one across the delay")
                    near[name] = await (_p1(h, None, "loopback") if name == "P1" else _p2(h, None))
                h.server_dsn = remote.dsn
                log(f"P10: {name}, Postgres in a namespace, {remote.delay_by} {DELAY_MS:g} ms each way ({rtt} ms)")
                far[name] = await (_p1(h, link, "1ms") if name == "P1" else _p2(h, link))
            runs["1ms"] = far
            if near:
                runs["loopback_beside"] = near
        finally:
            h.server_dsn = loopback_dsn
            from tidings.dev.embedded import drop_database

            with contextlib.suppress(Exception):
                await drop_database(direct, h.template)
    far = runs["1ms"]
    out: dict[str, Any] = {
        "P1_value": far["P1"]["rps"],
        "P2_value": far["P2"]["rate"],
        "rtt_ms": round(2 * DELAY_MS, 3),
        "rtt_measured_ms": far["rtt_ms"],
        "delay_by": remote.delay_by,
    }
    beside_runs = runs.get("loopback_beside")
    if beside_runs is not None:  # the loopback figures measured right before: the ratio that counts
        out["P1_to_loopback"] = ratio(far["P1"]["rps"], beside_runs["P1"]["rps"])
        out["P2_to_loopback"] = ratio(far["P2"]["rate"], beside_runs["P2"]["rate"])
        out["loopback_beside"] = {"P1": beside_runs["P1"]["rps"], "P2": beside_runs["P2"]["rate"]}
    # Beside the run's own P1 and P2 (minutes earlier), as well.
    key = "_run" if beside_runs is not None else ""
    if p1 is not None:
        out[f"P1_to_loopback{key}"] = ratio(far["P1"]["rps"], p1["value"])
    if p2 is not None:
        out[f"P2_to_loopback{key}"] = ratio(far["P2"]["rate"], p2["value"])
    no_delay = runs.get("0ms")
    if no_delay is not None:  # the same server with no added delay: the round trip's own cost
        out["P1_to_no_delay"] = ratio(far["P1"]["rps"], no_delay["P1"]["rps"])
        out["P2_to_no_delay"] = ratio(far["P2"]["rate"], no_delay["P2"]["rate"])
    out["commits_per_trigger"] = far["P1"].get("commits_per_message")
    out["packets_to_postgres_per_trigger"] = far["P1"].get("packets_to_postgres_per_message")
    h.details["P10"] = {"runs": runs, "link": {"ns": link.ns, "host": link.host_ip, "server": link.ns_ip}}
    return out
