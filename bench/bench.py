#!/usr/bin/env python3
"""`make bench`: bare NGINX vs the sessions module, one Markdown report.

Called by bench/run.sh (which builds nothing: `make bench` depends on `make build`, and
run.sh runs the criterion micro-benchmark first). Python 3 standard library only.

Scenarios: B0 bare NGINX (module not loaded, the baseline), B0c the same bare NGINX sent
the very Cookie header S-ret sends (same bytes: what NGINX itself pays for that header, so
S-* against B0c is the module's own cost), B1 module loaded but `sessions off`, U1
`userid on` with a returning uid cookie, S-new / S-ret / S-renew the module with its
shared-memory store (new session per request / returning cookie / every cookie renewed),
L0 bare NGINX driven by S-renew's Lua client (what that client costs by itself), R-new /
R-ret the Redis store (a local redis-server on wrk's core), R-ret-tls R-ret over TLS
(`rediss://` to the same kind of redis-server's --tls-port, certificates made with openssl),
D-ret / D-set session data (3 keys of ~40 B read into a header on every request / a
`sessions_set` on every request).

What it does, in order:
  1. starts one NGINX per scenario (same binary, 1 worker pinned to core 0, temp prefix,
     free loopback port) and checks that each scenario does what it claims;
  2. warms each one up with wrk (pinned to core 1);
  3. measures: every scenario ROUNDS times, interleaved in alternating order (A..Z, Z..A,
     A..Z, so a slow drift of the machine hits all scenarios alike), medians reported; the
     worker's CPU per request split into user and system time (/proc/<pid>/stat); a run
     disturbed by other load on the machine (see `disturbed`) is redone, within a small
     budget;
  4. fills a 10 MB zone to measure how many sessions fit;
  5. writes the report to stdout and bench/results/latest.md (criterion's numbers, from
     the run.sh step before, included).

Knobs (environment, for quick trial runs; `make bench` uses the defaults):
  BENCH_DURATION=8  BENCH_WARMUP=3  BENCH_CONNECTIONS=32  BENCH_ROUNDS=3  BENCH_FILL=150000
  BENCH_POOL_ONLY=1  only B0 and the Redis pipelining rows (R-*@32, R-*@256), their table
  BENCH_TLS_ONLY=1   only B0, R-ret and R-ret-tls (R-ret over TLS), their table
(3 rounds of 8 s: ~0.5-1.1M requests per run, ~6-7 min for all of `make bench` on 2 cores.)
"""

import argparse
import base64
import collections
import datetime
import gzip
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

import httpc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NGINX = os.path.join(ROOT, "build/sbin/nginx")
MODULE = os.path.join(ROOT, "build/modules/ngx_http_sessions_module.so")
REPORT_LUA = os.path.join(HERE, "wrk/report.lua")
RENEW_LUA = os.path.join(HERE, "wrk/renew.lua")

