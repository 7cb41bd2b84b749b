#!/usr/bin/env python3
"""Loads the status page of a running 3-node cluster in headless Chromium and checks what it shows.

    scripts/status_page_test.py [--kvserver PATH] [--chromium PATH] [--screenshot FILE]

Starts three `kvserver node` processes on 127.0.0.1 (ports found free at run time), writes a few
keys, then renders http://NODE/ with `chromium --headless --dump-dom` until the page shows every
node (id and address) as up with a key count and an operation rate. Then it kills one node and
renders the page again until that node shows as down with its figures unavailable while the
others stay up. Against a stand-in for the serving node it also checks that an address from the
overview is shown as text, never parsed as markup, and that a banner appears (over the last
figures) once the serving node stops answering. With --screenshot it also saves a picture of the page (while clients write and
read) to FILE, e.g. docs/status.png.

Without --kvserver the binary is built with `cargo build -p kvserver` (CARGO_TARGET_DIR is
respected: the path comes from cargo's own build messages). Every process it started is killed
when it ends, on failure and on SIGINT/SIGTERM too; the whole run gives up after --timeout
seconds. Python 3 standard library only.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NODES = 3


class Failure(Exception):
    """The page did not show what it should (or the cluster did not start)."""


class Wrong(Exception):
    """The page showed something it must never show; never retried by poll()."""


class Stopped(Exception):
    """A signal or the run's own deadline ended it; never retried by poll()."""


def log(message):
    print(f"status_page_test: {message}", flush=True)


def build_kvserver():
    """Builds kvserver and returns the binary's path, as cargo reports it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log("building kvserver (cargo build -p kvserver)")
    out = subprocess.run(
        ["cargo", "build", "--locked", "-p", "kvserver", "--bin", "kvserver",
         "--message-format=json"],
        cwd=root,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    for line in out.decode().splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            if message["target"]["name"] == "kvserver":
                return message["executable"]
    raise Failure("cargo built no kvserver executable")


def find_chromium(given):
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise Failure("no chromium found: install Debian's `chromium` package or pass --chromium")


def free_ports(n):
    """Ports free on 127.0.0.1 right now: bound on port 0, then released for the nodes."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http(method, url, body=None, timeout=5):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def poll(what, timeout, check, interval=0.2):
    """Calls check() until it returns something other than None, or fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            result = check()
            if result is not None:
                return result
        except (OSError, ValueError, Failure, subprocess.SubprocessError) as e:
            last = e
        if time.monotonic() > deadline:
            raise Failure(f"{what}: not within {timeout} s" + (f" (last: {last})" if last else ""))
        time.sleep(interval)


class Cluster:
    """Three node processes on 127.0.0.1; stop() kills whatever is still running."""

    def __init__(self, binary, workdir):
        self.ports = free_ports(NODES)
        self.addrs = [f"127.0.0.1:{p}" for p in self.ports]
        self.procs = []
        self.logs = []
        env = dict(os.environ, KV_CLUSTER_SECRET=secrets.token_hex(32), RUST_LOG="warn")
        for i, addr in enumerate(self.addrs):
            log_file = open(os.path.join(workdir, f"node{i}.log"), "wb")
            self.logs.append(log_file)
            self.procs.append(
                subprocess.Popen(
                    [binary, "node", "--id", str(i), "--listen", addr, "--peers",
                     ",".join(self.addrs), "--max-memory", "16MiB"],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            )

    def url(self, i, path=""):
        return f"http://{self.addrs[i]}/{path}"

    def wait_healthy(self, timeout=60):
        for i in range(NODES):
            def healthy(i=i):
                if self.procs[i].poll() is not None:
                    raise Failure(f"node {i} exited with {self.procs[i].returncode}")
                status, _ = http("GET", self.url(i, "health"), timeout=2)
                return True if status == 200 else None
            poll(f"node {i} healthy", timeout, healthy)

    def kill(self, i):
        self.procs[i].kill()
        self.procs[i].wait(timeout=10)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for f in self.logs:
            f.close()


class NodeRows(HTMLParser):
    """The node table of a rendered page: per `tr[data-node-id]`, its state and field texts."""

    def __init__(self):
        super().__init__()
        self.rows = {}
        self.tags = set()
        self.banner = None
        self._row = None
        self._field = None
        self._in_banner = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "tr" and "data-node-id" in a:
            self._row = {"state": a.get("data-state"), "fields": {}}
            self.rows[a["data-node-id"]] = self._row
        elif self._row is not None and "data-field" in a:
            self._field = a["data-field"]
            self._row["fields"].setdefault(self._field, "")
        if a.get("id") == "banner":
            self._in_banner = "shown" in (a.get("class") or "").split()
            self.banner = "" if self._in_banner else None

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag in ("td", "span"):
            self._field = None
        if tag == "div" and self._in_banner:
            self._in_banner = False

    def handle_data(self, data):
        if self._row is not None and self._field is not None:
            self._row["fields"][self._field] += data
        if self._in_banner:
            self.banner += data


def render(chromium, url, profile, budget_ms=6000):
    """The page's DOM after budget_ms of virtual time (several refreshes)."""
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        timeout=60,
        check=True,
    ).stdout.decode()
    parser = NodeRows()
    parser.feed(out)
    return parser


