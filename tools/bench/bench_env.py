"""Where the bench's PostgreSQL comes from, its throwaway clusters and the applier process.

One PostgreSQL installation per run, picked by --pg-config, else PG_CONFIG, else ATX_PG_BINDIR,
else the pg_config on PATH: its bindir is exported as ATX_PG_BINDIR (tests/lib/cluster.sh starts
the servers from it) and put first on PATH, and psql/pgbench/pg_basebackup are called by full path,
so no tool of another major version sneaks in through Debian's wrappers.
"""
import os
import shutil
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER_SH = os.path.join(ROOT, "tests", "lib", "cluster.sh")


class PgInstall:
    def __init__(self, pg_config=None):
        env_bindir = os.environ.get("ATX_PG_BINDIR")
        pg_config = pg_config or os.environ.get("PG_CONFIG")
        if not pg_config:
            pg_config = os.path.join(env_bindir, "pg_config") if env_bindir else shutil.which("pg_config")
        if not pg_config or not os.access(pg_config, os.X_OK):
            raise SystemExit(f"bench: no usable pg_config ({pg_config!r}); pass --pg-config PATH")
        self.pg_config = os.path.abspath(pg_config)
        ask = lambda flag: subprocess.run([self.pg_config, flag], check=True, capture_output=True,
                                          text=True).stdout.strip()
        self.bindir, self.sharedir, self.pkglibdir = ask("--bindir"), ask("--sharedir"), ask("--pkglibdir")
        self.version = ask("--version")
        if env_bindir and os.path.realpath(env_bindir) != os.path.realpath(self.bindir):
            raise SystemExit(f"bench: ATX_PG_BINDIR={env_bindir} disagrees with {self.pg_config} "
                             f"(bindir {self.bindir}); unset one of them")
        if not os.path.exists(os.path.join(self.sharedir, "extension", "pg_atx.control")):
            raise SystemExit(f"bench: pg_atx is not installed in {self.sharedir} ({self.version}); "
                             f"build with -DPG_CONFIG={self.pg_config} and cmake --install first")
        self.env = dict(os.environ, ATX_PG_BINDIR=self.bindir, PG_CONFIG=self.pg_config,
                        PATH=self.bindir + os.pathsep + os.environ.get("PATH", ""))

    def tool(self, name):
        return os.path.join(self.bindir, name)

    def has_extension(self, name):
        return os.path.exists(os.path.join(self.sharedir, "extension", f"{name}.control"))


def sh(pg, script):
    """Runs bash with cluster.sh sourced (from the chosen installation); returns stdout."""
    return subprocess.run(["bash", "-c", f". '{CLUSTER_SH}'; {script}"], check=True, env=pg.env,
                          capture_output=True, text=True).stdout.strip()


class Cluster:
    def __init__(self, pg, conf, name="bench", init_from=None):
        self.pg = pg
        self.dir = sh(pg, f"atx_cluster_mkdir {name}")
        if init_from is None:
            sh(pg, f"atx_cluster_init '{self.dir}' " + " ".join(f"'{c}'" for c in conf))
        else:
            init_from(self)
        self.port = open(os.path.join(self.dir, "port")).read().strip()
        self.start()
        self.env = dict(pg.env, PGHOST=self.dir, PGPORT=self.port, PGUSER="postgres",
                        PGDATABASE="postgres")

    def start(self):
        sh(self.pg, f"atx_cluster_start '{self.dir}'")

    def restart(self):
        sh(self.pg, f"atx_cluster_stop '{self.dir}' fast")
        self.start()

    def conninfo(self):
        return f"host={self.dir} port={self.port} user=postgres"

    def psql(self, sql, db="postgres", env=None, timeout=None):
        out = subprocess.run([self.pg.tool("psql"), "-qAtX", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                             env=env or self.env, check=True, capture_output=True, text=True,
                             timeout=timeout)
        return out.stdout.strip()

    def stop(self, keep=False):
        sh(self.pg, f"atx_cluster_stop '{self.dir}' fast")
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class Applier:
    def __init__(self, binary, cluster, state_dir, args=(), dbname="postgres"):
        self.binary, self.cluster, self.state_dir = binary, cluster, state_dir
        self.args, self.dbname = list(args), dbname
        self.proc = None
        self.log = open(os.path.join(cluster.dir, "applier.log"), "a")

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--conninfo", self.cluster.conninfo(), "--dbname", self.dbname,
             "--state-dir", self.state_dir, "--log-level", "warn"] + self.args,
            stdout=self.log, stderr=self.log)
        return self

    def peak_rss_kb(self):
        return proc_status_kb(self.proc.pid, "VmHWM") if self.proc else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def proc_status_kb(pid, field):
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM ...); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def applier_help(binary):
    """The applier's --help text: which options (features) this build has."""
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def wait_streaming(cluster, db="postgres", timeout=60):
    """Waits until an applier streams the database's pg_atx slot and has caught up with the WAL."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cluster.psql("SELECT count(*) FROM pg_replication_slots s JOIN pg_database d ON d.datname = "
                        f"s.database WHERE s.plugin = 'pg_atx' AND s.active AND d.datname = '{db}'") == "1":
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("the applier did not start streaming")
    # And caught up: after a restart the walsender first decodes the WAL written meanwhile (other
    # steps' databases included), and a measurement started before that would time the catch-up.
    target = cluster.psql("SELECT pg_current_wal_lsn()")
    while time.time() < deadline + 120:
        if cluster.psql("SELECT count(*) FROM pg_replication_slots s JOIN pg_database d ON d.datname = "
                        f"s.database WHERE s.plugin = 'pg_atx' AND d.datname = '{db}' "
                        f"AND s.confirmed_flush_lsn >= '{target}'") == "1":
            return
        time.sleep(0.1)
    print(f"  (the applier of {db} had not caught up with {target} after the wait; going on)", flush=True)


def wait_slot(cluster, db="postgres", timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cluster.psql(f"SELECT count(*) FROM pg_replication_slots WHERE plugin = 'pg_atx' "
                        f"AND database = '{db}'") == "1":
            return
        time.sleep(0.1)
    raise RuntimeError("the applier did not create its slot")


def wait_count(cluster, table, n, timeout, db="postgres"):
    deadline = time.time() + timeout
    c = 0
    while time.time() < deadline:
        c = int(cluster.psql(f"SELECT count(*) FROM {table}", db=db))
        if c >= n:
            return c
        time.sleep(0.05)
    raise RuntimeError(f"{table}: only {c} of {n} rows after {timeout}s")


def drop_slot(cluster, slot, timeout=30):
    """Drops the slot once its walsender has let go of it; nothing to do if it is gone already."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = cluster.psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")
        if state == "":
            return
        if state == "f":
            cluster.psql(f"SELECT pg_drop_replication_slot('{slot}')")
            return
        time.sleep(0.1)
    raise RuntimeError(f"slot {slot} still active after {timeout}s")
