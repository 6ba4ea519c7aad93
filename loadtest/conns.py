#!/usr/bin/env python3
"""Hold N client connections to a proxy and report its RSS growth per connection.

    loadtest/conns.py --port P --pids "PID [PID...]" [--conns 3000] [--path /api/v1/users]

Phases, each measured after the RSS settles (two equal samples 0.5 s apart, at most 10 s):
  base     before any connection
  silent   N connections open, nothing sent
  idle     the same N connections after one keep-alive request each (answer read), idle
RSS is the sum of VmRSS over the given pids (a proxy's worker processes). Prints one
tab-separated line per phase: phase, connections, rss_kb, kb_per_conn (against base).
Connections go to 127.0.0.1 only; every one is closed at the end.
"""
import argparse, selectors, socket, sys, time


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def settled(pids):
    prev, deadline = rss_kb(pids), time.time() + 10
    while time.time() < deadline:
        time.sleep(0.5)
        cur = rss_kb(pids)
        if cur == prev:
            return cur
        prev = cur
    return prev


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--conns", type=int, default=3000)
    ap.add_argument("--path", default="/api/v1/users")
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    pids = [int(p) for p in a.pids.split()]

    base = settled(pids)
    print(f"base\t0\t{base}\t-")
    socks = []
    for _ in range(a.conns):
        s = socket.create_connection((a.host, a.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    time.sleep(1)
    silent = settled(pids)
    print(f"silent\t{a.conns}\t{silent}\t{(silent - base) / a.conns:.1f}")

    req = f"GET {a.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        s.sendall(req)
        sel.register(s, selectors.EVENT_READ)
        pending[s] = b""
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                sys.exit("a connection closed before its answer")
            buf = pending[s] + data
            head, sep, body = buf.partition(b"\r\n\r\n")
            if not sep:
                pending[s] = buf
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                sys.exit(f"unexpected answer: {head[:80]!r}")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if len(body) >= length:
                sel.unregister(s)
                del pending[s]
            else:
                pending[s] = buf
    if pending:
        sys.exit(f"{len(pending)} answers missing after 60 s")
    time.sleep(1)
    idle = settled(pids)
    print(f"idle\t{a.conns}\t{idle}\t{(idle - base) / a.conns:.1f}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