def number(text):
    return text is not None and text.replace(",", "").replace(".", "", 1).strip().isdigit()


def shows_all_up(cluster, page):
    """None unless the page shows every node up with its address, a key count and a rate."""
    for i, addr in enumerate(cluster.addrs):
        row = page.rows.get(str(i))
        if row is None:
            return None
        f = row["fields"]
        if row["state"] != "up" or f.get("addr") != addr or not f.get("id", "").startswith(str(i)):
            return None
        if not number(f.get("keys")) or not number(f.get("rate")):
            return None
    return page


def shows_down(cluster, page, dead):
    row = page.rows.get(str(dead))
    if row is None or row["state"] != "down" or "unavailable" not in row["fields"].get("error", ""):
        return None
    if row["fields"].get("addr") != cluster.addrs[dead]:
        return None
    for i in range(NODES):
        if i != dead and (page.rows.get(str(i)) or {}).get("state") != "up":
            return None
    return page


HOSTILE_ADDR = '<img src=x onerror="document.title=1">&amp;127.0.0.1:1'


class StandIn:
    """A stand-in for the node that serves the page: it serves the real page (as a node served
    it) and, at /cluster/overview, either a real overview with a hostile address for node 1, or
    one real overview and then no answer at all (the connection closes)."""

    def __init__(self, page, overview_url, mode):
        answered = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                if self.path == "/":
                    return self.send(200, "text/html; charset=utf-8", page)
                if self.path != "/cluster/overview":
                    return self.send(404, "application/json", b"{}")
                if mode == "dies" and answered:
                    self.close_connection = True
                    return
                status, body = http("GET", overview_url)
                overview = json.loads(body)
                if mode == "hostile":
                    overview["nodes"][1]["addr"] = HOSTILE_ADDR
                answered.append(True)
                self.send(status, "application/json", json.dumps(overview).encode())

            def send(self, status, content_type, body):
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def check_stand_ins(cluster, chromium, profile):
    """The page escapes what it shows, and says so when its node stops answering."""
    status, page = http("GET", cluster.url(0))
    if status != 200 or not page.startswith(b"<!DOCTYPE html>"):
        raise Failure(f"GET / answered {status}: {page[:80]!r}")
    overview_url = cluster.url(0, "cluster/overview")
    hostile = StandIn(page, overview_url, "hostile")
    try:
        def escaped():
            shown = render(chromium, hostile.url, profile)
            row = shown.rows.get("1")
            if row is None:
                return None
            if "img" in shown.tags:
                raise Wrong("an address from the overview was parsed as markup")
            if row["fields"].get("addr") != HOSTILE_ADDR:
                raise Wrong(f"node 1's address shows as {row['fields'].get('addr')!r}")
            return shown
        poll("the page shows a hostile address as text", 60, escaped, interval=0.5)
        log("a hostile address is shown as text")
    finally:
        hostile.stop()
    dies = StandIn(page, overview_url, "dies")
    try:
        shown = render(chromium, dies.url, profile)
        if not shown.banner or "does not answer" not in shown.banner:
            raise Failure(f"no banner once the serving node stopped answering: {shown.banner!r}")
        if sorted(shown.rows) != [str(i) for i in range(NODES)]:
            raise Failure(f"the last figures are gone with the banner: {shown.rows}")
        log(f"banner: {shown.banner.strip()}")
    finally:
        dies.stop()


