#!/usr/bin/env python3
"""The container test: a three-node cluster from deploy/compose.yaml, through a node loss and a
network partition, checked from outside.

    scripts/image.sh && deploy/compose_test.py

Steps: start the cluster and wait until every node is healthy; write keys through one node;
kill one container (SIGKILL) and read everything back through the other two; start it again;
cut another node off the network (`docker network disconnect`) and check that it answers 503/504
from its side (asked from inside its container with `kvserver set`/`get`) while the majority
side keeps taking writes; reconnect it and read every acknowledged write back through every
node. Everything is torn down at the end, whatever happened. Uses only the standard library;
needs docker with `docker compose` or `docker-compose`.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
COMPOSE_FILE = os.path.join(HERE, "compose.yaml")
NODES = ["kv-0", "kv-1", "kv-2"]
TIMEOUT = 90.0


def compose_command():
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    sys.exit("neither `docker compose` nor `docker-compose` is available")


class Cluster:
    def __init__(self):
        self.project = f"kvtest{os.getpid()}"
        self.env = dict(os.environ, KV_CLUSTER_SECRET=secrets.token_hex(32))
        self.compose = compose_command() + ["-f", COMPOSE_FILE, "-p", self.project]
        self.network = f"{self.project}_kv"

    def run(self, *args, check=True):
        out = subprocess.run(
            self.compose + list(args), env=self.env, capture_output=True, text=True
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def container(self, node):
        return self.run("ps", "-q", node)

    def url(self, node):
        """The node's client port as published on this host (it changes when it restarts)."""
        addr = self.run("port", node, "5100")
        return f"http://{addr}"

    def kvserver(self, node, *args):
        """Runs the kvserver binary inside the node's container; returns its exit status."""
        cmd = ["docker", "exec", self.container(node), "/kvserver", *args]
        return subprocess.run(cmd, capture_output=True, text=True)


def call(method, url, body=None, timeout=5.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def poll(what, check, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = "not yet"
        except (OSError, RuntimeError, ValueError) as e:
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last})")


def call_until(what, accept, method, url, body=None):
    """Repeats a call until its answer is one `accept` takes (say, not a 503), under TIMEOUT."""
    return poll(what, lambda: (lambda answer: answer if accept(answer) else None)(
        call(method, url, body)
    ))


def healthy(cluster, node):
    status, body = call("GET", cluster.url(node) + "/health", timeout=2.0)
    return status == 200 and body["status"] == "ok"


def docker_health(cluster, node):
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Health.Status}}", cluster.container(node)],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def main():
    cluster = Cluster()
    started = time.monotonic()
    try:
        cluster.run("up", "-d")
        for node in NODES:
            poll(f"{node} to be healthy", lambda n=node: healthy(cluster, n))
        # The image's own health check (`kvserver health`) agrees.
        for node in NODES:
            poll(f"docker to report {node} healthy", lambda n=node: docker_health(cluster, n) == "healthy")
        print(f"cluster up in {time.monotonic() - started:.1f} s")

        acked = {}
        url0 = cluster.url("kv-0")
        for i in range(200):
            key = f"key-{i}"
            status, body = call("PUT", f"{url0}/kv/{key}", {"value": f"v{i}"})
            assert status == 200, (key, status, body)
            acked[key] = f"v{i}"

        cluster.run("kill", "kv-2")
        for node in ["kv-0", "kv-1"]:
            url = cluster.url(node)
            for key, value in acked.items():
                status, body = call_until(
                    f"{key} through {node}", lambda a: a[0] != 503, "GET", f"{url}/kv/{key}"
                )
                assert status == 200 and body["value"] == value, (node, key, status, body)
        print("node kv-2 killed: every key read back through kv-0 and kv-1")
        cluster.run("start", "kv-2")
        poll("kv-2 to be healthy again", lambda: healthy(cluster, "kv-2"))

        # Cut kv-0 off: alone, it is a minority for every key.
        kv0 = cluster.container("kv-0")
        subprocess.run(["docker", "network", "disconnect", cluster.network, kv0], check=True)
        try:
            out = cluster.kvserver("kv-0", "set", "cut-off", "x", "--node", "127.0.0.1:5100")
            assert out.returncode == 3, ("a write on the minority side", out.returncode, out.stderr)
            out = cluster.kvserver("kv-0", "get", "key-1", "--node", "127.0.0.1:5100")
            assert out.returncode == 3, ("a read on the minority side", out.returncode, out.stderr)
            url1 = cluster.url("kv-1")
            for i in range(50):
                key = f"during-{i}"
                call_until(
                    f"a write of {key} on the majority side",
                    lambda a: a[0] == 200,
                    "PUT",
                    f"{url1}/kv/{key}",
                    {"value": f"d{i}"},
                )
                acked[key] = f"d{i}"
            print("kv-0 cut off: it answers 503/504, the other two take writes")
        finally:
            subprocess.run(
                ["docker", "network", "connect", "--alias", "kv-0", cluster.network, kv0],
                check=True,
            )
        poll("kv-0 to be healthy after the partition", lambda: healthy(cluster, "kv-0"))
        for node in NODES:
            url = cluster.url(node)
            for key, value in acked.items():
                status, body = call("GET", f"{url}/kv/{key}")
                assert status == 200 and body["value"] == value, (node, key, status, body)
        print(f"partition healed: all {len(acked)} acknowledged keys read through every node")
        print(f"compose test passed in {time.monotonic() - started:.1f} s")
    finally:
        cluster.run("down", "-v", "--timeout", "2", check=False)


if __name__ == "__main__":
    main()
