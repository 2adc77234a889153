"""The soak's link to tools/soak/harness.sh: one bash process that holds the test harness's state
(cluster directory, Patroni pids, the applier's pid, the network namespace), one command at a time."""
import os
import shlex
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class HarnessError(RuntimeError):
    pass


class Harness:
    def __init__(self, log_path, env=None):
        self.log_path = log_path
        self._lock = threading.Lock()
        e = dict(os.environ)
        e.update(env or {})
        e["SOAK_LOG"] = log_path
        # Its own process group: a Ctrl-C of the soak reaches soak.py, which closes the harness
        # cleanly; the harness's EXIT trap then stops everything it started.
        self.proc = subprocess.Popen(["bash", os.path.join(HERE, "harness.sh")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=e, text=True, bufsize=1,
                                     start_new_session=True)

    def call(self, *args, check=False):
        """Runs one harness command; returns (status, replies as a dict, reply lines)."""
        line = " ".join(shlex.quote(str(a)) for a in args)
        with self._lock:
            if self.proc.poll() is not None:
                raise HarnessError("the harness exited (see %s)" % self.log_path)
            self._log("@@ %s" % line)
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            lines = []
            while True:
                out = self.proc.stdout.readline()
                if not out:
                    raise HarnessError("the harness exited during %r (see %s)" % (line, self.log_path))
                out = out.rstrip("\n")
                if out.startswith("@@rc "):
                    rc = int(out[5:])
                    break
                lines.append(out)
        replies = dict(ln.split("=", 1) for ln in lines if "=" in ln)   # one key=value a line
        if check and rc != 0:
            raise HarnessError("%s failed with status %d (see %s)" % (line, rc, self.log_path))
        return rc, replies, lines

    def _log(self, text):
        with open(self.log_path, "a") as f:
            f.write("%s %s\n" % (time.strftime("%H:%M:%S"), text))

    def close(self, timeout=180):
        """Ends the harness: its traps stop the servers, Patroni, etcd and the applier."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