def traffic(cluster, stop, worker):
    """Writes values of a few KiB and reads them back through every node until stop is set."""
    n = worker
    while not stop.is_set():
        i, key = n % NODES, f"user:{n % 600}"
        try:
            http("POST", cluster.url(i, "set"), {"key": key, "value": "x" * (1024 + n % 3072)})
            http("GET", cluster.url((i + 1) % NODES, f"get/{key}"))
        except OSError:
            pass
        n += 4


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kvserver", help="kvserver binary (default: build it with cargo)")
    parser.add_argument("--chromium", help="chromium binary (default: found on PATH)")
    parser.add_argument("--screenshot", help="also save a screenshot of the page to this file")
    parser.add_argument("--timeout", type=int, default=300, help="give up after this many seconds")
    args = parser.parse_args()

    def give_up(signum, _frame):
        if signum == signal.SIGALRM:
            raise Stopped(f"the run took more than {args.timeout} s")
        raise Stopped(f"stopped by signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(signum, give_up)

    chromium = find_chromium(args.chromium)
    binary = args.kvserver or build_kvserver()
    signal.alarm(args.timeout)
    workdir = tempfile.mkdtemp(prefix="kv-status-page-")
    profile = os.path.join(workdir, "chromium-profile")
    cluster = None
    ok = False
    try:
        cluster = Cluster(binary, workdir)
        log(f"nodes at {', '.join(cluster.addrs)}")
        cluster.wait_healthy()
        for k in range(20):
            status, body = http("POST", cluster.url(k % NODES, "set"),
                                {"key": f"status:{k}", "value": k, "encoding": "integer"})
            if status != 200:
                raise Failure(f"writing status:{k} answered {status}: {body!r}")

        if args.screenshot:
            stop = threading.Event()
            writers = [threading.Thread(target=traffic, args=(cluster, stop, w), daemon=True)
                       for w in range(4)]
            for w in writers:
                w.start()
            # Enough keys written for the memory bars to show before the picture is taken.
            poll("clients' keys written", 60, lambda: json.loads(
                http("GET", cluster.url(0, "stats"))[1])["keys"] > 400 or None)
            try:
                shot = os.path.abspath(args.screenshot)
                subprocess.run(
                    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                     "--hide-scrollbars", "--window-size=1200,700",
                     "--virtual-time-budget=6000", f"--screenshot={shot}", cluster.url(0)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
                log(f"screenshot saved to {shot}")
            finally:
                stop.set()
                for w in writers:
                    w.join(timeout=10)

        check_stand_ins(cluster, chromium, profile)

        page = poll("the page shows every node up", 90,
                    lambda: shows_all_up(cluster, render(chromium, cluster.url(0), profile)),
                    interval=0.5)
        for i in range(NODES):
            log(f"node {i}: {page.rows[str(i)]}")
        dead = 2
        cluster.kill(dead)
        log(f"killed node {dead}")
        for serving in (0, 1):
            page = poll(f"node {serving}'s page shows node {dead} down", 90,
                        lambda s=serving: shows_down(cluster, render(chromium, cluster.url(s), profile),
                                                     dead),
                        interval=0.5)
            log(f"through node {serving}, node {dead}: {page.rows[str(dead)]}")
        ok = True
    except (Failure, Wrong, Stopped, subprocess.SubprocessError) as e:
        log(f"FAILED: {e}")
    finally:
        signal.alarm(0)
        if cluster is not None:
            cluster.stop()
            if not ok:
                for i in range(NODES):
                    path = os.path.join(workdir, f"node{i}.log")
                    with open(path, "rb") as f:
                        tail = f.read()[-2000:].decode(errors="replace")
                    log(f"node {i} log (tail):\n{tail}")
        shutil.rmtree(workdir, ignore_errors=True)
    log("ok" if ok else "failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