DURATION = int(os.environ.get("BENCH_DURATION", "8"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
FILL_REQUESTS = int(os.environ.get("BENCH_FILL", "150000"))

NGINX_CORE, CLIENT_CORE = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
NAME = "sid"
FILL_ZONE = "10m"
FILL_ZONE_BYTES = 10 * 1024 * 1024
# The renewal benchmark's own zone: room for one run's pre-created sessions and their
# successors (2 records per cookie) at up to RENEW_MAX_COOKIES.
RENEW_ZONE = "768m"
RENEW_MAX_COOKIES = 2_500_000
FORBIDDEN_LOG = ("[alert]", "[emerg]", "[crit]", "exited on signal", "panicked")


def wrk_params():
    return f"wrk -t1 -c{CONNECTIONS} -d{DURATION}s (warm-up {WARMUP}s)"


class BenchError(Exception):
    pass


def say(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# NGINX instances
# ---------------------------------------------------------------------------------------

CONF = """\
{load_module}
worker_processes 1;
worker_cpu_affinity 01;   # the one worker on core 0; wrk runs on core 1
error_log logs/error.log notice;
pid logs/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    default_type text/plain;
    access_log off;               # the same in every scenario (S-renew logs, see there)
    keepalive_requests 1000000;   # measure requests, not TCP handshakes
{http}
    server {{
        listen 127.0.0.1:{port};
        # a 3-byte static file everywhere: "return 200" would answer before the access
        # phase, where the session is evaluated
        root {html};
{server}
        location / {{
{location}
        }}
{extra_locations}
    }}
}}
"""

# Only for the checks before measuring; the measured location "/" has no extra header.
VERIFY_LOCATION = """\
        location /v/ {{
            alias {html}/;
            add_header X-S $session_status always;
        }}"""

SESSIONS_HTTP = f"""\
    sessions_secret {SECRET};
    sessions_name {NAME};"""

LONG_TIMEOUTS = """\
    sessions_idling_timeout 1h;
    sessions_rolling_timeout 1h;
    sessions_absolute_timeout 1d;"""


def indent(text, n):
    return "\n".join((" " * n + line) if line else line for line in text.splitlines())


class Nginx:
    """One NGINX (master + 1 worker) under a temp prefix."""

    def __init__(self, tmp, tag, http="", server="", location="", module=True, verify=True):
        self.tag = tag
        self.prefix = os.path.join(tmp, tag)
        self.html = os.path.join(tmp, "html")
        self.port = free_port()
        os.makedirs(os.path.join(self.prefix, "logs"), exist_ok=True)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(
                CONF.format(
                    load_module=f"load_module {MODULE};" if module else "# module not loaded",
                    http=http,
                    port=self.port,
                    html=self.html,
                    server=indent(server, 8),
                    location=indent(location, 12),
                    extra_locations=VERIFY_LOCATION.format(html=self.html) if verify else "",
                )
            )
        self.error_log = os.path.join(self.prefix, "logs/error.log")
        self.master = None
        self.worker = None

    def _nginx(self, *args):
        return subprocess.run(
            ["taskset", "-c", NGINX_CORE, NGINX, "-p", self.prefix + "/", "-c", self.conf, *args],
            capture_output=True, text=True, timeout=30,
        )

    def start(self):
        t = self._nginx("-t")
        if t.returncode != 0:
            raise BenchError(f"{self.tag}: nginx -t failed:\n{t.stderr}")
        p = self._nginx()
        if p.returncode != 0:
            raise BenchError(f"{self.tag}: nginx failed to start:\n{p.stderr}")
        pidfile = os.path.join(self.prefix, "logs/nginx.pid")
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                self.master = int(open(pidfile).read())
                self.worker = self._find_worker()
                if self.worker:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        else:
            raise BenchError(f"{self.tag}: nginx did not come up on port {self.port}")
        self.check_log()

    def _find_worker(self):
        """The master's only child (worker_processes 1)."""
        kids = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = open(f"/proc/{pid}/stat").read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.master:
                    kids.append(int(pid))
        return kids[0] if len(kids) == 1 else None

    def worker_ticks(self):
        """(utime, stime) of the worker, in clock ticks (1/CLK_TCK s)."""
        fields = open(f"/proc/{self.worker}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)

    def worker_runqueue_wait(self):
        """Seconds the worker sat runnable but not running (another task had its core)."""
        try:
            return int(open(f"/proc/{self.worker}/schedstat").read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self):
        if not self.master:
            return
        self._nginx("-s", "quit")
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{self.master}") and time.time() < deadline:
            time.sleep(0.05)
        if os.path.exists(f"/proc/{self.master}"):
            os.kill(self.master, 9)  # our own master, stuck: do not leave it behind
        self.master = self.worker = None

    def check_log(self):
        try:
            lines = open(self.error_log, errors="replace").read().splitlines()
        except FileNotFoundError:
            return
        bad = [l for l in lines if any(f in l for f in FORBIDDEN_LOG)]
        if bad:
            raise BenchError(f"{self.tag}: error.log {self.error_log} has:\n" + "\n".join(bad[:20]))


# ---------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------


def proc_stat_busy():
    """(busy, total) clock ticks of the whole machine, from /proc/stat."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


QUIET_BUDGET = [40.0]  # seconds that all runs together may wait for a quiet machine


def wait_quiet(limit=0.10):
    """Waits (bounded) until the rest of the machine uses < `limit` of its CPUs, so that a
    build or test running next to the benchmark does not land inside a measurement.
    Returns the seconds waited; the "other load" column shows what happened anyway."""
    waited = 0.0
    while True:
        b0 = proc_stat_busy()
        time.sleep(0.5)
        b1 = proc_stat_busy()
        if (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) < limit or QUIET_BUDGET[0] <= 0:
            return waited
        if waited == 0:
            say("machine busy (another build or test?): waiting for it to calm down")
        waited += 1.0
        QUIET_BUDGET[0] -= 1.0
        time.sleep(0.5)


RETRY_BUDGET_TOTAL = 3
RETRY_BUDGET = [RETRY_BUDGET_TOTAL]  # disturbed runs that may be redone, all scenarios together


def disturbed(r):
    """Something else had the worker's core, or the machine, for a noticeable part of it."""
    return r["worker_preempted"] > 0.05 or r["other_busy"] > 0.05


def run_wrk(ng, duration, headers=(), script=REPORT_LUA, script_args=(), connections=None):
    cmd = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections or CONNECTIONS}", f"-d{duration}s",
           "--timeout", "5s", "-s", script]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{ng.port}/")
    if script_args:
        cmd += ["--", *script_args]
    waited = wait_quiet() if duration >= DURATION else 0.0
    helper = getattr(ng, "helper", None)  # a redis-server the scenario depends on
    hticks0 = helper.ticks() if helper else 0
    ticks0, busy0, rq0 = ng.worker_ticks(), proc_stat_busy(), ng.worker_runqueue_wait()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    elapsed = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks1, busy1, rq1 = ng.worker_ticks(), proc_stat_busy(), ng.worker_runqueue_wait()
    helper_s = ((helper.ticks() if helper else 0) - hticks0) / CLK_TCK
    if p.returncode != 0:
        raise BenchError(f"{ng.tag}: wrk failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    m = re.search(r"^BENCH (.*)$", p.stdout, re.M)
    if not m:
        raise BenchError(f"{ng.tag}: no BENCH line from wrk:\n{p.stdout}\n{p.stderr}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    errors = {k: v for k, v in r.items() if k.startswith("err_") and v}
    if errors or r["requests"] == 0:
        raise BenchError(f"{ng.tag}: wrk reported errors {errors}:\n{p.stdout}")
    m = re.search(r"^RENEW sent=(\d+) wraps=(\d+)$", p.stdout, re.M)
    if m:
        r["renew_sent"], r["renew_wraps"] = int(m.group(1)), int(m.group(2))
    secs = r["duration_us"] / 1e6
    user_s = (ticks1[0] - ticks0[0]) / CLK_TCK
    sys_s = (ticks1[1] - ticks0[1]) / CLK_TCK
    worker_s = user_s + sys_s
    wrk_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    machine_busy_s = ((busy1[0] - busy0[0]) / CLK_TCK)
    ncpu = os.cpu_count() or 1
    r.update(
        rps=r["requests"] / secs,
        waited_s=waited,
        cpu_us=worker_s * 1e6 / r["requests"],
        user_us=user_s * 1e6 / r["requests"],
        sys_us=sys_s * 1e6 / r["requests"],
        worker_cpu_s=worker_s,
        worker_busy=worker_s / secs,  # wrk's own clock: its start-up (Lua init) is not in it
        worker_preempted=(rq1 - rq0) / secs,
        wrk_busy=wrk_s / elapsed,
        # whatever else ran on the machine meanwhile (other builds, tests, the VM host)
        other_busy=max(0.0, machine_busy_s - worker_s - wrk_s - helper_s) / (elapsed * ncpu),
        helper_cpu_us=helper_s * 1e6 / r["requests"],
    )
    ng.check_log()
    return r


# ---------------------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------------------


def expect(cond, what):
    if not cond:
        raise BenchError("check failed: " + what)


class Scenario:
    """A named NGINX configuration, its checks, and how wrk drives it."""

    def __init__(self, key, title, nginx_kwargs):
        self.key, self.title, self.kw = key, title, nginx_kwargs
        self.ng = None
        self.headers = ()
        self.runs = []
        self.retries = 0

    def setup(self, tmp):
        self.ng = Nginx(tmp, self.key, **self.kw)
        self.ng.start()
        self.verify()

    def verify(self):
        pass

    def warmup(self):
        run_wrk(self.ng, WARMUP, self.headers)

    def measure(self):
        self.runs.append(run_wrk(self.ng, DURATION, self.headers))

    def teardown(self):
        if self.ng:
            self.ng.stop()


class Bare(Scenario):
    def verify(self):
        r = httpc.get(self.ng.port)
        expect(r.status == 200 and r.body == b"ok\n", f"{self.key}: GET / -> 200 'ok': {r}")
        expect(r.header("set-cookie") is None, f"{self.key}: no Set-Cookie: {r}")
        if self.kw.get("verify", True):
            r = httpc.get(self.ng.port, "/v/")
            expect(r.header("x-s") is None, f"{self.key}: empty $session_status: {r}")


class BareCookie(Bare):
    """B0c: bare NGINX (module not loaded) sent exactly the Cookie header S-ret sends, so
    NGINX's own work on that header (reading and parsing a longer request) is in the
    baseline and S-* ÷ B0c is what the module alone costs. Set up after S-ret (whose
    checks obtain the cookie)."""

    setup_last = True

    def __init__(self, key, title, kw, source):
        super().__init__(key, title, kw)
        self.source = source

    def verify(self):
        expect(len(self.source.headers) == 1 and self.source.headers[0].startswith(f"Cookie: {NAME}="),
               f"{self.key}: {self.source.key} has its cookie: {self.source.headers}")
        self.headers = self.source.headers  # the same string: same bytes, same length
        cookie = self.headers[0].split(": ", 1)[1]
        r = httpc.get(self.ng.port, cookie=cookie)
        expect(r.status == 200 and r.body == b"ok\n" and r.header("set-cookie") is None,
               f"{self.key}: GET / with S-ret's cookie -> 200 'ok', no Set-Cookie: {r}")


class UserId(Scenario):
    def verify(self):
        r = httpc.get(self.ng.port)
        got = r.set_cookies("uid")
        expect(r.status == 200 and len(got) == 1, f"U1: first request gets a uid cookie: {r}")
        self.headers = (f"Cookie: uid={got[0]}",)
        r = httpc.get(self.ng.port, cookie=f"uid={got[0]}")
        expect(r.status == 200 and r.header("set-cookie") is None,
               f"U1: returning uid gets no Set-Cookie: {r}")


class SessNew(Scenario):
    def verify(self):
        r = httpc.get(self.ng.port, "/v/")
        expect(r.status == 200 and r.header("x-s") == "new", f"S-new: no cookie -> new: {r}")
        sc = [v for k, v in r.headers if k == "set-cookie"]
        expect(len(sc) == 1 and re.fullmatch(
            NAME + r"=[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}; Path=/; HttpOnly; SameSite=Lax", sc[0]),
            f"S-new: Set-Cookie format: {sc}")
        r = httpc.get(self.ng.port)
        expect(len(r.set_cookies(NAME)) == 1, f"S-new: the measured path sets a cookie: {r}")


class SessRet(Scenario):
    def verify(self):
        # Python sends no User-Agent, like wrk: the UA binding sees the same client.
        value = httpc.get(self.ng.port).set_cookies(NAME)[0]
        self.headers = (f"Cookie: {NAME}={value}",)
        r = httpc.get(self.ng.port, "/v/", cookie=f"{NAME}={value}")
        expect(r.header("x-s") == "valid" and r.header("set-cookie") is None,
               f"S-ret: cookie -> valid, no Set-Cookie: {r}")
        r = httpc.get(self.ng.port, cookie=f"{NAME}={value}")
        expect(r.status == 200 and r.header("set-cookie") is None,
               f"S-ret: measured path, no Set-Cookie: {r}")

    def measure(self):
        super().measure()
        # Still the same session after the run (nothing evicted or renewed it).
        r = httpc.get(self.ng.port, "/v/", cookie=self.headers[0].split(": ", 1)[1])
        expect(r.header("x-s") == "valid", f"S-ret: cookie still valid after the run: {r}")


# D-ret's session data: 3 keys of ~40 bytes, written once by /seed.
DATA_VALUES = {k: (k * 8 + "-0123456789abcdefghijklmnopqrstu")[:40] for k in "abc"}
DATA_SEED = "location = /seed {\n    rewrite ^ /index.html break;\n" + "".join(
    f"    sessions_set {k} {v};\n" for k, v in DATA_VALUES.items()) + "}"


class DataRet(SessRet):
    """D-ret: S-ret whose session holds 3 keys of ~40 bytes, all read into a response
    header (`$session_data_a$session_data_b$session_data_c`) on every request."""

    def verify(self):
        r = httpc.get(self.ng.port, "/seed")
        got = r.set_cookies(NAME)
        expect(r.status == 200 and len(got) == 1, f"D-ret: /seed starts a session: {r}")
        self.headers = (f"Cookie: {NAME}={got[0]}",)
        r = httpc.get(self.ng.port, cookie=f"{NAME}={got[0]}")
        want = "".join(DATA_VALUES.values())
        expect(r.status == 200 and r.header("x-d") == want and r.header("set-cookie") is None,
               f"D-ret: the measured path reads the 3 values, no Set-Cookie: {r}")

    def measure(self):
        Scenario.measure(self)
        r = httpc.get(self.ng.port, cookie=self.headers[0].split(": ", 1)[1])
        expect(r.header("x-d") == "".join(DATA_VALUES.values()),
               f"D-ret: the data is still there after the run: {r}")


class DataSet(SessRet):
    """D-set: S-ret with a `sessions_set` on every request, to a value that changes every
    request (`$connection_requests`), so each response writes the session's data."""

    def verify(self):
        super().verify()
        cookie = self.headers[0].split(": ", 1)[1]
        r = httpc.get(self.ng.port, "/n", cookie=cookie)
        expect(r.header("x-n") not in (None, ""), f"D-set: the previous request's value is read: {r}")

    def measure(self):
        Scenario.measure(self)
        r = httpc.get(self.ng.port, "/v/", cookie=self.headers[0].split(": ", 1)[1])
        expect(r.header("x-s") == "valid", f"D-set: cookie still valid after the run: {r}")


class SessRenew(Scenario):
    """Each request carries a different pre-created cookie older than the rolling timeout.

    Per run: a fresh NGINX (fresh zone), N cookie-less requests over one pipelined
    connection to create N sessions (this is also its warm-up), a 2 s wait past the 1 s
    rolling timeout, then wrk sends each cookie once (bench/wrk/renew.lua). N comes from
    the rates measured so far (+25 %), so the list should not wrap; the access log says how
    many requests really renewed (a distinct successor ID per cookie)."""

    def __init__(self, key, title, kw, rate_hint):
        super().__init__(key, title, kw)
        self.rate_hint = rate_hint
        self.tmp = None
        self.attempts = 0

    def setup(self, tmp):
        self.tmp = tmp  # NGINX starts per run

    def warmup(self):
        pass  # the pre-creation of each run warms it up

    def measure(self):
        n = min(RENEW_MAX_COOKIES, int(self.rate_hint() * DURATION * 1.25) + 20_000)
        self.attempts += 1  # a fresh prefix (and access log) for every attempt
        self.ng = Nginx(self.tmp, f"{self.key}-{self.attempts}", **self.kw)
        self.ng.start()
        try:
            t0 = time.time()
            # through /v/, which writes no access log: the log is for wrk's requests only
            values = httpc.create_sessions(self.ng.port, n + 1, NAME, path="/v/")
            created = time.time() - t0
            check = values.pop()  # one for the check, never sent by wrk
            cookie_file = os.path.join(self.ng.prefix, "cookies.txt")
            with open(cookie_file, "w") as f:
                f.write("\n".join(values) + "\n")
            time.sleep(2.1)  # past the 1 s rolling timeout (NGINX time has 1 s resolution)
            r = httpc.get(self.ng.port, "/v/", cookie=f"{NAME}={check}")
            expect(r.header("x-s") == "renewed" and len(r.set_cookies(NAME)) == 1,
                   f"S-renew: an old cookie is renewed: {r}")
            r2 = httpc.get(self.ng.port, "/v/", cookie=f"{NAME}={check}")
            expect(r2.header("x-s") == "renewed" and r2.set_cookies(NAME) == r.set_cookies(NAME),
                   f"S-renew: in the grace, the old cookie gets the same successor: {r2}")
            res = run_wrk(self.ng, DURATION, script=RENEW_LUA, script_args=(cookie_file, NAME))
        finally:
            self.ng.stop()  # also flushes the buffered access log
        self.ng.check_log()
        res["cookies"], res["create_s"] = n, created
        res.update(self.count_log())
        self.runs.append(res)
        os.unlink(cookie_file)

    def count_log(self):
        statuses = collections.Counter()
        successors = set()
        with open(os.path.join(self.ng.prefix, "logs/status.log")) as f:
            for line in f:
                status, _, idhash = line.rstrip("\n").partition(" ")
                statuses[status] += 1
                if status == "renewed":
                    successors.add(idhash)
        total = sum(statuses.values())
        fresh = len(successors)  # a second use of a cookie yields the same successor
        return {
            "log_lines": total,
            "statuses": dict(statuses),
            "renewed_fresh": fresh,
            "renewed_grace": statuses["renewed"] - fresh,
            "renewed_fraction": fresh / total if total else 0.0,
        }


class ClientRef(Scenario):
    """L0: bare NGINX driven by the S-renew Lua client (a different cookie-shaped value per
    request, never parsed by NGINX). wrk calls Lua for every request there, which costs
    client CPU and latency that are not NGINX's; this row measures that cost alone."""

    def __init__(self, key, title, kw, rate_hint):
        super().__init__(key, title, kw)
        self.rate_hint = rate_hint
        self.cookie_file = None
        self.lines = 0

    def write_cookies(self, n):
        if n <= self.lines:
            return
        raw = os.urandom(32 * n)
        enc = base64.urlsafe_b64encode
        with open(self.cookie_file, "wb") as f:
            for i in range(0, len(raw), 32):
                f.write(enc(raw[i:i + 16])[:22] + b"." + enc(raw[i + 16:i + 32])[:22] + b"\n")
        self.lines = n

    def setup(self, tmp):
        super().setup(tmp)
        self.cookie_file = os.path.join(self.ng.prefix, "cookies.txt")

    def run(self, duration):
        self.write_cookies(int(self.rate_hint() * duration * 1.1) + 20_000)
        return run_wrk(self.ng, duration, script=RENEW_LUA, script_args=(self.cookie_file, NAME))

    def warmup(self):
        self.run(WARMUP)

    def measure(self):
        self.runs.append(self.run(DURATION))


class RedisServer:
    """A redis-server for R-new / R-ret, on the client's core (wrk's), on a free port."""

    extra = []

    def __init__(self, tmp, name="redis"):
        self.port = free_port()
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen(
            ["taskset", "-c", CLIENT_CORE, "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir,
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise BenchError("redis-server did not answer PING")

    def ticks(self):
        f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class TlsRedisServer(RedisServer):
    """A redis-server with a TLS port (`self.tls_port`) besides its plain one (`self.port`,
    for INFO), its certificate signed by a CA made here with the openssl CLI."""

    def __init__(self, tmp):
        d = os.path.join(tmp, "tls")
        os.makedirs(d, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        with open(os.path.join(d, "server.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for cmd in (["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                     "-subj", "/CN=bench CA"],
                    ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
                    ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                     "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext"]):
            p = subprocess.run(["openssl", *cmd], cwd=d, capture_output=True, text=True)
            if p.returncode != 0:
                raise BenchError(f"openssl {' '.join(cmd[:2])} failed: {p.stderr}")
        self.ca = os.path.join(d, "ca.crt")
        self.tls_port = free_port()
        self.extra = ["--tls-port", str(self.tls_port), "--tls-cert-file", os.path.join(d, "server.crt"),
                      "--tls-key-file", os.path.join(d, "server.key"), "--tls-ca-cert-file", self.ca,
                      "--tls-auth-clients", "no"]
        super().__init__(tmp, "redis-tls")


class WithRedis:
    """Mixin: the scenario's NGINX talks to the bench's redis-server."""

    redis = None

    def setup(self, tmp):
        super().setup(tmp)
        self.ng.helper = self.redis


class RedisNew(WithRedis, SessNew):
    pass


class RedisRet(WithRedis, SessRet):
    pass


class RedisDataRet(WithRedis, DataRet):
    """RD-ret: D-ret on Redis (the data comes with the record, in the same GET)."""


class RedisDataSet(WithRedis, DataSet):
    """RD-set: D-set on Redis (each response waits for its compare-and-set script)."""


def make_scenarios(best_rate, bare_rate, redis=None):
    mod = dict(module=True, http=SESSIONS_HTTP + "\n" + LONG_TIMEOUTS + "\n    sessions_zone bench:10m;")
    renew_http = SESSIONS_HTTP + f"""
    sessions_idling_timeout 1h;
    sessions_rolling_timeout 1s;
    sessions_absolute_timeout 1d;
    sessions_zone renew:{RENEW_ZONE};
    log_format status '$session_status $session_id_hash';"""
    bare = dict(module=False, verify=False)
    s_ret = SessRet("S-ret", "sessions on, returning valid cookie", dict(mod, server="sessions on;"))
    return [
        Bare("B0", "bare NGINX, module not loaded", bare),
        BareCookie("B0c", "bare NGINX, module not loaded, sent S-ret's `Cookie` header", bare, s_ret),
        Bare("B1", "module loaded, `sessions off`",
             dict(module=True, http=SESSIONS_HTTP + "\n    sessions off;")),
        UserId("U1", "`userid on`, returning uid cookie",
               dict(module=False, verify=False, server="userid on;\nuserid_name uid;\nuserid_path /;")),
        SessNew("S-new", "sessions on, no cookie (new session each request)",
                dict(mod, server="sessions on;")),
        s_ret,
        SessRenew("S-renew", "sessions on, each request a different cookie past the rolling timeout (1 s)",
                  dict(module=True, http=renew_http, server="sessions on;",
                       location="access_log logs/status.log status buffer=256k;"),
                  best_rate),
        ClientRef("L0", "bare NGINX driven by the S-renew Lua client (client-cost reference)",
                  dict(module=False, verify=False), bare_rate),
    ] + data_scenarios(mod) + (redis_scenarios(redis) if redis else [])


def data_scenarios(mod):
    # Rows self-contained: the shared-memory store; the Redis ones are added with Redis's.
    constant = "".join(DATA_VALUES.values())
    return [
        # D-ret's reference: S-ret sending a header of the same length from a constant, so
        # that D-ret ÷ D-ref is what reading the data costs, not NGINX writing 120 more bytes.
        SessRet("D-ref", "sessions on, returning valid cookie, the same 120-byte header from a constant",
                dict(mod, server=f"sessions on;\nadd_header X-D {constant};")),
        DataRet("D-ret", "sessions on, returning cookie, 3 keys of ~40 B read into a header",
                dict(mod, server="sessions on;\n"
                     "add_header X-D $session_data_a$session_data_b$session_data_c;\n" + DATA_SEED)),
        DataSet("D-set", "sessions on, returning cookie, `sessions_set` on every request",
                dict(mod, server="sessions on;\nsessions_set n $connection_requests;\n"
                     "location = /n {\n    rewrite ^ /index.html break;\n"
                     "    add_header X-N $session_data_n;\n}")),
    ]


def redis_scenarios(redis):
    # As many pooled connections as wrk keeps requests in flight, so none is reopened.
    http = (SESSIONS_HTTP + "\n" + LONG_TIMEOUTS
            + f"\n    sessions_redis redis://127.0.0.1:{redis.port};"
            + f"\n    sessions_redis_keepalive {CONNECTIONS};")
    RedisNew.redis = RedisRet.redis = RedisDataRet.redis = RedisDataSet.redis = redis
    return [
        RedisNew("R-new", "sessions on, Redis, no cookie (new session each request)",
                 dict(module=True, http=http, server="sessions on;")),
        RedisRet("R-ret", "sessions on, Redis, returning valid cookie",
                 dict(module=True, http=http, server="sessions on;")),
        RedisDataRet("RD-ret", "sessions on, Redis, returning cookie, 3 keys of ~40 B read into a header",
                     dict(module=True, http=http, server="sessions on;\n"
                          "add_header X-D $session_data_a$session_data_b$session_data_c;\n" + DATA_SEED)),
        RedisDataSet("RD-set", "sessions on, Redis, returning cookie, `sessions_set` on every request",
                     dict(module=True, http=http, server="sessions on;\nsessions_set n $connection_requests;\n"
                          "location = /n {\n    rewrite ^ /index.html break;\n"
                          "    add_header X-N $session_data_n;\n}")),
    ]


# Redis memory per session (issue 10 item 7): `used_memory` delta / new session keys after
# REDIS_MEM_SESSIONS new sessions through NGINX (in a database of their own), without data
# and with D-ret's 3 keys of ~40 B.
REDIS_MEM_SESSIONS = int(os.environ.get("BENCH_REDIS_SESSIONS", "20000"))
REDIS_MEM_DB = 9


def redis_query(redis, *args):
    """One command (RESP) on a fresh connection to the bench's redis-server: its reply's
    text (bulk or integer)."""
    req = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(str(a))}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as c:
        c.sendall(req)
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n")
            if head[:1] == b":" or head[:1] == b"+":
                return head[1:].decode()
            if head[:1] == b"$" and len(rest) >= int(head[1:]) + 2:
                return rest[:int(head[1:])].decode()
    raise BenchError(f"redis-server did not answer {args[0]}")


def used_memory(redis):
    info = redis_query(redis, "INFO", "memory")
    return int(next(l for l in info.splitlines() if l.startswith("used_memory:")).split(":")[1])


# What measure_redis_memory found (B/session by label), for the report.
REDIS_MEMORY = {}


def measure_redis_memory(tmp, redis):
    out = {}
    for label, path in (("no data", "/v/"), ("3 keys of ~40 B", "/seed")):
        http = (SESSIONS_HTTP + "\n" + LONG_TIMEOUTS
                + f"\n    sessions_redis redis://127.0.0.1:{redis.port}/{REDIS_MEM_DB};")
        ng = Nginx(tmp, "rmem", module=True, http=http, server="sessions on;\n" + DATA_SEED)
        ng.start()
        try:
            httpc.get(ng.port, "/v/")  # the binding key, before the baseline
            keys0, mem0 = dbsize(redis), used_memory(redis)
            httpc.create_sessions(ng.port, REDIS_MEM_SESSIONS, NAME, path=path)
            keys, mem = dbsize(redis) - keys0, used_memory(redis) - mem0
            expect(keys == REDIS_MEM_SESSIONS, f"Redis memory: {keys} keys for {REDIS_MEM_SESSIONS} sessions")
            out[label] = mem / keys
        finally:
            ng.stop()
            flushdb(redis)
    return out


def dbsize(redis):
    return int(redis_query_db(redis, "DBSIZE"))


def flushdb(redis):
    redis_query_db(redis, "FLUSHDB")


def redis_query_db(redis, cmd):
    """`cmd` (no arguments) on database REDIS_MEM_DB."""
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as c:
        c.sendall(f"SELECT {REDIS_MEM_DB}\r\n{cmd}\r\n".encode())
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n")[1].lstrip(b":+").decode()


# ---------------------------------------------------------------------------------------
# Redis pipelining (issue 10): R-new / R-ret at 32 and 256 wrk connections with the
# default `sessions_redis_keepalive` (10), and Redis connections opened per request
# (`total_connections_received` delta / requests: 0 in steady state when pipelined).
# B0@256 is bare NGINX at 256 connections, the baseline of the 256 rows.
# ---------------------------------------------------------------------------------------

POOL_CLIENTS = (32, 256)


def redis_connections_received(redis):
    """`INFO stats` `total_connections_received` (this query's own connection included)."""
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as c:
        c.sendall(b"INFO stats\r\n")
        data = b""
        while b"total_connections_received:" not in data or not data.endswith(b"\r\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    m = re.search(rb"total_connections_received:(\d+)", data)
    if not m:
        raise BenchError("redis INFO stats has no total_connections_received")
    return int(m.group(1))


class AtClients:
    """Mixin: the scenario runs wrk with its own number of connections."""

    clients = None

    def warmup(self):
        run_wrk(self.ng, WARMUP, self.headers, connections=self.clients)

    def measure(self):
        self.runs.append(self.run_at(DURATION))

    def run_at(self, duration):
        return run_wrk(self.ng, duration, self.headers, connections=self.clients)


class PoolBare(AtClients, Bare):
    pass


class PoolRedis(AtClients):
    """Counts the Redis connections NGINX opens during each measured run."""

    def run_at(self, duration):
        # A short run first: the pool may have closed while other scenarios ran (the
        # keepalive timeout, 30 s), and reopening it is not the steady state measured.
        super().run_at(1)
        before = redis_connections_received(self.redis)
        r = super().run_at(duration)
        # minus the connection of the second INFO query itself
        opened = redis_connections_received(self.redis) - before - 1
        r["redis_conns"] = opened
        r["redis_conns_per_req"] = opened / r["requests"]
        return r


class PoolRedisNew(PoolRedis, RedisNew):
    pass


class PoolRedisRet(PoolRedis, RedisRet):
    pass


def pool_scenarios(redis):
    RedisNew.redis = RedisRet.redis = redis
    http = (SESSIONS_HTTP + "\n" + LONG_TIMEOUTS
            + f"\n    sessions_redis redis://127.0.0.1:{redis.port};")  # default keepalive
    out = []
    for n in POOL_CLIENTS:
        if n != CONNECTIONS:
            b = PoolBare(f"B0@{n}", f"bare NGINX, module not loaded, {n} connections",
                         dict(module=False, verify=False))
            b.clients = n
            out.append(b)
        for cls, kind, title in ((PoolRedisNew, "new", "no cookie (new session each request)"),
                                 (PoolRedisRet, "ret", "returning valid cookie")):
            s = cls(f"R-{kind}@{n}", f"sessions on, Redis, default keepalive, {title}, {n} connections",
                    dict(module=True, http=http, server="sessions on;"))
            s.clients = n
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------
# R-ret over TLS (issue 10): `rediss://` to redis-server's --tls-port, verification on
# against the bench's CA, the same pool size as R-ret; handshakes per request = Redis
# connections opened per request (each new connection is one handshake).
# ---------------------------------------------------------------------------------------


class TlsRedisRet(PoolRedis, RedisRet):
    pass


def tls_scenarios(tls_redis):
    TlsRedisRet.redis = tls_redis
    http = (SESSIONS_HTTP + "\n" + LONG_TIMEOUTS
            + f"\n    sessions_redis rediss://127.0.0.1:{tls_redis.tls_port};"
            + "\n    sessions_redis_ssl_verify on;"
            + f"\n    sessions_redis_ssl_trusted_certificate {tls_redis.ca};"
            + f"\n    sessions_redis_keepalive {CONNECTIONS};")
    return [TlsRedisRet("R-ret-tls", "sessions on, Redis over TLS (verified), returning valid cookie",
                        dict(module=True, http=http, server="sessions on;"))]


def tls_report(scenarios):
    """R-ret-tls next to R-ret: req/s ratios, worker CPU, redis-server CPU, handshakes per
    request."""
    by = {s.key: s for s in scenarios}
    tls, plain, b0 = by.get("R-ret-tls"), by.get("R-ret"), by.get("B0")
    if not (tls and tls.runs):
        return ""
    L = ["Redis over TLS: R-ret-tls is R-ret with `rediss://` to redis-server's TLS port "
         "(verification on, same pool size); handshakes per request = Redis "
         "`total_connections_received` delta / requests after a 1 s priming run (each new "
         "connection is one handshake; pooled connections stay TLS, so ~0). redis-server runs "
         "on wrk's core: its own TLS work (Redis µs/req) slows wrk down too, so the req/s ratio "
         "is the whole system's, the worker's CPU is NGINX's alone:", "",
         "| scenario | req/s | ×R-ret | ×B0 | p99 µs | worker CPU µs/req | user µs/req | Redis µs/req "
         "| handshakes | per request |",
         "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for s in (plain, tls):
        if not (s and s.runs):
            continue
        rps = med(s.runs, "rps")
        vs_plain = fmt_ratio(rps / med(plain.runs, "rps")) if plain and plain.runs else "–"
        vs_b0 = fmt_ratio(rps / med(b0.runs, "rps")) if b0 and b0.runs else "–"
        hs = (f"{sum(r['redis_conns'] for r in s.runs):,} | {med(s.runs, 'redis_conns_per_req'):.5f}"
              if "redis_conns" in s.runs[0] else "– | –")
        L.append(f"| **{s.key}** | {rps:,.0f} | {vs_plain} | {vs_b0} | {med(s.runs, 'p99_us'):,.0f} | "
                 f"{med(s.runs, 'cpu_us'):.2f} | {med(s.runs, 'user_us'):.2f} | "
                 f"{med(s.runs, 'helper_cpu_us'):.2f} | {hs} |")
    L.append("")
    return "\n".join(L) + "\n"


def pool_report(scenarios):
    """The pipelining table: req/s and its ratio to bare NGINX at the same concurrency,
    Redis connections opened per request."""
    by = {s.key: s for s in scenarios}
    rows = [s for s in scenarios if isinstance(s, PoolRedis) and s.clients is not None and s.runs]
    if not rows:
        return ""
    L = ["Redis pipelining: R-new / R-ret with the default `sessions_redis_keepalive` (10) at "
         f"{' and '.join(map(str, POOL_CLIENTS))} concurrent wrk connections; ×B0 is bare NGINX "
         "at the same number of connections; connections opened per request = Redis "
         "`total_connections_received` delta / requests, after a 1 s priming run (0 in steady state):", "",
         "| scenario | wrk connections | req/s | ×B0 | p99 µs | CPU µs/req | Redis connections opened | per request |",
         "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for s in rows:
        base = by.get("B0" if s.clients == CONNECTIONS else f"B0@{s.clients}")
        rps = med(s.runs, "rps")
        ratio = fmt_ratio(rps / med(base.runs, "rps")) if base and base.runs else "–"
        L.append(f"| **{s.key}** | {s.clients} | {rps:,.0f} | {ratio} | {med(s.runs, 'p99_us'):,.0f} | "
                 f"{med(s.runs, 'cpu_us'):.2f} | {sum(r['redis_conns'] for r in s.runs):,} | "
                 f"{med(s.runs, 'redis_conns_per_req'):.4f} |")
    L.append("")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------
# zone capacity: fill a 10 MB zone and find how many sessions survived
# ---------------------------------------------------------------------------------------


def measure_zone(tmp):
    """Sends FILL_REQUESTS cookie-less requests (more than fit) in order over one
    keep-alive connection, keeping each cookie. New sessions sit in the probation LRU,
    evicted oldest first, so the survivors are the newest K: binary search for the oldest
    survivor (probe cookie i: `valid` = alive). A probe of a dead cookie starts one new
    session, which evicts one more old one, so the true boundary at the end of the fill
    lies within `dead_probes` of the one found; both bounds are reported."""
    ng = Nginx(tmp, "fill", module=True,
               http=SESSIONS_HTTP + "\n" + LONG_TIMEOUTS + f"\n    sessions_zone fill:{FILL_ZONE};",
               server="sessions on;")
    ng.start()
    try:
        t0 = time.time()
        values = httpc.create_sessions(ng.port, FILL_REQUESTS, NAME)
        fill_s = time.time() - t0
        probes = dead = 0

        def alive(i):
            nonlocal probes, dead
            probes += 1
            st = httpc.get(ng.port, "/v/", cookie=f"{NAME}={values[i]}").header("x-s")
            expect(st in ("valid", "invalid"), f"fill: probe status {st!r}")
            dead += st != "valid"
            return st == "valid"

        lo, hi = 0, len(values) - 1
        expect(alive(hi), "fill: the newest session must be alive")
        expect(not alive(lo), f"fill: the oldest session survived: raise BENCH_FILL above {FILL_REQUESTS}")
        while hi - lo > 1:  # invariant: values[lo] dead, values[hi] alive; <= 18 probes
            mid = (lo + hi) // 2
            if alive(mid):
                hi = mid
            else:
                lo = mid
        ng.check_log()
    finally:
        ng.stop()
    ng.check_log()
    k_low = len(values) - hi
    k_high = k_low + dead
    return {
        "zone": FILL_ZONE, "zone_bytes": FILL_ZONE_BYTES, "requests": len(values),
        "fill_s": fill_s, "probes": probes, "dead_probes": dead,
        "k_low": k_low, "k_high": k_high,
        "bytes_low": FILL_ZONE_BYTES / k_high, "bytes_high": FILL_ZONE_BYTES / k_low,
    }


# ---------------------------------------------------------------------------------------
# criterion results (bench/run.sh ran `cargo bench` with CRITERION_HOME)
# ---------------------------------------------------------------------------------------

CRITERION_BENCHES = [
    ("cookie_collector", "cookie parse + verify (CookieCollector over a 6-cookie header)"),
    ("client_new", "Client::new (IP + 110-byte User-Agent)"),
    ("decide", "session::decide"),
    ("hot_path", "hot path = the three together"),
    ("store_key", "store_key (SHA-256 of the ID; on the real path too, not in the three)"),
]


def read_criterion(home):
    out = {}
    for name, _ in CRITERION_BENCHES:
        path = os.path.join(home or "", name, "new", "estimates.json")
        try:
            est = json.load(open(path))
        except (OSError, ValueError):
            continue
        e = est.get("slope") or est["mean"]  # the estimate criterion prints as "time"
        ci = e["confidence_interval"]
        out[name] = (e["point_estimate"], ci["lower_bound"], ci["upper_bound"])
    return out


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def fmt_ratio(x):
    return f"{x:.2f}"


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except OSError:
        return "?"


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def kernel_cpu_accounting():
    """(HZ, tick_sampled) from the running kernel's config where it is readable, else
    (None, None). With tick-based accounting the kernel's exact runtime of a task is split
    into user and system time in proportion to which mode the task was in at each timer
    tick: the split is a sample of HZ points per CPU second."""
    try:
        conf = gzip.open("/proc/config.gz", "rt").read()
    except OSError:
        return None, None
    m = re.search(r"^CONFIG_HZ=(\d+)$", conf, re.M)
    hz = int(m.group(1)) if m else None
    return hz, re.search(r"^CONFIG_TICK_CPU_ACCOUNTING=y$", conf, re.M) is not None


def split_sigma_us(r, hz):
    """1-σ sampling error (µs/req) of one run's user/system split under tick accounting:
    worker_cpu_s × HZ samples, a share p of them in user mode."""
    n = r["worker_cpu_s"] * hz
    if n <= 0 or r["cpu_us"] <= 0:
        return 0.0
    p = r["user_us"] / r["cpu_us"]
    return r["cpu_us"] * (p * (1 - p) / n) ** 0.5


def report(scenarios, zone, crit, elapsed_s):
    by = {s.key: s for s in scenarios}
    b0 = by["B0"].runs
    b0c = by["B0c"].runs
    keys = ("rps", "p50_us", "p99_us", "cpu_us", "user_us", "sys_us")
    B0 = {k: med(b0, k) for k in keys}
    B0C = {k: med(b0c, k) for k in keys}
    L = []
    L.append("# ngx_http_sessions_module benchmark")
    L.append("")
    L.append(f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit `{git_rev()}`, "
             f"NGINX 1.28.3, {os.cpu_count()} × {cpu_model()}, Linux {platform.release()}. "
             f"`{wrk_params()}`, 1 NGINX worker on core 0, wrk on core 1, "
             + (f"{ROUNDS} interleaved runs per scenario, medians" if ROUNDS > 1 else "1 run per scenario")
             + "; a 3-byte static file. "
             f"Ratios and differences are to B0 (bare NGINX) and B0c (bare NGINX sent S-ret's "
             f"`Cookie` header, byte for byte) of the same `make bench`: S-* against B0c is the "
             f"module's own cost, B0c against B0 what NGINX pays for reading that header.")
    L.append("")
    L.append("| scenario | req/s | ×B0 | ×B0c | p50 µs | ×B0 | p99 µs | ×B0 "
             "| zone B/session | sessions in 10 MB |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    zone_cells = ("–", "–")
    if zone:
        zone_cells = (f"{zone['bytes_low']:.1f}–{zone['bytes_high']:.1f}",
                      f"{zone['k_low']:,}–{zone['k_high']:,}")
    for s in scenarios:
        if not s.runs:
            continue
        rps, p50, p99 = (med(s.runs, k) for k in ("rps", "p50_us", "p99_us"))
        zc = zone_cells if s.key.startswith("S-") else ("–", "–")
        name = f"**{s.key}** {s.title}"
        if isinstance(s, SessRenew):
            name += f"; **{statistics.median(r['renewed_fraction'] for r in s.runs):.1%} renewed**"
        L.append(f"| {name} | {rps:,.0f} | {fmt_ratio(rps / B0['rps'])} | "
                 f"{fmt_ratio(rps / B0C['rps'])} | {p50:,.0f} | "
                 f"{fmt_ratio(p50 / B0['p50_us'])} | {p99:,.0f} | {fmt_ratio(p99 / B0['p99_us'])} | "
                 f"{zc[0]} | {zc[1]} |")
    for key in ("R-new", "R-ret"):
        if key not in by or not by[key].runs:
            L.append(f"| **{key}** | skipped: no redis-server (apt-get install redis-server) "
                     "| | | | | | | | |")
    L.append("")

    # CPU of the NGINX worker per request, user and system apart
    L.append("NGINX worker CPU per request (µs), user and system time apart; Δ = difference "
             "of the medians:")
    L.append("")
    L.append("| scenario | CPU µs/req | ×B0 | ×B0c | user µs/req | Δ vs B0 | Δ vs B0c "
             "| sys µs/req | Δ vs B0 | Δ vs B0c |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in scenarios:
        if not s.runs:
            continue
        cpu, user, sys_ = (med(s.runs, k) for k in ("cpu_us", "user_us", "sys_us"))
        L.append(f"| **{s.key}** | {cpu:.2f} | {fmt_ratio(cpu / B0['cpu_us'])} | "
                 f"{fmt_ratio(cpu / B0C['cpu_us'])} | {user:.2f} | {user - B0['user_us']:+.2f} | "
                 f"{user - B0C['user_us']:+.2f} | {sys_:.2f} | {sys_ - B0['sys_us']:+.2f} | "
                 f"{sys_ - B0C['sys_us']:+.2f} |")
    L.append("")
    hz, sampled = kernel_cpu_accounting()
    reqs = [r["requests"] for s in scenarios for r in s.runs]
    tick_us = 1e6 / CLK_TCK / min(reqs)
    note = (f"User and system time: `utime` and `stime` of the worker's /proc/<pid>/stat before "
            f"and after each run, in ticks of 1/{CLK_TCK} s; at {min(reqs):,}–{max(reqs):,} "
            f"requests per run one tick is ≤ {tick_us:.3f} µs/req"
            + (", so the tick granularity does not matter. " if tick_us <= 0.02 else
               ": too few requests for µs-level differences (a trial run?). "))
    if sampled and hz:
        sr = by["S-ret"].runs
        sig = statistics.median(split_sigma_us(r, hz) for r in sr) if sr else 0.0
        samples = statistics.median(r["worker_cpu_s"] * hz for r in sr) if sr else 0
        note += (f"Their sum is the scheduler's exact runtime, but this kernel (tick-based CPU "
                 f"accounting, HZ={hz}) splits it into user and system by sampling the worker's "
                 f"mode at each timer tick, about {samples:,.0f} samples per S-ret run: one run's "
                 f"split is uncertain by about ±{sig:.2f} µs/req (1 σ, S-ret)"
                 + (f", the median of {ROUNDS} runs a little less" if ROUNDS > 1 else "")
                 + "; the runs themselves are in Details.")
    elif sampled is None:
        note += ("Their sum is the scheduler's runtime; how the kernel splits it into user and "
                 "system (sampled at the timer tick unless it has precise accounting) could not "
                 "be read from /proc/config.gz.")
    else:
        note += ("This kernel does not use tick-based CPU accounting: its user/system split is "
                 "not sampled at the timer tick.")
    L.append(note)
    L.append("")
    L.append(f"B0c − B0 (NGINX reading S-ret's `Cookie` header): user "
             f"{B0C['user_us'] - B0['user_us']:+.2f}, sys {B0C['sys_us'] - B0['sys_us']:+.2f} µs/req, "
             f"req/s ×{B0C['rps'] / B0['rps']:.2f}.")
    L.append("")
    for key in ("R-new", "R-ret"):
        if key in by and by[key].runs:
            rr = by[key].runs
            L.append(f"{key}: redis-server (on wrk's core) spent {med(rr, 'helper_cpu_us'):.2f} µs "
                     f"of CPU per request; latency added by Redis on loopback vs S-"
                     f"{key[2:]}: p50 {med(rr, 'p50_us') - med(by['S-' + key[2:]].runs, 'p50_us'):+,.0f} µs, "
                     f"p99 {med(rr, 'p99_us') - med(by['S-' + key[2:]].runs, 'p99_us'):+,.0f} µs "
                     f"(at {CONNECTIONS} connections in flight).")
    L.append("")

    for key, runs, base in (("B0", b0, B0["rps"]), ("B0c", b0c, B0C["rps"])):
        spread = (max(r["rps"] for r in runs) - min(r["rps"] for r in runs)) / base
        if spread > 0.08:
            L.append(f"⚠ {key}'s runs differ by {spread:.0%} (see Details): the machine's speed "
                     "drifted during the benchmark, beyond what the load columns show (e.g. the "
                     "VM host). The alternating order cancels a steady drift in the medians, but "
                     "read the ratios as ± a few per cent.")
            L.append("")
    if by["S-renew"].runs and by["L0"].runs:
        sr, l0 = by["S-renew"].runs, by["L0"].runs
        L.append(f"S-renew and L0 use the same Lua-scripted client; S-renew ÷ L0: req/s "
                 f"{med(sr, 'rps') / med(l0, 'rps'):.2f}, p50 {med(sr, 'p50_us') / med(l0, 'p50_us'):.2f}, "
                 f"p99 {med(sr, 'p99_us') / med(l0, 'p99_us'):.2f}, worker CPU/req "
                 f"{med(sr, 'cpu_us') / med(l0, 'cpu_us'):.2f}.")
        L.append("")

    # hot path
    L.append("Pure hot path, `cargo bench -p sessions-core --bench hot_path` "
             "(criterion, `--warm-up-time 1 --measurement-time 3`), ns per operation "
             "[95 % confidence interval]:")
    L.append("")
    L.append("| operation | ns/op |")
    L.append("|---|--:|")
    for name, title in CRITERION_BENCHES:
        if name in crit:
            est, lo, hi = crit[name]
            L.append(f"| {title} | {est:,.1f} [{lo:,.1f}–{hi:,.1f}] |")
        else:
            L.append(f"| {title} | not run |")
    L.append("")

    L.append(pool_report(scenarios))
    L.append(tls_report(scenarios))

    # targets
    L.append("Targets (reported, not asserted):")
    L.append("")

    def target(label, ok, value):
        L.append(f"- {'met' if ok else '**MISSED**'}: {label} — {value}")

    if by["S-ret"].runs:
        sr = by["S-ret"].runs
        x = med(sr, "rps") / B0C["rps"]
        target("S-ret ≥ 0.95 × B0c req/s", x >= 0.95, f"{x:.2f}")
        d = med(sr, "user_us") - B0C["user_us"]
        target("S-ret ≤ +0.4 µs user CPU per request over B0c", d <= 0.4, f"{d:+.2f} µs")
    if by["S-new"].runs:
        d = med(by["S-new"].runs, "user_us") - B0["user_us"]
        target("S-new ≤ +0.8 µs user CPU per request over B0", d <= 0.8, f"{d:+.2f} µs")
    if "D-ret" in by and by["D-ret"].runs and by["S-ret"].runs:
        x = med(by["D-ret"].runs, "rps") / med(by["S-ret"].runs, "rps")
        target("D-ret ≥ 0.95 × S-ret req/s (issue 9)", x >= 0.95, f"{x:.2f}")
    if "D-ret" in by and by["D-ret"].runs and "D-ref" in by and by["D-ref"].runs:
        x = med(by["D-ret"].runs, "rps") / med(by["D-ref"].runs, "rps")
        target("D-ret ≥ 0.95 × D-ref req/s (the same header from a constant)", x >= 0.95, f"{x:.2f}")
    if "hot_path" in crit:
        target("hot path (criterion) ≤ 300 ns", crit["hot_path"][0] <= 300,
               f"{crit['hot_path'][0]:.0f} ns")
    else:
        L.append("- not run: hot path (criterion) ≤ 300 ns")
    if "R-ret" in by and by["R-ret"].runs:
        x = med(by["R-ret"].runs, "rps") / B0["rps"]
        target("R-ret ≥ 0.50 × B0 req/s", x >= 0.50, f"{x:.2f}")
    if "R-ret-tls" in by and by["R-ret-tls"].runs and "R-ret" in by and by["R-ret"].runs:
        x = med(by["R-ret-tls"].runs, "rps") / med(by["R-ret"].runs, "rps")
        target("R-ret over TLS ≥ 0.9 × R-ret req/s", x >= 0.9, f"{x:.2f}")
    if "RD-ret" in by and by["RD-ret"].runs and by["R-ret"].runs:
        x = med(by["RD-ret"].runs, "rps") / med(by["R-ret"].runs, "rps")
        target("RD-ret ≥ 0.90 × R-ret req/s (issue 9: Redis with data within 10 %)", x >= 0.90, f"{x:.2f}")
    if "no data" in REDIS_MEMORY:
        v = REDIS_MEMORY["no data"]
        target("≤ 150 B of Redis memory per session without data (issue 10)", v <= 150, f"{v:.1f} B")
    if zone:
        target("≤ 128 bytes of shared memory per session", zone["bytes_high"] <= 128,
               f"{zone['bytes_low']:.1f}–{zone['bytes_high']:.1f} B (measured)")
    L.append("")

    # details
    L.append("<details><summary>Details: every run, load, method</summary>")
    L.append("")
    L.append("| scenario | run | requests | req/s | p50 µs | p99 µs | CPU µs/req | user µs/req "
             "| sys µs/req | worker busy | worker preempted | wrk busy | other load |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in scenarios:
        for i, r in enumerate(s.runs, 1):
            mark = " ⚠" if disturbed(r) else ""
            L.append(f"| {s.key}{mark} | {i} | {r['requests']:,} | {r['rps']:,.0f} | {r['p50_us']} | "
                     f"{r['p99_us']} | {r['cpu_us']:.2f} | {r['user_us']:.2f} | {r['sys_us']:.2f} | "
                     f"{r['worker_busy']:.0%} | {r['worker_preempted']:.0%} | "
                     f"{r['wrk_busy']:.0%} | "
                     f"{r['other_busy']:.0%} |")
    L.append("")
    L.append("\"worker busy\": CPU time of the NGINX worker / wall time (below ~90 % NGINX was not "
             "the only bottleneck); \"worker preempted\": time the worker was runnable but another "
             "task had core 0 (/proc/<pid>/schedstat); \"other load\": CPU used by anything but "
             "the worker and wrk, per cent of all cores (kernel network softirqs count here too). "
             "Above 5 % (⚠) a run was disturbed by something else on the machine; such runs "
             f"are redone (at most {RETRY_BUDGET_TOTAL} per `make bench`; redone this time: "
             + (", ".join(f"{s.key} ×{s.retries}" for s in scenarios if s.retries) or "none")
             + ").")
    L.append("")
    renew = by["S-renew"]
    for i, r in enumerate(renew.runs, 1):
        L.append(f"- S-renew run {i}: {r['cookies']:,} sessions pre-created in "
                 f"{r['create_s']:.1f} s; wrk sent {r.get('renew_sent', 0):,} "
                 f"(list wrapped {r.get('renew_wraps', 0)}×); access log: {r['log_lines']:,} "
                 f"requests, {r['renewed_fresh']:,} fresh renewals "
                 f"({r['renewed_fraction']:.1%}), {r['renewed_grace']:,} answered from the "
                 f"grace (cookie reused), statuses {r['statuses']}. "
                 "S-renew alone writes a buffered access log (that is how renewals are counted).")
    if zone:
        L.append(f"- Zone capacity: `sessions_zone fill:{zone['zone']}` ({zone['zone_bytes']:,} B) "
                 f"filled with {zone['requests']:,} cookie-less requests in {zone['fill_s']:.1f} s; "
                 f"{zone['probes']} probes ({zone['dead_probes']} of dead cookies, each starting one "
                 f"more session) put the survivors at {zone['k_low']:,}–{zone['k_high']:,}; "
                 f"bytes per session = zone size / survivors (all of the zone's overhead included).")
    if REDIS_MEMORY:
        L.append(f"- Redis memory per session: `used_memory` delta / new keys after "
                 f"{REDIS_MEM_SESSIONS:,} new sessions through NGINX: "
                 + ", ".join(f"{v:.1f} B ({k})" for k, v in REDIS_MEMORY.items())
                 + " (the hash tables' buckets, 16–32 B per key depending on their fill, included).")
    L.append("- B0, B0c, U1 and L0 have no module loaded; B1, S-* and R-* load it. `keepalive_requests 1000000` and "
             "`access_log off` everywhere; S-new runs with a full 10 MB zone after a second or so "
             "(each new session evicts the oldest never-returned one).")
    L.append(f"- Total `make bench` time: {elapsed_s / 60:.1f} min.")
    L.append("")
    L.append("</details>")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tmp", required=True, help="scratch directory (removed by run.sh)")
    ap.add_argument("--criterion", help="CRITERION_HOME of the criterion run")
    ap.add_argument("--out", default=os.path.join(HERE, "results/latest.md"))
    ap.add_argument("--started", type=float, default=time.time(), help="epoch start of make bench")
    args = ap.parse_args()

    for f in (NGINX, MODULE):
        if not os.path.isfile(f):
            raise BenchError(f"{f} is missing: run `make build` (make bench does)")
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found (Debian: apt-get install wrk util-linux)")
    if (os.cpu_count() or 1) < 2:
        say("warning: fewer than 2 cores; NGINX and wrk share one")

    os.makedirs(os.path.join(args.tmp, "html"), exist_ok=True)
    # NGINX workers run as "nobody" when started as root: the docroot must be readable
    for d in (args.tmp, os.path.join(args.tmp, "html")):
        os.chmod(d, 0o755)
    with open(os.path.join(args.tmp, "html/index.html"), "wb") as f:
        f.write(b"ok\n")

    scenarios = []

    def best_rate():
        # How many cookies S-renew needs: its own rate once known, before that S-new's
        # (a renewal does all a new session does, and more).
        for key in ("S-renew", "S-new"):
            rates = [r["rps"] for s in scenarios if s.key == key for r in s.runs]
            if rates:
                return max(rates)
        return 100_000

    def bare_rate():
        rates = [r["rps"] for s in scenarios if s.key in ("B0", "L0") for r in s.runs]
        return max(rates) if rates else 160_000

    redis = None
    if shutil.which("redis-server"):
        redis = RedisServer(args.tmp)
    else:
        say("redis-server not found: R-new / R-ret skipped")
    tls_redis = None
    if redis:
        try:
            tls_redis = TlsRedisServer(args.tmp)
        except (BenchError, OSError) as e:
            say(f"no redis-server with TLS ({e}): R-ret-tls skipped")
    pool_only = os.environ.get("BENCH_POOL_ONLY") == "1"
    tls_only = os.environ.get("BENCH_TLS_ONLY") == "1"
    data_only = os.environ.get("BENCH_DATA_ONLY") == "1"
    if data_only:
        # A quick look at the data rows (B0, S-ret and D-ref for their ratios), no report file.
        all_rows = {s.key: s for s in make_scenarios(best_rate, bare_rate)}
        scenarios.extend(all_rows[k] for k in ("B0", "S-ret", "D-ref", "D-ret", "D-set"))
    elif tls_only:
        # A quick look at the TLS row alone (B0 and R-ret for its ratios), no report file.
        if not tls_redis:
            raise BenchError("BENCH_TLS_ONLY needs redis-server with TLS")
        scenarios.append(Bare("B0", "bare NGINX, module not loaded", dict(module=False, verify=False)))
        scenarios.extend(redis_scenarios(redis)[1:] + tls_scenarios(tls_redis))
    elif pool_only:
        # A quick look at the pipelining rows alone (B0 for their ratio), no report file.
        if not redis:
            raise BenchError("BENCH_POOL_ONLY needs redis-server")
        scenarios.append(Bare("B0", "bare NGINX, module not loaded", dict(module=False, verify=False)))
        scenarios.extend(pool_scenarios(redis))
    else:
        scenarios.extend(make_scenarios(best_rate, bare_rate, redis) + (pool_scenarios(redis) if redis else [])
                         + (tls_scenarios(tls_redis) if tls_redis else []))
    zone = None
    try:
        # B0c after S-ret, whose checks obtain the cookie B0c is sent (sort is stable)
        for s in sorted(scenarios, key=lambda s: getattr(s, "setup_last", False)):
            say(f"{s.key}: start and check")
            s.setup(args.tmp)
        say(f"warm-up, {WARMUP} s each")
        for s in scenarios:
            s.warmup()
        for rnd in range(ROUNDS):
            order = scenarios if rnd % 2 == 0 else scenarios[::-1]  # A..Z, Z..A, A..Z, ...
            for s in order:
                for attempt in range(3):  # bounded: a disturbed run is redone while budget lasts
                    s.measure()
                    r = s.runs[-1]
                    if attempt == 2 or not disturbed(r) or RETRY_BUDGET[0] <= 0:
                        break
                    RETRY_BUDGET[0] -= 1
                    say(f"round {rnd + 1} {s.key}: disturbed by other load "
                        f"(worker preempted {r['worker_preempted']:.0%}, other {r['other_busy']:.0%}): "
                        "once more")
                    s.runs.pop()
                    s.retries += 1
                extra = f", {r['renewed_fraction']:.1%} renewed" if "renewed_fraction" in r else ""
                say(f"round {rnd + 1} {s.key}: {r['rps']:,.0f} req/s, p99 {r['p99_us']} µs, "
                    f"{r['cpu_us']:.2f} µs CPU/req (user {r['user_us']:.2f}, sys {r['sys_us']:.2f}), "
                    f"worker {r['worker_busy']:.0%}, "
                    f"other load {r['other_busy']:.0%}{extra}")
        for s in scenarios:
            s.teardown()
        if data_only:
            return
        if pool_only or tls_only:
            print()
            print(pool_report(scenarios) if pool_only else tls_report(scenarios))
            return
        say(f"zone capacity: filling {FILL_ZONE} with {FILL_REQUESTS:,} new sessions")
        zone = measure_zone(args.tmp)
        say(f"zone: {zone['k_low']:,}–{zone['k_high']:,} sessions, "
            f"{zone['bytes_low']:.1f}–{zone['bytes_high']:.1f} B/session")
        if redis:
            say(f"Redis memory: {REDIS_MEM_SESSIONS:,} new sessions through NGINX, twice")
            REDIS_MEMORY.update(measure_redis_memory(args.tmp, redis))
            say("Redis: " + ", ".join(f"{v:.1f} B/session ({k})" for k, v in REDIS_MEMORY.items()))
    finally:
        for s in scenarios:
            s.teardown()
        if redis:
            redis.stop()
        if tls_redis:
            tls_redis.stop()

    table = report(scenarios, zone, read_criterion(args.criterion), time.time() - args.started)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "w") as f:
        f.write(table)
    os.replace(tmp_out, args.out)
    with open(os.path.join(args.tmp, "runs.json"), "w") as f:
        json.dump({s.key: s.runs for s in scenarios} | {"zone": zone}, f, indent=1)
    print()
    print(table)
    say(f"written to {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"\nbench FAILED: {e}", file=sys.stderr)
        sys.exit(1)
