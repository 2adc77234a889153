#!/usr/bin/env python3
"""A small loopback TCP proxy for fault tests (python3 stdlib only).

    tcp_proxy.py --listen 127.0.0.1:PORT --target 127.0.0.1:PGPORT [--pid-file F] [--log F]

Forwards every accepted connection to the target. Control by signal:

    SIGUSR1  drop: reset (RST) every open connection, both sides
    SIGUSR2  stall: toggle; while stalled nothing is read or forwarded in either direction and
             new connections wait in the listen backlog (a network partition that keeps the
             sockets open)
    SIGTERM  exit

or by a control file (--control F, polled every 50 ms, removed after reading): "drop",
"stall", "resume", "stall <seconds>".

Only loopback addresses are accepted, for listen and target alike.
"""
import argparse
import ipaddress
import os
import selectors
import signal
import socket
import struct
import sys
import time


def parse_addr(s):
    host, _, port = s.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"tcp_proxy: {host} is not a loopback address")
    return host, int(port)


class Proxy:
    def __init__(self, listen, target, control, log):
        self.target = target
        self.control = control
        self.log = log
        self.sel = selectors.DefaultSelector()
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(listen)
        self.ls.listen(64)
        self.ls.setblocking(False)
        self.peer = {}  # socket -> its partner
        self.pending = {}  # socket -> bytes not yet written to it
        self.stalled = False
        self.stall_until = None
        self.want_drop = False
        self.want_stall_toggle = False
        self.stop = False
        self.stats = {"accepted": 0, "dropped": 0, "stalls": 0}
        self.register_all()

    def say(self, msg):
        print(f"{time.strftime('%H:%M:%S')} tcp_proxy {msg} {self.stats}", file=self.log, flush=True)

    def register_all(self):
        self.sel.register(self.ls, selectors.EVENT_READ)
        for s in self.peer:
            self.sel.register(s, selectors.EVENT_READ)

    def unregister_all(self):
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fileobj)

    def accept(self):
        try:
            c, _ = self.ls.accept()
        except BlockingIOError:
            return
        try:
            t = socket.create_connection(self.target, timeout=5)
        except OSError as e:
            self.say(f"target unreachable: {e}")
            c.close()
            return
        for s in (c, t):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(s, selectors.EVENT_READ)
        self.peer[c], self.peer[t] = t, c
        self.stats["accepted"] += 1

    def close_pair(self, s, reset=False):
        for x in (s, self.peer.get(s)):
            if x is None or x not in self.peer:
                continue
            if reset:
                x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()
            del self.peer[x]
            self.pending.pop(x, None)

    def drop_all(self):
        n = len(self.peer) // 2
        for s in list(self.peer):
            if s in self.peer:
                self.close_pair(s, reset=True)
        self.stats["dropped"] += n
        self.say(f"dropped {n} connections")

    def set_stall(self, on, seconds=None):
        if on and not self.stalled:
            self.stalled = True
            self.stats["stalls"] += 1
            self.unregister_all()
            self.stall_until = time.monotonic() + seconds if seconds else None
            self.say("stalled" + (f" for {seconds}s" if seconds else ""))
        elif not on and self.stalled:
            self.stalled = False
            self.stall_until = None
            self.register_all()
            self.say("resumed")

    def forward(self, s):
        try:
            data = s.recv(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.close_pair(s)
            return
        other = self.peer[s]
        try:
            other.setblocking(True)
            other.settimeout(10)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self.close_pair(s)

    def poll_control(self):
        if not self.control or not os.path.exists(self.control):
            return
        try:
            with open(self.control) as f:
                cmds = f.read().split("\n")
            os.unlink(self.control)
        except OSError:
            return
        for cmd in cmds:
            w = cmd.split()
            if not w:
                continue
            if w[0] == "drop":
                self.drop_all()
            elif w[0] == "stall":
                self.set_stall(True, float(w[1]) if len(w) > 1 else None)
            elif w[0] == "resume":
                self.set_stall(False)

    def run(self):
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "want_drop", True))
        signal.signal(signal.SIGUSR2, lambda *_: setattr(self, "want_stall_toggle", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        self.say(f"listening on {self.ls.getsockname()} -> {self.target}")
        while not self.stop:
            if self.want_drop:
                self.want_drop = False
                self.drop_all()
            if self.want_stall_toggle:
                self.want_stall_toggle = False
                self.set_stall(not self.stalled)
            self.poll_control()
            if self.stalled:
                if self.stall_until and time.monotonic() >= self.stall_until:
                    self.set_stall(False)
                time.sleep(0.05)
                continue
            for key, _ in self.sel.select(timeout=0.05):
                s = key.fileobj
                if s is self.ls:
                    self.accept()
                elif s in self.peer:
                    self.forward(s)
        self.say("exiting")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    ap.add_argument("--target", required=True, help="127.0.0.1:PORT")
    ap.add_argument("--control", help="control file polled for commands")
    ap.add_argument("--pid-file")
    ap.add_argument("--log", help="log file (default stderr)")
    a = ap.parse_args()
    log = open(a.log, "a") if a.log else sys.stderr
    p = Proxy(parse_addr(a.listen), parse_addr(a.target), a.control, log)
    if a.pid_file:
        with open(a.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    p.run()


if __name__ == "__main__":
    main()
