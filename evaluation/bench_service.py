"""``stylerec bench-service``: load test of the HTTP service on loopback, bounded in time.

Starts ``python -m stylerec serve`` as a separate process on a free loopback
port (so this module needs nothing from the app layer), then runs three phases
of closed-loop clients (each sends its next request when the last one is
answered) for ``--duration`` seconds each:

1. ``recommend`` with ``--clients`` concurrent clients (default 16 and 64, one
   phase each): throughput, p50/p90/p99/max latency of ``/recommend``, errors;
2. ``feedback+kill``: the first client count on ``/recommend`` plus
   ``--feedback-clients`` clients posting batches of events (impressions at
   positions 1..10 and a click, each with a unique ``event_id``) to
   ``/feedback``; halfway, the server gets ``SIGKILL`` and is restarted at once.
   Afterwards every event that got a 2xx must be in the log (counted by id),
   and SQLite's integrity check must pass. Requests that failed while the
   server was down are counted apart (they are the outage, not errors).

Between them, the online update: a shopper the model never saw clicks three
items that look alike (an item and its two nearest neighbours in the model's
embedding space); the test records how long their next ``/recommend`` takes
and how close its items are to the clicked ones, before and after.

Shoppers are drawn from the model's fit-time users, with ``--new-share`` of
requests for shoppers it has never seen. The clients speak minimal HTTP/1.1
over keep-alive connections from one asyncio loop, so that the client costs
little of the CPU the server needs. Outputs ``bench-service.json`` and
``bench-service.txt`` in ``--out``, with the load average before and after
(the machine may be shared) and the server's CPU time per ``/recommend`` (what
the throughput on an idle machine would be bounded by: cores / CPU per request).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.bench_timing import load_average, machine_info
from evaluation.report import library_versions
from ground.files import write_bytes_atomic
from recsys.cf import Recommender
from recsys.feedback import FeedbackLog

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LoadConfig:
    model_dir: Path
    out: Path
    clients: tuple[int, ...] = (16, 64)
    duration: float = 60.0
    feedback_clients: int = 4
    new_share: float = 0.1
    k: int = 10
    warmup: float = 3.0
    server_workers: int = 1
    slate_cache: int | None = None  # None: the server's default
    startup_timeout: float = 300.0
    seed: int = 0


@dataclass
class PhaseResult:
    name: str
    clients: int
    feedback_clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    outage_failures: int = 0
    feedback_posts: int = 0
    events_acked: int = 0
    load_average: dict[str, Any] = field(default_factory=dict)
    kill: dict[str, Any] | None = None
    server_cpu_s: float | None = None  # the server process's user + system time in the phase
    client_cpu_s: float | None = None  # this process's (the clients')

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms)
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out["requests"] = len(lat)
        out["throughput_rps"] = round(len(lat) / self.seconds, 1)
        if self.server_cpu_s is not None and len(lat):
            out["server_cpu_ms_per_request"] = round(1000 * self.server_cpu_s / len(lat), 2)
        if len(lat):
            out["latency_ms"] = {name: round(float(np.percentile(lat, q)), 2) for name, q in
                                 (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
        return out


class _Connection:
    """One keep-alive HTTP/1.1 connection (just enough of the protocol for this test)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        try:
            self.writer.write(head.encode() + body)
            await self.writer.drain()
            status = int((await self.reader.readline()).split(b" ", 2)[1])
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return status, await self.reader.readexactly(length)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _Server:
    def __init__(self, cfg: LoadConfig, log_path: Path) -> None:
        self.cfg, self.log_path = cfg, log_path
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self.output = cfg.out / "server.log"

    def start(self) -> float:
        """Start the server and wait for ``/healthz``; returns the seconds it took."""
        start = time.perf_counter()
        env = os.environ | {"PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "stylerec", "serve", "--model-dir", str(self.cfg.model_dir),
               "--port", str(self.port), "--feedback-log", str(self.log_path), "--no-render",
               "--workers", str(self.cfg.server_workers),
               *(() if self.cfg.slate_cache is None else
                 ("--slate-cache", str(self.cfg.slate_cache)))]
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.cfg.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see "
                                   f"{self.output}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    if b" 200 " in s.recv(64):
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server did not answer /healthz in {self.cfg.startup_timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (not of ``--workers`` children)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """``SIGKILL`` the server's process group (the workers too) and reap it."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


async def _phase(server: _Server, result: PhaseResult, users: np.ndarray, items: np.ndarray,
                 cfg: LoadConfig, acked: set[str], kill_at: float | None) -> None:
    rng = np.random.default_rng(cfg.seed + result.clients)
    down = asyncio.Event()  # set while the server is being killed and restarted
    deadline = time.perf_counter() + result.seconds

    def shopper() -> str:
        if rng.random() < cfg.new_share:
            return f"bench-new-{rng.integers(1_000_000)}"
        return str(users[rng.integers(len(users))])

    def failed(message: str, outage: bool) -> None:
        if outage:
            result.outage_failures += 1
        else:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(message)

    async def recommend_client() -> None:
        conn = _Connection(server.port)
        while time.perf_counter() < deadline:
            target = f"/recommend?uid={shopper()}&k={cfg.k}"
            start, outage = time.perf_counter(), down.is_set()
            try:
                status, body = await conn.request("GET", target)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                failed(f"{type(err).__name__}: {err}", outage or down.is_set())
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                result.latencies_ms.append(1000 * (time.perf_counter() - start))
            else:
                failed(f"HTTP {status}: {body[:200]!r}", outage or down.is_set())
        conn.close()

    async def feedback_client(worker: int) -> None:
        conn, n = _Connection(server.port), 0
        while time.perf_counter() < deadline:
            uid, shown = shopper(), items[rng.choice(len(items), size=10, replace=False)]
            events = [{"uid": uid, "item": str(item), "type": "impression", "position": p + 1,
                       "event_id": f"{result.name}-{worker}-{n}-{p}"}
                      for p, item in enumerate(shown)]
            events.append({"uid": uid, "item": str(shown[rng.integers(10)]), "type": "click",
                           "event_id": f"{result.name}-{worker}-{n}-click"})
            n += 1
            outage = down.is_set()
            try:
                status, body = await conn.request("POST", "/feedback",
                                                  json.dumps({"events": events}).encode())
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                failed(f"{type(err).__name__}: {err}", outage or down.is_set())
                await asyncio.sleep(0.05)
                continue
            if 200 <= status < 300:
                result.feedback_posts += 1
                acked.update(e["event_id"] for e in events)
            else:
                failed(f"HTTP {status}: {body[:200]!r}", outage or down.is_set())

    async def killer() -> None:
        await asyncio.sleep(kill_at)
        down.set()
        killed = time.perf_counter()
        server.kill()
        restart = await asyncio.get_running_loop().run_in_executor(None, server.start)
        result.kill = {"at_s": kill_at, "restart_s": round(restart, 2),
                       "downtime_s": round(time.perf_counter() - killed, 2)}
        down.clear()

    tasks = [recommend_client() for _ in range(result.clients)]
    tasks += [feedback_client(w) for w in range(result.feedback_clients)]
    if kill_at is not None:
        tasks.append(killer())
    await asyncio.gather(*tasks)


def _online_update(server: _Server, cfg: LoadConfig) -> dict[str, Any]:
    """A shopper the model never saw clicks three look-alike items; how fast and how far
    their next slate moves toward them (cosine of the model's item embeddings)."""
    from recsys.recommender import StyleRecommender

    model = StyleRecommender.load(cfg.model_dir)
    ids, vectors = model.ranker_.item_ids_, model.ranker_.item_vectors_
    rng = np.random.default_rng(cfg.seed)
    seed_item = int(rng.integers(len(ids)))
    clicked = np.argsort(-(vectors @ vectors[seed_item]), kind="stable")[:3]
    position = {str(t): i for i, t in enumerate(ids)}
    uid = f"bench-online-{cfg.seed}"

    def closeness(items: list[str]) -> float:
        rows = vectors[[position[i] for i in items]]
        return round(float((rows @ vectors[clicked].T).max(axis=1).mean()), 4)

    async def run() -> dict[str, Any]:
        conn = _Connection(server.port)
        target = f"/recommend?uid={uid}&k={cfg.k}"
        before = json.loads((await conn.request("GET", target))[1])
        for i in clicked:
            body = json.dumps({"uid": uid, "item": str(ids[i]), "type": "click"}).encode()
            status, _ = await conn.request("POST", "/feedback", body)
            if status != 200:
                raise RuntimeError(f"/feedback answered {status}")
        start = time.perf_counter()
        after = json.loads((await conn.request("GET", target))[1])
        seconds = time.perf_counter() - start
        conn.close()
        return {"clicked": [str(ids[i]) for i in clicked],
                "before": {"fallback": before["fallback"],
                           "closeness": closeness(before["recommendations"])},
                "after": {"folded_in": after["folded_in"],
                          "closeness": closeness(after["recommendations"]),
                          "style": after["style"]},
                "seconds_to_next_slate": round(seconds, 3)}

    return asyncio.run(run())


def _run_phase(server: _Server, name: str, clients: int, feedback_clients: int,
               users: np.ndarray, items: np.ndarray, cfg: LoadConfig, acked: set[str],
               kill_at: float | None = None) -> PhaseResult:
    if cfg.warmup > 0:
        warm = PhaseResult("warmup", clients, 0, cfg.warmup)
        asyncio.run(_phase(server, warm, users, items, cfg, set(), None))
    result = PhaseResult(name, clients, feedback_clients, cfg.duration)
    result.load_average["before"] = load_average()
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    asyncio.run(_phase(server, result, users, items, cfg, acked, kill_at))
    result.client_cpu_s = round(time.process_time() - client_cpu, 2)
    if kill_at is None and cfg.server_workers == 1:
        result.server_cpu_s = round(server.cpu_seconds() - server_cpu, 2)
    result.load_average["after"] = load_average()
    return result


def run_load_test(cfg: LoadConfig, command: str = "") -> dict[str, Any]:
    """Run every phase against a fresh server; returns the JSON-ready record."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    log_path = cfg.out / "feedback.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log_path}{suffix}").unlink(missing_ok=True)
    meta = json.loads((cfg.model_dir / "recommender.json").read_text())
    items = np.asarray(sorted(meta["item_paths"]))
    users = Recommender.load(cfg.model_dir / "cf").user_ids_
    record: dict[str, Any] = {
        "command": command,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": library_versions(("fastapi", "uvicorn", "h11")),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "model": {"dir": str(cfg.model_dir), "items": len(items), "users": len(users),
                  "params": meta["params"]},
        "load_average": {"before": load_average()}, "phases": []}
    server = _Server(cfg, log_path)
    acked: set[str] = set()
    try:
        record["startup_s"] = round(server.start(), 2)
        for clients in cfg.clients:
            record["phases"].append(_run_phase(server, f"recommend-{clients}", clients, 0,
                                               users, items, cfg, acked).summary())
        record["online_update"] = _online_update(server, cfg)
        phase = _run_phase(server, f"feedback+kill-{cfg.clients[0]}", cfg.clients[0],
                           cfg.feedback_clients, users, items, cfg, acked,
                           kill_at=cfg.duration / 2)
    finally:
        server.stop()
    stored = FeedbackLog(log_path)
    ids = stored.event_ids()
    phase.events_acked = len(acked)
    record["phases"].append(phase.summary() | {"log": {
        "events": stored.count(), "acked_events_in_log": len(acked & ids),
        "acked_events_missing": len(acked - ids), "integrity": stored.integrity()}})
    record["load_average"]["after"] = load_average()
    return record


def format_record(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [f"stylerec bench-service — {m['cpu_model']}, {m['usable_cores']} usable cores; "
             f"model {record['model']['dir']} ({record['model']['items']} items, "
             f"{record['model']['users']} users); server start {record['startup_s']} s",
             f"load average before {record['load_average']['before']}, after "
             f"{record['load_average']['after']}", "",
             f"{'phase':<22}{'clients':>8}{'req/s':>8}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}"
             f"{'max ms':>8}{'errors':>7}{'CPU ms/req':>11}  load avg (1 min) before/after"]
    for p in record["phases"]:
        lat = p.get("latency_ms", {})
        clients = f"{p['clients']}+{p['feedback_clients']}" if p["feedback_clients"] \
            else str(p["clients"])
        lines.append(
            f"{p['name']:<22}{clients:>8}{p['throughput_rps']:>8}"
            + "".join(f"{lat.get(q, float('nan')):>8}" for q in ("p50", "p90", "p99", "max"))
            + f"{p['errors']:>7}{p.get('server_cpu_ms_per_request', '-'):>11}  "
              f"{p['load_average']['before'][0]}/"
              f"{p['load_average']['after'][0]}")
    online = record["online_update"]
    lines += ["", f"online update: a new shopper clicks 3 look-alike items; next /recommend "
              f"{1000 * online['seconds_to_next_slate']:.0f} ms after the third 2xx, "
              f"folded_in={online['after']['folded_in']}; slate closeness to the clicked items "
              f"(mean max cosine) {online['before']['closeness']} -> "
              f"{online['after']['closeness']}"]
    for p in record["phases"]:
        if p.get("kill"):
            log = p["log"]
            lines += ["", f"{p['name']}: {p['feedback_posts']} feedback posts acknowledged "
                      f"({p['events_acked']} events); SIGKILL at {p['kill']['at_s']} s, "
                      f"back after {p['kill']['downtime_s']} s; {p['outage_failures']} "
                      f"requests failed during the outage",
                      f"log: {log['events']} events, {log['acked_events_in_log']} of "
                      f"{p['events_acked']} acknowledged events present, "
                      f"{log['acked_events_missing']} missing; integrity_check: "
                      f"{log['integrity']}"]
        if p["error_samples"]:
            lines.append(f"{p['name']} errors: {p['error_samples']}")
    return "\n".join(lines) + "\n"


def add_bench_service_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench-service`` on the ``stylerec`` subparsers."""
    p = subparsers.add_parser(
        "bench-service", help="load test of `stylerec serve` on loopback (bounded in time)",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--model-dir", type=Path, required=True, help="a saved StyleRecommender")
    p.add_argument("--clients", default="16,64",
                   help="concurrent /recommend clients per phase (default: 16,64)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per phase (default 60)")
    p.add_argument("--feedback-clients", type=int, default=4,
                   help="clients posting /feedback in the kill phase (default 4)")
    p.add_argument("--new-share", type=float, default=0.1,
                   help="share of requests for shoppers the model never saw (default 0.1)")
    p.add_argument("-k", type=int, default=10, help="slate length (default 10)")
    p.add_argument("--server-workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--slate-cache", type=int,
                   help="the server's --slate-cache (default: the server's; 0: every request "
                        "computed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench-service",
                   help="output folder (default: out/bench-service)")
    p.set_defaults(func=cmd_bench_service)
    return p


def cmd_bench_service(args: argparse.Namespace) -> int:
    clients = tuple(int(c) for c in args.clients.split(",") if c.strip())
    if not clients or min(clients) < 1 or args.duration <= 0:
        raise ValueError("--clients needs positive integers and --duration > 0")
    cfg = LoadConfig(args.model_dir, args.out, clients, args.duration, args.feedback_clients,
                     args.new_share, args.k, server_workers=args.server_workers,
                     slate_cache=args.slate_cache, seed=args.seed)
    record = run_load_test(cfg, shlex.join(sys.argv))
    text = format_record(record)
    write_bytes_atomic(args.out / "bench-service.json", json.dumps(record, indent=2).encode())
    write_bytes_atomic(args.out / "bench-service.txt", text.encode())
    print(text, end="")
    failed = any(p["errors"] for p in record["phases"]) or \
        record["phases"][-1]["log"]["acked_events_missing"] or \
        record["phases"][-1]["log"]["integrity"] != "ok"
    return 1 if failed else 0
