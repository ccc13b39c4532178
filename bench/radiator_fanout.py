"""Radiator fan-out: N websocket screens on one wall, events published as a worker does.

    .venv/bin/python bench/radiator_fanout.py [--clients 100,500,1000]
        [--configs production,standalone,floor] [--seconds 10] [--rate 5] [--burst 200]
        [--client raw|websockets] [--client-processes 2] [--settle 60]

For each configuration and N: one server process, N asyncio websocket clients (split over
--client-processes processes), then a steady RATE events/s for SECONDS, then a burst of
BURST events. Each event is what a worker does: in one transaction, a new Build (branch
`bench-R-I`, the marker) and its Event through `record_event`, published after commit by
radiators.events.publish.
A client "sees" an event when a frame carrying its marker arrives; latency = that moment
minus the moment just before the publisher's transaction (same machine, same clock).

- production: PostgreSQL + Redis (RedisPubSubChannelLayer), uvicorn with Trainyard's ASGI
  app in one process (--ws websockets-sansio, as in the Procfile), the publisher a separate
  process (as a Celery worker is).
- standalone: SQLite + the in-process layer; the in-process layer cannot cross processes,
  so the publisher is a thread of the server process (as the embedded worker is).
- floor: a bare `websockets` server fed by Redis pub/sub: it encodes each message once and
  broadcasts it; no database, no Django. The publisher publishes the marker to Redis.

Printed per row: p50/p99 delivery latency (steady: every event on every client; burst:
the burst's last event), frames/s received by all clients, the server's CPU (% of one
core, from /proc/<pid>/stat) and "lost": steady, (event, client) pairs never seen; burst,
clients that never saw the burst's final state (coalescing may skip intermediate ones:
by design).

The clients (`raw`, the default) read frames straight off an asyncio Protocol: a few us a
frame, so the latency is the server's. `--client websockets` uses the library's client
(about 90 us of Python a frame, in every configuration's latency) and offers
permessage-deflate, as browsers do; Trainyard's servers decline it, the floor accepts it.
Before each configuration, the run waits (up to --settle s) for the rest of the machine to
use less than a quarter of a core: the clients share its cores with the server.

Needs PostgreSQL and Redis for production and floor (DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/postgres, a database is made for the run and dropped;
REDIS_URL, default redis://127.0.0.1:6379/15, flushed).
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import settle  # noqa: E402

MARKER = re.compile(r"bench-(\d+)-(\d+)")
RAW_MARKER = re.compile(rb"bench-\d+-\d+")
FLOOR_CHANNEL = "trainyard-bench-floor"
TICKS = os.sysconf("SC_CLK_TCK")


# The publisher: a worker's writes, driven by commands on stdin ---------------------------

def publisher_loop(lines, out, floor_redis=None):
    """Commands: `steady ROUND COUNT RATE`, `burst ROUND COUNT`; answers one JSON line
    `PUBLISHED {marker: time}` per command."""
    if floor_redis is None:
        from django.db import transaction

        from pipeline.models import Build, Commit, Repository
        from pipeline.services.events import record_event

        repository = Repository.objects.get(name="bench")

        def one(marker):
            with transaction.atomic():
                sha = secrets.token_hex(20)
                commit = Commit.objects.create(repository=repository, sha=sha, message=marker)
                build = Build.objects.create(repository=repository, commit=commit, sha=sha,
                                             branch=marker)
                record_event("build.requested", subject=build, new="queued")
    else:
        import redis

        client = redis.Redis.from_url(floor_redis)

        def one(marker):
            client.publish(FLOOR_CHANNEL, marker)

    for line in lines:
        parts = line.split()
        if not parts:
            continue
        kind, round_, count = parts[0], int(parts[1]), int(parts[2])
        interval = 1 / float(parts[3]) if kind == "steady" else 0
        published, start = {}, time.monotonic()
        for i in range(count):
            if interval:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            marker = f"bench-{round_}-{i}"
            published[marker] = time.time()
            one(marker)
        out.write("PUBLISHED " + json.dumps(published) + "\n")
        out.flush()


def setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")
    import django

    django.setup()


# Servers -------------------------------------------------------------------------------

def serve(port, in_process_publisher):
    setup_django()
    import uvicorn

    if in_process_publisher:
        threading.Thread(target=publisher_loop, args=(sys.stdin, sys.stdout), daemon=True).start()
    uvicorn.run("pipeline.asgi:application", host="127.0.0.1", port=port, log_level="warning",
                ws="websockets-sansio", lifespan="off", access_log=False,
                ws_per_message_deflate=False)  # as the Procfile and docker-compose.yml


async def floor_server(port, redis_url):
    """The floor: encode once, write the same frame to every socket."""
    import redis.asyncio as aioredis
    from websockets.asyncio.server import broadcast
    from websockets.asyncio.server import serve as ws_serve

    clients = set()
    seq = 0

    async def handler(ws):
        clients.add(ws)
        try:
            await ws.send(json.dumps({"type": "snapshot", "seq": seq, "panels": {}}))
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    pubsub = aioredis.Redis.from_url(redis_url).pubsub()
    await pubsub.subscribe(FLOOR_CHANNEL)
    async with ws_serve(handler, "127.0.0.1", port):
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            seq += 1
            text = json.dumps({"type": "panels", "seq": seq, "version": "floor",
                               "panels": {"builds": [{"branch": message["data"].decode(),
                                                      "status": "queued"}]}})
            broadcast(clients, text)


# Clients -------------------------------------------------------------------------------
#
# The clients are the instrument, not what is measured: a screen's latency is the moment its
# frame is read. With the `websockets` library a frame costs its client process about 90 us
# of Python (1000 screens over two processes: ~45 ms per event before the last screen of a
# process has read its frame), which lands in the figures of every configuration, the floor
# included. The default `raw` client reads frames straight off an asyncio Protocol (a few us
# each), so the figures are the server's; `--client websockets` measures with the library.

class RawScreen(asyncio.Protocol):
    """A websocket client reduced to what the bench needs: the handshake (its answer
    checked), server frames parsed as they arrive (text, continuation, ping answered with a
    masked pong, close), markers recorded with the time the bytes were read."""

    def __init__(self, host, path, origin, mine, frames, ready):
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
                        f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode()
        self.mine, self.frames, self.ready = mine, frames, ready
        self.buffer = bytearray()
        self.upgraded = False
        self.fragments = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the snapshot: {exc}"))

    def data_received(self, data):
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1")
            accept = base64.b64encode(hashlib.sha1(
                (self.key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            if not head.startswith("HTTP/1.1 101") or accept not in head:
                self.ready.set_exception(ConnectionError(head.split("\r\n", 1)[0]))
                self.transport.close()
                return
            del buffer[:end + 4]
            self.upgraded = True
        while len(buffer) >= 2:
            length, offset = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                return
            first = buffer[0]
            payload = bytes(buffer[offset:offset + length])
            del buffer[:offset + length]
            self.frame(first & 0x80, first & 0x0F, payload, now)

    def frame(self, fin, opcode, payload, now):
        if opcode == 0x9:  # ping
            self.send(0xA, payload)
        elif opcode == 0x8:  # close: answer it
            self.send(0x8, payload[:2])
            self.transport.close()
        elif opcode in (0x0, 0x1, 0x2):
            self.fragments.append(payload)
            if not fin:
                return
            message, self.fragments = b"".join(self.fragments), []
            self.frames[0] += 1
            if not self.ready.done():
                self.ready.set_result(True)
            for match in RAW_MARKER.finditer(message):
                self.mine.setdefault(match.group(0).decode(), now)

    def send(self, opcode, payload=b""):
        mask = os.urandom(4)  # a client's frames are masked (RFC 6455 5.3)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def close(self):
        if not self.transport.is_closing():
            self.send(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()


async def clients_main(url, origin, count, compression="deflate", client="raw"):
    """N screens. Prints READY once every one has its snapshot; then, on `wait MARKER
    TIMEOUT`, waits until each has seen MARKER and prints a JSON report of what each saw."""
    from websockets.asyncio.client import connect

    seen = [dict() for _ in range(count)]
    frames = [0]
    sockets = []

    async def reader(ws, mine, ready):
        async for text in ws:
            now = time.time()
            frames[0] += 1
            if not ready.done():
                ready.set_result(True)
            for match in MARKER.finditer(text):
                mine.setdefault(match.group(0), now)

    async def open_raw(mine, ready):
        parts = urlsplit(url)
        _, screen = await loop.create_connection(
            lambda: RawScreen(parts.netloc, parts.path, origin, mine, frames, ready),
            parts.hostname, parts.port)
        return screen

    loop = asyncio.get_running_loop()
    readers = []
    for start in range(0, count, 50):
        batch = []
        for i in range(start, min(count, start + 50)):
            ready = loop.create_future()
            if client == "raw":
                sockets.append(await open_raw(seen[i], ready))
            else:
                ws = await connect(url, origin=origin, max_size=None, open_timeout=60,
                                   ping_interval=None, compression=compression)
                sockets.append(ws)
                readers.append(loop.create_task(reader(ws, seen[i], ready)))
            batch.append(ready)
        await asyncio.gather(*batch)
    print("READY", flush=True)

    reader_stream = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader_stream), sys.stdin)
    while line := (await reader_stream.readline()).decode():
        parts = line.split()
        if parts[0] == "quit":
            break
        if parts[0] == "reset":
            frames[0] = 0
            for mine in seen:
                mine.clear()
            print("OK", flush=True)
            continue
        marker, timeout = parts[1], float(parts[2])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(marker in mine for mine in seen):
            await asyncio.sleep(0.05)
        print("REPORT " + json.dumps({"frames": frames[0], "seen": seen}), flush=True)
    for ws in sockets:
        await ws.close()


# The run -------------------------------------------------------------------------------

class Process:
    def __init__(self, args, env, name):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, *args], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} ended (exit {self.proc.wait()})")
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"{self.name}: no {prefix!r} within {timeout} s")

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ClientGroup:
    """The screens split over several client processes, driven as one: a single asyncio
    process decoding 1000 frames per event adds its own queue to the latency it measures."""

    def __init__(self, processes):
        self.processes = processes

    def send(self, line):
        for proc in self.processes:
            proc.send(line)

    def expect(self, prefix, timeout=300):
        answers = [proc.expect(prefix, timeout) for proc in self.processes]
        if prefix != "REPORT ":
            return answers[0]
        reports = [json.loads(answer) for answer in answers]
        return json.dumps({"frames": sum(r["frames"] for r in reports),
                           "seen": [mine for r in reports for mine in r["seen"]]})

    def cpu_seconds(self):
        return sum(proc.cpu_seconds() for proc in self.processes)

    def stop(self):
        for proc in self.processes:
            proc.stop()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(server, publisher, clients, round_, pattern, args):
    clients.send("reset")
    clients.expect("OK")
    cpu, client_cpu, started = server.cpu_seconds(), clients.cpu_seconds(), time.time()
    if pattern == "steady":
        count = int(args.seconds * args.rate)
        publisher.send(f"steady {round_} {count} {args.rate}")
    else:
        count = args.burst
        publisher.send(f"burst {round_} {count}")
    published = json.loads(publisher.expect("PUBLISHED "))
    last = f"bench-{round_}-{count - 1}"
    clients.send(f"wait {last} 60")
    report = json.loads(clients.expect("REPORT ", timeout=120))
    seen = report["seen"]
    ended = max([mine[last] for mine in seen if last in mine] or [time.time()])
    elapsed = max(0.001, ended - started)
    cpu = (server.cpu_seconds() - cpu) / elapsed * 100
    client_cpu = (clients.cpu_seconds() - client_cpu) / elapsed * 100
    if pattern == "steady":
        latencies = [mine[m] - t for mine in seen for m, t in published.items() if m in mine]
        lost = count * len(seen) - len(latencies)
    else:
        latencies = [mine[last] - published[last] for mine in seen if last in mine]
        lost = sum(1 for mine in seen if last not in mine)
    return {"label": f"steady {args.rate:g}/s" if pattern == "steady" else f"burst {count}",
            "p50": percentile(latencies, 0.5) * 1000, "p99": percentile(latencies, 0.99) * 1000,
            "frames": report["frames"] / elapsed, "cpu": cpu, "client_cpu": client_cpu, "lost": lost,
            "events": count, "elapsed": elapsed}


class Postgres:
    def __init__(self, url):
        import psycopg

        self.admin = url
        self.name = f"trainyard_bench_fanout_{os.getpid()}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlunsplit(urlsplit(url)._replace(path=f"/{self.name}"))

    def drop(self):
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def prepare(env):
    """Migrate and make the `bench` repository (a separate process: its own settings)."""
    code = ("import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
            "'pipeline.settings'); django.setup(); from django.core.management import "
            "call_command; call_command('migrate', verbosity=0); from pipeline.models import "
            "Repository; Repository.objects.get_or_create(name='bench', "
            "defaults={'clone_url': '/nonexistent'})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)


def run_config(config, args, folder, redis_url, database_url, round_counter):
    env = {**os.environ, "TRAINYARD_VAR_DIR": str(folder / config), "TRAINYARD_ENV": "standalone",
           "TRAINYARD_EMBEDDED_WORKER": "0", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    database = None
    if config == "production":
        database = Postgres(database_url)
        env.update(DATABASE_URL=database.url, REDIS_URL=redis_url,
                   CHANNELS_PREFIX=f"bench{os.getpid()}")
    rows = []
    try:
        if config != "floor":
            prepare(env)
        for count in args.clients:
            if args.settle:
                idle = settle(args.settle)
                if idle >= 0.25:
                    print(f"(the rest of the machine used {idle:.2f} cores as this began)")
            port = free_port()
            if config == "floor":
                server = Process(["floor", "--port", str(port), "--redis", redis_url], env, "floor")
                publisher = Process(["publish", "--floor", redis_url], env, "publisher")
            elif config == "production":
                server = Process(["serve", "--port", str(port)], env, "server")
                publisher = Process(["publish"], env, "publisher")
            else:
                server = Process(["serve", "--port", str(port), "--in-process-publisher"], env,
                                 "server")
                publisher = server
            clients = None
            try:
                wait_for_port(port)
                path = "/" if config == "floor" else "/ws/radiators/bench/"
                shares = [count // args.client_processes + (i < count % args.client_processes)
                          for i in range(args.client_processes)]
                clients = ClientGroup([
                    Process(["clients", "--url", f"ws://127.0.0.1:{port}{path}",
                             "--origin", f"http://127.0.0.1:{port}", "--n", str(share),
                             "--client", args.client,
                             *(["--no-deflate"] if args.no_deflate else [])],
                            env, f"clients-{i}")
                    for i, share in enumerate(shares) if share])
                clients.expect("READY", timeout=300)
                for pattern in ("steady", "burst"):
                    round_ = next(round_counter)
                    result = measure(server, publisher, clients, round_, pattern, args)
                    rows.append((config, count, pattern, result))
                    print_row(*rows[-1])
            finally:
                for proc in (clients, publisher, server):
                    if proc is not None:
                        if proc is clients:
                            proc.send("quit")
                        proc.stop()
    finally:
        if database:
            database.drop()
    return rows


def print_header():
    print(f"{'config':<11} {'N':>5} {'pattern':<14} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'frames/s':>9} {'server CPU':>10} {'lost':>5} {'client CPU':>10}")


def print_row(config, count, pattern, r):
    print(f"{config:<11} {count:>5} {r['label']:<14} {r['p50']:>8.1f} {r['p99']:>8.1f} "
          f"{r['frames']:>9.0f} {r['cpu']:>9.0f}% {r['lost']:>5} {r['client_cpu']:>9.0f}%", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    serving = sub.add_parser("serve")
    serving.add_argument("--port", type=int, required=True)
    serving.add_argument("--in-process-publisher", action="store_true")
    floor = sub.add_parser("floor")
    floor.add_argument("--port", type=int, required=True)
    floor.add_argument("--redis", required=True)
    publishing = sub.add_parser("publish")
    publishing.add_argument("--floor", default=None, help="publish markers to this Redis")
    clients = sub.add_parser("clients")
    clients.add_argument("--url", required=True)
    clients.add_argument("--origin", required=True)
    clients.add_argument("--n", type=int, required=True)
    clients.add_argument("--no-deflate", action="store_true")
    clients.add_argument("--client", choices=("raw", "websockets"), default="raw")
    parser.add_argument("--clients", default="100,500,1000")
    parser.add_argument("--configs", default="production,standalone,floor")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=5)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--settle", type=float, default=60,
                        help="before each configuration and N, wait up to this many seconds for "
                             "the machine to be idle (under a quarter of a core); 0: do not wait")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the screens are split over (default 2: one per core here)")
    parser.add_argument("--no-deflate", action="store_true",
                        help="websockets clients do not offer permessage-deflate (browsers do)")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw",
                        help="raw (default): frames read off an asyncio Protocol, a few us each; "
                             "websockets: the library's client (~90 us of Python a frame, counted "
                             "in every latency); it offers permessage-deflate")
    args = parser.parse_args(argv)

    if args.mode == "serve":
        return serve(args.port, args.in_process_publisher)
    if args.mode == "floor":
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))
        return asyncio.run(floor_server(args.port, args.redis))
    if args.mode in ("publish", "clients"):
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))  # nothing to tidy up
    if args.mode == "publish":
        if args.floor is None:
            setup_django()
        return publisher_loop(sys.stdin, sys.stdout, floor_redis=args.floor)
    if args.mode == "clients":
        return asyncio.run(clients_main(args.url, args.origin, args.n,
                                        None if args.no_deflate else "deflate", args.client))

    args.clients = [int(n) for n in args.clients.split(",")]
    configs = args.configs.split(",")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if {"production", "floor"} & set(configs):
        import redis

        redis.Redis.from_url(redis_url).flushdb()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "?")
    print(f"Radiator fan-out: {os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}; "
          f"steady {args.rate:g} events/s for {args.seconds:g} s, burst {args.burst}")
    print_header()
    folder = Path(tempfile.mkdtemp(prefix="trainyard-bench-fanout-"))
    counter = iter(range(1, 10**6))
    for config in configs:
        run_config(config, args, folder, redis_url, database_url, counter)


if __name__ == "__main__":
    sys.exit(main())
