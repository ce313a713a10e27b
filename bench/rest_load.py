"""Latency of `GET /ftnb/runs` under load: many run folders, many pollers, some runs training meanwhile.

    python bench/rest_load.py                                # 500 runs, 50 pollers, each polling every 0.5 s, 20 s
    python bench/rest_load.py --interval 0                   # back to back: the server saturated
    python bench/rest_load.py --runs 2000 --pollers 100 --json out.json

Creates the runs in a temporary folder (hand-written run folders: config.json, status.json, a 200-line
metrics.jsonl), starts `jupyter server` on it with a token, and keeps `--live` runs "training": their status.json is
rewritten and a metrics line appended 5 times a second, so summaries go stale as they would. Each poller holds one
keep-alive connection (as a browser tab does) and waits `--interval` seconds between requests; the lab extension
polls every 2 s while something runs. Prints p50/p90/p99/max latency in milliseconds and requests per second.
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TOKEN = "bench-token"


def make_runs(root, n, live):
    rng = random.Random(0)
    for i in range(n):
        group = f"project-{i % 10}" if i % 3 else ""  # a mix of depths: root/run and root/project/run
        run = Path(root) / group / "runs" / f"run-{i:04d}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"model": "tiny", "epochs": 3, "learning_rate": 2e-4}))
        steps = rng.randint(50, 400)
        state = "running" if i < live else rng.choice(["finished", "stopped", "failed"])
        (run / "status.json").write_text(json.dumps({"state": state, "step": steps, "total_steps": 400, "error": None,
                                                     "pid": os.getpid(), "host": socket.gethostname(),
                                                     "updated": time.time()}))
        with open(run / "metrics.jsonl", "w") as fh:
            fh.writelines(json.dumps({"step": s, "loss": 3 / s ** 0.3, "lr": 2e-4, "elapsed_s": s * 0.1}) + "\n"
                          for s in range(1, 201))
        for d in ("adapter", "checkpoints/step-100", "data"):  # the folders a real run has, never searched
            (run / d).mkdir(parents=True)
    for d in ("node_modules/pkg/lib", ".git/objects", "notebooks/data"):
        (Path(root) / d).mkdir(parents=True)


def keep_training(root, live, stop):
    """Rewrite status.json and append a metrics line of each live run, 5 times a second."""
    runs = [p.parent for p in Path(root).rglob("status.json") if json.loads(p.read_text())["state"] == "running"]
    step = 200
    while not stop.is_set():
        step += 1
        for r in runs:
            with open(r / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "loss": 3 / step ** 0.3, "elapsed_s": step * 0.1}) + "\n")
            tmp = r / ".status.tmp"
            tmp.write_text(json.dumps({"state": "running", "step": step, "total_steps": 4000, "pid": os.getpid(),
                                       "host": socket.gethostname(), "updated": time.time()}))
            os.replace(tmp, r / "status.json")
        stop.wait(0.2)


async def poller(port, until, interval, latencies, errors):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"GET /ftnb/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: token {TOKEN}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    await asyncio.sleep(random.random() * max(interval, 0.05))  # spread the start like independent tabs
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - t0)
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(head.split(b"\r\n")[0].decode())
        elif not body.startswith(b'{"root"'):
            errors.append("unexpected body")
        if interval:
            await asyncio.sleep(interval)
    writer.close()


async def load(port, pollers, seconds, interval):
    latencies, errors = [], []
    until = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(poller(port, until, interval, latencies, errors) for _ in range(pollers)))
    return latencies, errors, time.perf_counter() - t0


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def start_server(root, port, home):
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data"), "HF_HUB_OFFLINE": "1"}
    env.pop("FTNB_RUNS_DIR", None)
    cmd = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
           "--ServerApp.jpserver_extensions={'ftnb.server': True}", "--ServerApp.log_level=WARN"]
    with open(home / "server.log", "w") as log:  # the server keeps its own copy of the file descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    import http.client
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/ftnb/runs", headers={"Authorization": f"token {TOKEN}"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                return proc, len(json.loads(body)["runs"])
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the server did not start:\n{(home / 'server.log').read_text()[-3000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--pollers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds each poller waits between requests")
    ap.add_argument("--live", type=int, default=5, help="runs kept training (status.json rewritten 5 times a second)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ftnb-rest-load-"))
    root, home = tmp / "root", tmp / "home"
    root.mkdir()
    home.mkdir()
    stop = threading.Event()
    proc = None
    try:
        t0 = time.perf_counter()
        make_runs(root, args.runs, args.live)
        print(f"created {args.runs} runs in {time.perf_counter() - t0:.1f}s under {root}", flush=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc, listed = start_server(root, port, home)
        assert listed == args.runs, f"the server lists {listed} runs, expected {args.runs}"
        threading.Thread(target=keep_training, args=(root, args.live, stop), daemon=True).start()
        asyncio.run(load(port, args.pollers, 2, args.interval))  # warm-up
        latencies, errors, took = asyncio.run(load(port, args.pollers, args.seconds, args.interval))
    finally:
        stop.set()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    ms = sorted(x * 1000 for x in latencies)
    result = {"runs": args.runs, "pollers": args.pollers, "interval_s": args.interval, "live": args.live,
              "requests": len(ms), "errors": len(errors), "rps": round(len(ms) / took, 1),
              "p50_ms": round(pct(ms, 0.50), 2), "p90_ms": round(pct(ms, 0.90), 2), "p99_ms": round(pct(ms, 0.99), 2),
              "max_ms": round(ms[-1], 2), "cpus": os.cpu_count()}
    print(json.dumps(result))
    print(f"{result['requests']} requests in {took:.1f}s ({result['rps']}/s), {len(errors)} errors: "
          f"p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms")
    if errors:
        print("first errors:", errors[:5])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
