"""Throwaway clusters for the hostile-message fuzzer, and the applier that serves them.

One template is made per run (tests/lib/cluster.sh: initdb, pg_atx preloaded, wal_level logical;
the extension, the roles and objects of fz_setup.sql, the slot, the HMAC key moved out of the
data directory as docs/security.md says). Every cluster the run uses, the main one and each
shrinking trial, is a copy of that stopped template: a fresh start from the same state in a
fraction of a second, whatever the previous cluster was left with (a pinned slot, a crashed
backend, a leaked setting).
"""
import os
import shutil
import signal
import subprocess
import time

import psycopg2
import psycopg2.extensions

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLUSTER_SH = os.path.join(ROOT, "tests", "lib", "cluster.sh")

# The applier role of docs/setup.md (LOGIN REPLICATION, member of atx_applier).
APPLIER_ROLE = "fz_applier"


def sh(script, env=None):
    """bash with tests/lib/cluster.sh sourced (it picks the server from PG_CONFIG); stdout."""
    r = subprocess.run(["bash", "-c", f". '{CLUSTER_SH}'; {script}"], env=env or os.environ,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cluster.sh: {script}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def server_env():
    """PG_CONFIG / ATX_PG_BINDIR / ATX_PG_MAJOR as cluster.sh chooses them."""
    out = sh('echo "$PG_CONFIG"; echo "$ATX_PG_BINDIR"; echo "$ATX_PG_MAJOR"')
    pgc, bindir, major = (out.splitlines() + ["", "", ""])[:3]
    return {"pg_config": pgc, "bindir": bindir, "major": major}


def chown_server(path):
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "postgres:", path], check=True)


class Cluster:
    """A running copy of the template (or the template while it is set up)."""

    def __init__(self, cdir):
        self.dir = cdir
        self.port = open(os.path.join(cdir, "port")).read().strip()

    def dsn(self, user="postgres", app="fuzz_apply"):
        return f"host={self.dir} port={self.port} user={user} dbname=postgres application_name={app}"

    def connect(self, user="postgres", app="fuzz_apply", autocommit=True, timeout=10):
        c = psycopg2.connect(self.dsn(user, app), connect_timeout=timeout)
        c.autocommit = autocommit
        return c

    def sql(self, query, args=None, user="postgres"):
        """One statement on a short connection; rows (or None)."""
        c = self.connect(user)
        try:
            with c.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall() if cur.description else None
        finally:
            c.close()

    def start(self):
        sh(f"atx_cluster_start '{self.dir}'")

    def stop(self, mode="fast"):
        try:
            sh(f"atx_cluster_stop '{self.dir}' {mode}")
        except RuntimeError:
            pass

    def server_log(self):
        return os.path.join(self.dir, "server.log")

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.sql("SELECT 1")
                return True
            except psycopg2.Error:
                time.sleep(0.2)
        return False


class Template:
    """The stopped, set-up cluster every run and trial starts from."""

    def __init__(self, workdir, log):
        self.workdir = workdir
        self.log = log
        self.dir = os.path.join(workdir, "template")
        self.key = os.path.join(workdir, "keys", "pg_atx.key")
        self.copies = 0

    def build(self, setup_sql):
        t0 = time.time()
        os.makedirs(self.dir)
        conf = ["shared_preload_libraries = 'pg_atx'", "max_connections = 200",
                # a crashed backend restarts the server; it must come back (the default, said).
                "restart_after_crash = on", "log_min_messages = warning"]
        sh(f"atx_cluster_init '{self.dir}' " + " ".join(f"\"{c}\"" for c in conf))
        c = Cluster(self.dir)
        c.start()
        try:
            c.sql("CREATE EXTENSION pg_atx")
        finally:
            c.stop()
        # The key outside the data directory, as docs/security.md asks (the applier role has
        # REPLICATION and could take a base backup).
        kdir = os.path.dirname(self.key)
        os.makedirs(kdir, mode=0o700)
        shutil.move(os.path.join(self.dir, "data", "pg_atx.key"), self.key)
        chown_server(kdir)
        with open(os.path.join(self.dir, "data", "postgresql.conf"), "a") as f:
            f.write(f"atx.key_file = '{self.key}'\n")
        c.start()
        try:
            conn = c.connect()
            try:
                conn.autocommit = False
                with conn.cursor() as cur:
                    cur.execute(setup_sql)
                conn.commit()
                conn.autocommit = True
                with conn.cursor() as cur:
                    # A slot can only be made by a transaction that wrote nothing.
                    cur.execute("SELECT atx.ensure_slot()")
                    # A second reader of the messages, in the output plugin's text format (a
                    # genuine message must never make it raise: issue 21, invariant 2).
                    cur.execute("SELECT pg_create_logical_replication_slot('fz_text', 'pg_atx')")
                    cur.execute("CHECKPOINT")
            finally:
                conn.close()
        finally:
            c.stop()
        self.log(f"template cluster ready in {time.time() - t0:.1f} s ({self.dir})")

    def copy(self, name):
        """A started copy of the template in its own directory (own socket directory)."""
        self.copies += 1
        d = os.path.join(self.workdir, f"{name}")
        if os.path.exists(d):
            shutil.rmtree(d)
        shutil.copytree(self.dir, d, symlinks=True)
        for f in ("server.log", "applier.log", "applier.stderr"):
            try:
                os.unlink(os.path.join(d, f))
            except FileNotFoundError:
                pass
        with open(os.path.join(d, "data", "postgresql.conf"), "a") as f:
            f.write(f"unix_socket_directories = '{d}'\n")
        chown_server(d)
        c = Cluster(d)
        c.start()
        return c


class Applier:
    """atx-applier as the least-privilege role, on a free metrics port."""

    def __init__(self, binary, cluster, args):
        self.binary, self.cluster, self.args = binary, cluster, list(args)
        self.proc = None
        self.log_path = os.path.join(cluster.dir, "applier.log")
        # Anything the process writes outside its log (libpq's default notice printer): kept apart.
        self.stderr_path = os.path.join(cluster.dir, "applier.stderr")

    def start(self):
        errf = open(self.stderr_path, "a")
        conninfo = f"host={self.cluster.dir} port={self.cluster.port} user={APPLIER_ROLE}"
        self.proc = subprocess.Popen(
            [self.binary, "--conninfo", conninfo, "--dbname", "postgres",
             "--state-dir", os.path.join(self.cluster.dir, "state"), "--http-listen", "127.0.0.1:0",
             "--log-file", self.log_path, "--log-level", "info",
             "--pid-file", os.path.join(self.cluster.dir, "applier.pid")] + self.args,
            stdout=errf, stderr=errf, start_new_session=True)
        errf.close()

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_streaming(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.alive():
                return False
            try:
                r = self.cluster.sql("SELECT count(*) FROM pg_replication_slots "
                                     "WHERE slot_name = atx.slot_name() AND active")
                if r[0][0] == 1:
                    return True
            except psycopg2.Error:
                pass
            time.sleep(0.2)
        return False

    def stop(self, grace_s=15):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""


def proc_memory_kb(pid):
    """VmRSS, RssShmem of a process from /proc (kB); None when it is gone."""
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssShmem", "RssAnon", "RssFile"):
                    vals[k] = int(v.split()[0])
    except (OSError, ValueError):
        return None
    return vals
