//! Shared harness for the integration tests: a throw-away NGINX instance per test (temp
//! prefix, free loopback port, `worker_processes 2`, master + workers), `nginx -t` runs, a
//! raw HTTP/1.1 client over `TcpStream` (optionally bound to another 127.0.0.x source
//! address), `Set-Cookie` parsing, and a `redis-server` fixture.
//!
//! Every `Nginx` checks its error log when it is dropped: no `[alert]`, `[emerg]`, `[crit]`,
//! `exited on signal`, `panicked`, `Sanitizer`.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cookie name used by most tests (configured with `sessions_name`).
pub const SID: &str = "SID";
/// A configured secret, long enough (>= 32 bytes) not to trigger the short-secret warning.
pub const SECRET: &str = "integration-test-secret-0123456789-abcdefghijklmnop";
/// User-Agent sent by default.
pub const UA: &str = "sessions-test/1.0";
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// Substrings that must never appear in an error log or in nginx's stderr.
pub const FORBIDDEN_LOG: &[&str] =
    &["[alert]", "[emerg]", "[crit]", "exited on signal", "panicked", "Sanitizer"];

// ---------------------------------------------------------------------------------------
// paths
// ---------------------------------------------------------------------------------------

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn nginx_bin() -> PathBuf {
    let p = root().join("build/sbin/nginx");
    assert!(
        p.is_file(),
        "NGINX binary {} is missing: run `make build` first (make test does it)",
        p.display()
    );
    p
}

pub fn module_so() -> PathBuf {
    let p = root().join("build/modules/ngx_http_sessions_module.so");
    assert!(
        p.is_file(),
        "module {} is missing: run `make build` first (make test does it)",
        p.display()
    );
    p
}

/// A unique temporary directory, removed on drop unless the thread is panicking (then it
/// is kept for post-mortem and its path printed).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir()
            .join(format!("ngx-sessions-{tag}-{}-{n}-{nanos}", std::process::id()));
        for d in ["", "logs", "conf", "html", "temp"] {
            fs::create_dir_all(path.join(d)).unwrap();
        }
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed: kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A free loopback port, never the same twice in this test process (with `reuseport`, two
/// nginx instances could otherwise share a port).
pub fn free_port() -> u16 {
    static USED: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if USED.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no free port found");
}

// ---------------------------------------------------------------------------------------
// configuration templates
// ---------------------------------------------------------------------------------------

/// Whole nginx.conf around an `http {}` body. Placeholders (also usable in `http_body`):
/// `%%PREFIX%%`, `%%PORT%%`, `%%MODULE%%`.
pub fn main_conf(http_body: &str, workers: usize) -> String {
    format!(
        r#"load_module %%MODULE%%;
worker_processes {workers};
daemon off;
master_process on;
error_log %%PREFIX%%/logs/error.log info;
pid %%PREFIX%%/logs/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path %%PREFIX%%/temp/client_body;
    proxy_temp_path %%PREFIX%%/temp/proxy;
    fastcgi_temp_path %%PREFIX%%/temp/fastcgi;
    uwsgi_temp_path %%PREFIX%%/temp/uwsgi;
    scgi_temp_path %%PREFIX%%/temp/scgi;
{http_body}
}}
"#
    )
}

/// `sessions_secret SECRET; sessions_name SID;` plus `extra` (http-level directives).
pub fn default_http(extra: &str) -> String {
    format!("    sessions_secret {SECRET};\n    sessions_name {SID};\n    {extra}\n")
}

/// The standard test site: an http body with `http_directives`, one server on %%PORT%%
/// (reuseport, so fresh connections spread over both workers) serving static files from
/// %%PREFIX%%/html, the session variables in response headers, and locations for internal
/// redirects, error_page, subrequests (SSI), `return` and `sessions off`.
pub fn site(http_directives: &str, server_directives: &str) -> String {
    format!(
        r#"
    types {{ text/html html; text/plain txt; }}
    default_type text/plain;
    keepalive_requests 100000;
    {http_directives}
    server {{
        listen 127.0.0.1:%%PORT%% reuseport;
        server_name localhost;
        root %%PREFIX%%/html;
        add_header X-Status $session_status always;
        add_header X-Id $session_id always;
        add_header X-Hash $session_id_hash always;
        add_header X-Pid $pid always;
        {server_directives}
        location / {{ sessions on; }}
        location /off/ {{ sessions off; }}
        location = /ret {{ sessions on; return 200 "ret\n"; }}
        location /tf/ {{ sessions on; try_files /nope /index.html; }}
        location /named/ {{ sessions on; try_files /nope @named; }}
        location @named {{ sessions on; rewrite ^ /index.html break; }}
        location /ep/ {{ sessions on; error_page 404 /err.html; }}
        location /ssi/ {{ sessions on; ssi on; }}
        location /inc/ {{ sessions on; ssi on; }}
        location /early/ {{
            sessions on;
            set $early "[$session_status|$session_id]";
            add_header X-Early $early always;
            add_header X-Status $session_status always;
            add_header X-Id $session_id always;
        }}
    }}
"#
    )
}

/// Files served by [`site`].
pub fn write_html(prefix: &Path) {
    let html = prefix.join("html");
    for d in ["off", "ssi", "inc", "tf", "named", "ep", "early"] {
        fs::create_dir_all(html.join(d)).unwrap();
    }
    fs::write(html.join("index.html"), "ok\n").unwrap();
    fs::write(html.join("err.html"), "err\n").unwrap();
    fs::write(html.join("off/index.html"), "off\n").unwrap();
    fs::write(html.join("early/index.html"), "early\n").unwrap();
    fs::write(
        html.join("ssi/index.html"),
        "main=<!--# echo var=\"session_status\" -->:<!--# echo var=\"session_id\" -->|\
         <!--# include virtual=\"/inc/x.html\" -->|end\n",
    )
    .unwrap();
    fs::write(
        html.join("inc/x.html"),
        "sub=<!--# echo var=\"session_status\" -->:<!--# echo var=\"session_id\" -->",
    )
    .unwrap();
}

fn subst(tmpl: &str, prefix: &Path, port: u16) -> String {
    tmpl.replace("%%PREFIX%%", prefix.to_str().unwrap())
        .replace("%%PORT%%", &port.to_string())
        .replace("%%MODULE%%", module_so().to_str().unwrap())
}

/// 1-based number of the first line of `text` that contains `marker`.
pub fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker:?} not in config"))
        + 1
}

// ---------------------------------------------------------------------------------------
// nginx -t
// ---------------------------------------------------------------------------------------

pub struct ConfTest {
    pub ok: bool,
    pub stderr: String,
    /// The config file as written (placeholders substituted).
    pub conf_path: PathBuf,
    pub conf_text: String,
    pub dir: TempDir,
}

impl ConfTest {
    /// Asserts failure with `[emerg]` and `in <conf>:<line>`; with `line` = None any line.
    pub fn assert_emerg(&self, line: Option<usize>) {
        let conf = self.conf_path.display().to_string();
        assert!(
            !self.ok,
            "nginx -t accepted a bad config:\n{}\n--- stderr:\n{}",
            self.conf_text, self.stderr
        );
        assert!(self.stderr.contains("[emerg]"), "no [emerg] in:\n{}", self.stderr);
        match line {
            Some(n) => assert!(
                self.stderr.contains(&format!("in {conf}:{n}")),
                "expected `in {conf}:{n}` in stderr:\n{}\n--- config:\n{}",
                self.stderr,
                numbered(&self.conf_text)
            ),
            None => {
                let needle = format!("in {conf}:");
                let pos = self.stderr.find(&needle).unwrap_or_else(|| {
                    panic!("expected `in {conf}:<line>` in stderr:\n{}", self.stderr)
                });
                let rest = &self.stderr[pos + needle.len()..];
                assert!(
                    rest.starts_with(|c: char| c.is_ascii_digit()),
                    "no line number after {needle} in:\n{}",
                    self.stderr
                );
            }
        }
        for bad in ["[alert]", "[crit]", "panicked", "exited on signal"] {
            assert!(!self.stderr.contains(bad), "{bad} in nginx -t output:\n{}", self.stderr);
        }
    }

    pub fn assert_ok(&self) {
        assert!(
            self.ok,
            "nginx -t rejected a good config:\n{}\n--- stderr:\n{}",
            numbered(&self.conf_text),
            self.stderr
        );
        for bad in FORBIDDEN_LOG {
            assert!(!self.stderr.contains(bad), "{bad} in nginx -t output:\n{}", self.stderr);
        }
    }
}

pub fn numbered(text: &str) -> String {
    text.lines().enumerate().map(|(i, l)| format!("{:3} {l}\n", i + 1)).collect()
}

/// `nginx -t` on a whole config template (see [`main_conf`] for placeholders).
pub fn nginx_t_template(tmpl: &str) -> ConfTest {
    let dir = TempDir::new("t");
    write_html(&dir.path);
    let port = free_port();
    let text = subst(tmpl, &dir.path, port);
    let conf_path = dir.path.join("conf/nginx.conf");
    fs::write(&conf_path, &text).unwrap();
    let (ok, stderr) = nginx_t_file(&dir.path, &conf_path);
    ConfTest { ok, stderr, conf_path, conf_text: text, dir }
}

/// `nginx -t` on an http body inside [`main_conf`].
pub fn nginx_t_http(http_body: &str) -> ConfTest {
    nginx_t_template(&main_conf(http_body, 2))
}

/// `nginx -t -p prefix -c conf` → (exit status ok, stderr).
pub fn nginx_t_file(prefix: &Path, conf: &Path) -> (bool, String) {
    let out = Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run nginx -t");
    let mut s = String::from_utf8_lossy(&out.stderr).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.success(), s)
}

// ---------------------------------------------------------------------------------------
// a running nginx
// ---------------------------------------------------------------------------------------

pub struct Nginx {
    pub port: u16,
    pub conf: PathBuf,
    pub workers: usize,
    child: Option<Child>,
    stopped_ok: bool,
    /// Log lines containing one of these are exempt from the forbidden-line check.
    allowed: Vec<String>,
    // last: dropped after the process is gone
    pub prefix: TempDir,
}

enum SpawnError {
    Retry(String),
    Fatal(String),
}

impl Nginx {
    /// The standard test site with the default secret and name plus `extra` http directives.
    pub fn site(extra_http: &str) -> Nginx {
        Nginx::start(&site(&default_http(extra_http), ""))
    }

    /// Starts nginx (2 workers) with `http_body` inside [`main_conf`].
    pub fn start(http_body: &str) -> Nginx {
        Nginx::start_template(&main_conf(http_body, 2), 2)
    }

    /// Starts nginx with a whole config template; waits until the port accepts and
    /// `workers` worker processes exist. Retries with another port if it was taken.
    pub fn start_template(tmpl: &str, workers: usize) -> Nginx {
        let mut last = String::new();
        for _ in 0..5 {
            let prefix = TempDir::new("nginx");
            write_html(&prefix.path);
            let port = free_port();
            let conf = prefix.path.join("conf/nginx.conf");
            fs::write(&conf, subst(tmpl, &prefix.path, port)).unwrap();
            match Nginx::spawn(prefix, conf, port, workers, &[]) {
                Ok(n) => return n,
                Err(SpawnError::Retry(m)) => last = m,
                Err(SpawnError::Fatal(m)) => panic!("{m}"),
            }
        }
        panic!("nginx did not start after 5 attempts: {last}");
    }

    /// Starts nginx on an existing prefix and config file (port must be in the config).
    pub fn start_file(
        prefix: TempDir,
        conf: PathBuf,
        port: u16,
        workers: usize,
        extra_args: &[&str],
    ) -> Nginx {
        match Nginx::spawn(prefix, conf, port, workers, extra_args) {
            Ok(n) => n,
            Err(SpawnError::Retry(m)) | Err(SpawnError::Fatal(m)) => panic!("{m}"),
        }
    }

    fn spawn(
        prefix: TempDir,
        conf: PathBuf,
        port: u16,
        workers: usize,
        extra_args: &[&str],
    ) -> Result<Nginx, SpawnError> {
        let bin = nginx_bin();
        module_so();
        let stdout = fs::File::create(prefix.path.join("logs/stdout.log")).unwrap();
        let stderr = fs::File::create(prefix.path.join("logs/stderr.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(&prefix.path)
            .arg("-c")
            .arg(&conf)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        let mut ng = Nginx {
            port,
            conf,
            workers,
            child: Some(child),
            stopped_ok: false,
            allowed: Vec::new(),
            prefix,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = ng.child.as_mut().unwrap().try_wait().unwrap() {
                ng.child = None;
                let logs = ng.all_logs();
                let msg = format!(
                    "nginx exited at start ({status}); config:\n{}\n--- logs:\n{logs}",
                    numbered(&fs::read_to_string(&ng.conf).unwrap_or_default())
                );
                ng.stopped_ok = true; // nothing to check in Drop
                return Err(if logs.contains("Address already in use") {
                    SpawnError::Retry(msg)
                } else {
                    SpawnError::Fatal(msg)
                });
            }
            let up = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok();
            if up && ng.worker_pids().len() >= workers {
                return Ok(ng);
            }
            if Instant::now() > deadline {
                ng.kill_hard();
                ng.stopped_ok = true;
                return Err(SpawnError::Fatal(format!(
                    "nginx did not come up on port {port} within {START_TIMEOUT:?}; logs:\n{}",
                    ng.all_logs()
                )));
            }
            thread::sleep(POLL);
        }
    }

    pub fn master_pid(&self) -> u32 {
        self.child.as_ref().expect("nginx not running").id()
    }

    /// Pids of the master's children (the workers; no cache manager in these configs).
    pub fn worker_pids(&self) -> BTreeSet<u32> {
        let master = match &self.child {
            Some(c) => c.id(),
            None => return BTreeSet::new(),
        };
        children_of(master)
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.master_pid() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Rewrites the config (same placeholders as [`main_conf`]); use before `reload()`.
    pub fn rewrite_conf(&self, tmpl: &str) {
        fs::write(&self.conf, subst(tmpl, &self.prefix.path, self.port)).unwrap();
    }

    /// SIGHUP, then waits until all old workers are gone and `workers` new ones run.
    pub fn reload(&self) {
        let old = self.worker_pids();
        assert!(!old.is_empty(), "no workers before reload");
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.worker_pids();
            if now.len() >= self.workers && now.is_disjoint(&old) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "reload did not replace workers {old:?} (now {now:?}); error.log:\n{}",
                    self.error_log()
                );
            }
            thread::sleep(POLL);
        }
    }

    pub fn error_log(&self) -> String {
        read_lossy(&self.prefix.path.join("logs/error.log"))
    }

    pub fn error_log_lines(&self) -> usize {
        self.error_log().lines().count()
    }

    fn all_logs(&self) -> String {
        format!(
            "--- error.log:\n{}\n--- stderr:\n{}",
            self.error_log(),
            read_lossy(&self.prefix.path.join("logs/stderr.log"))
        )
    }

    fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // orphaned workers notice the master is gone; kill them too
            for w in children_of(c.id()) {
                unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
            }
        }
    }

    /// Graceful stop (SIGQUIT, bounded wait, SIGKILL fallback); returns true if graceful.
    fn shutdown(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let pid = child.id();
        let workers = children_of(pid);
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGQUIT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut graceful = false;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => {
                    graceful = true;
                    break;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                _ => break,
            }
        }
        if !graceful {
            let _ = child.kill();
            let _ = child.wait();
            for w in workers {
                unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
            }
        }
        graceful
    }

    /// Stops nginx and checks the logs (panics on forbidden lines or a hung shutdown).
    pub fn stop(&mut self) {
        let graceful = self.shutdown();
        self.stopped_ok = true;
        assert!(graceful, "nginx did not exit within {STOP_TIMEOUT:?} of SIGQUIT");
        self.check_logs();
    }

    /// Asserts that error.log and stderr have no forbidden lines.
    pub fn check_logs(&self) {
        let mut bad = Vec::new();
        for (name, text) in [
            ("error.log", self.error_log()),
            ("stderr", read_lossy(&self.prefix.path.join("logs/stderr.log"))),
        ] {
            for line in text.lines() {
                if FORBIDDEN_LOG.iter().any(|f| line.contains(f))
                    && !self.allowed.iter().any(|a| line.contains(a.as_str()))
                {
                    bad.push(format!("{name}: {line}"));
                }
            }
        }
        assert!(bad.is_empty(), "forbidden lines in nginx logs:\n{}", bad.join("\n"));
    }

    /// Exempts log lines containing `s` from the teardown check (for tests that kill a
    /// worker on purpose).
    pub fn allow_log(&mut self, s: &str) {
        self.allowed.push(s.to_string());
    }

    /// Lines of error.log after the first `skip` lines.
    pub fn error_log_since(&self, skip: usize) -> Vec<String> {
        self.error_log().lines().skip(skip).map(str::to_string).collect()
    }

    pub fn get(&self, path: &str) -> Response {
        Req::get(path).send(self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.stopped_ok {
            return;
        }
        let graceful = self.shutdown();
        if thread::panicking() {
            eprintln!("--- nginx logs of the failed test:\n{}", self.all_logs());
            return;
        }
        assert!(graceful, "nginx did not exit within {STOP_TIMEOUT:?} of SIGQUIT");
        self.check_logs();
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Processes whose parent is `ppid` (scans /proc).
pub fn children_of(ppid: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else { continue };
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().unwrap_or("");
        if state == "Z" {
            continue;
        }
        if f.next().and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.insert(pid);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub src: Option<Ipv4Addr>,
    pub ua: Option<String>,
    pub host: String,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            src: None,
            ua: Some(UA.into()),
            host: "localhost".into(),
        }
    }

    pub fn head(path: &str) -> Req {
        Req { method: "HEAD".into(), ..Req::get(path) }
    }

    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Adds a `Cookie:` header line with exactly this text.
    pub fn cookie(self, v: &str) -> Req {
        self.header("Cookie", v)
    }

    /// Adds `Cookie: SID=<value>`.
    pub fn sid(self, value: &str) -> Req {
        self.cookie(&format!("{SID}={value}"))
    }

    pub fn host(mut self, host: &str) -> Req {
        self.host = host.into();
        self
    }

    pub fn ua(mut self, ua: &str) -> Req {
        self.ua = Some(ua.into());
        self
    }

    pub fn no_ua(mut self) -> Req {
        self.ua = None;
        self
    }

    /// Source address of the client socket, e.g. "127.0.0.2".
    pub fn from(mut self, ip: &str) -> Req {
        self.src = Some(ip.parse().expect("bad source address"));
        self
    }

    pub fn to_bytes(&self, keepalive: bool) -> Vec<u8> {
        let mut s = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", self.method, self.path, self.host);
        if !keepalive {
            s.push_str("Connection: close\r\n");
        }
        if let Some(ua) = &self.ua {
            s.push_str(&format!("User-Agent: {ua}\r\n"));
        }
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    /// One request on a fresh connection (`Connection: close`).
    pub fn send(&self, port: u16) -> Response {
        self.try_send(port).unwrap_or_else(|e| panic!("{} {}: {e}", self.method, self.path))
    }

    pub fn try_send(&self, port: u16) -> io::Result<Response> {
        let mut s = connect(port, self.src)?;
        s.write_all(&self.to_bytes(false))?;
        let mut r = BufReader::new(s);
        read_response(&mut r, self.method == "HEAD")
    }
}

/// Connects to 127.0.0.1:port, optionally from `src` (any 127.0.0.0/8 address).
pub fn connect(port: u16, src: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let dst = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let s = match src {
        None => TcpStream::connect_timeout(&dst, IO_TIMEOUT)?,
        Some(ip) => {
            use socket2::{Domain, Socket, Type};
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            sock.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
            sock.connect_timeout(&dst.into(), IO_TIMEOUT)?;
            sock.into()
        }
    };
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn raw(port: u16, bytes: &[u8]) -> Response {
    let mut s = connect(port, None).unwrap();
    s.write_all(bytes).unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, false).unwrap_or_else(|e| panic!("raw request failed: {e}"))
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `$session_status` (X-Status), "" when absent.
    pub fn st(&self) -> &str {
        self.header("X-Status").unwrap_or("")
    }

    /// `$session_id` (X-Id), "" when absent.
    pub fn id(&self) -> &str {
        self.header("X-Id").unwrap_or("")
    }

    /// `$session_id_hash` (X-Hash), "" when absent.
    pub fn hash(&self) -> &str {
        self.header("X-Hash").unwrap_or("")
    }

    pub fn pid(&self) -> &str {
        self.header("X-Pid").unwrap_or("")
    }

    /// All Set-Cookie headers for cookie `name`.
    pub fn set_cookies(&self, name: &str) -> Vec<SetCookie> {
        self.headers_all("Set-Cookie")
            .into_iter()
            .map(SetCookie::parse)
            .filter(|c| c.name == name)
            .collect()
    }

    /// The one Set-Cookie for `name` (panics unless there is exactly one).
    pub fn one_cookie(&self, name: &str) -> SetCookie {
        let v = self.set_cookies(name);
        assert_eq!(v.len(), 1, "expected exactly one Set-Cookie for {name}: {self}");
        v.into_iter().next().unwrap()
    }

    /// The `SID` cookie value (exactly one Set-Cookie required).
    pub fn sid(&self) -> String {
        self.one_cookie(SID).value
    }

    pub fn no_cookie(&self, name: &str) -> bool {
        self.set_cookies(name).is_empty()
    }

    /// Sorted header names, without those that legitimately differ between responses.
    pub fn header_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.headers.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
        v.sort();
        v
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "HTTP {}", self.status)?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {v}")?;
        }
        let body = self.body_str();
        write!(f, "\n{}", if body.len() > 300 { &body[..300] } else { &body })
    }
}

#[derive(Clone, Debug)]
pub struct SetCookie {
    pub raw: String,
    pub name: String,
    pub value: String,
    /// (attribute name, value); value "" for flags.
    pub attrs: Vec<(String, String)>,
}

impl SetCookie {
    pub fn parse(s: &str) -> SetCookie {
        let mut parts = s.split(';');
        let first = parts.next().unwrap_or("");
        let (name, value) = first.split_once('=').unwrap_or((first, ""));
        let attrs = parts
            .map(|a| {
                let a = a.trim();
                match a.split_once('=') {
                    Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                    None => (a.to_string(), String::new()),
                }
            })
            .collect();
        SetCookie { raw: s.into(), name: name.trim().into(), value: value.trim().into(), attrs }
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn count(&self, name: &str) -> usize {
        self.attrs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count()
    }

    /// The ID part (before the '.').
    pub fn id(&self) -> &str {
        self.value.split('.').next().unwrap_or("")
    }
}

pub fn is_b64url(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `<22 base64url>.<22 base64url>`.
pub fn assert_cookie_format(v: &str) {
    let ok =
        v.len() == 45 && v.as_bytes()[22] == b'.' && is_b64url(&v[..22]) && is_b64url(&v[23..]);
    assert!(ok, "cookie value {v:?} is not <22 base64url>.<22 base64url>");
}

/// The ID part of a cookie value.
pub fn id_of(value: &str) -> &str {
    value.split('.').next().unwrap_or("")
}

/// RFC 6265 token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Reads one HTTP/1.x response (status line, headers, body by Content-Length, chunked or
/// EOF).
pub fn read_response<R: BufRead>(r: &mut R, head: bool) -> io::Result<Response> {
    let mut line = Vec::new();
    let read_line = |r: &mut R, line: &mut Vec<u8>| -> io::Result<String> {
        line.clear();
        let n = r.read_until(b'\n', line)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(String::from_utf8_lossy(line).trim_end_matches(['\r', '\n']).to_string())
    };
    let status_line = read_line(r, &mut line)?;
    let mut it = status_line.splitn(3, ' ');
    let proto = it.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        ));
    }
    let status: u16 = it
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status"))?;
    let mut headers = Vec::new();
    loop {
        let l = read_line(r, &mut line)?;
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp = Response { status, headers, body: Vec::new() };
    if head || status < 200 || status == 204 || status == 304 {
        return Ok(resp);
    }
    let chunked = resp
        .header("Transfer-Encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    if chunked {
        loop {
            let l = read_line(r, &mut line)?;
            let size_txt = l.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_txt, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                loop {
                    if read_line(r, &mut line)?.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut buf = vec![0; size];
            r.read_exact(&mut buf)?;
            resp.body.extend_from_slice(&buf);
            read_line(r, &mut line)?;
        }
    } else if let Some(cl) = resp.header("Content-Length") {
        let n: usize = cl
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        let mut buf = vec![0; n];
        r.read_exact(&mut buf)?;
        resp.body = buf;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// A keep-alive connection; reconnects when the server closed it.
pub struct Conn {
    port: u16,
    src: Option<Ipv4Addr>,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    pub fn new(port: u16) -> Conn {
        Conn { port, src: None, stream: None }
    }

    pub fn from(port: u16, ip: &str) -> Conn {
        Conn { port, src: Some(ip.parse().unwrap()), stream: None }
    }

    pub fn send(&mut self, req: &Req) -> Response {
        let mut last_err = None;
        for _ in 0..2 {
            let reused = self.stream.is_some();
            if self.stream.is_none() {
                let s = connect(self.port, self.src)
                    .unwrap_or_else(|e| panic!("connect to {}: {e}", self.port));
                self.stream = Some(BufReader::new(s));
            }
            let r = self.stream.as_mut().unwrap();
            let res = r
                .get_mut()
                .write_all(&req.to_bytes(true))
                .and_then(|_| read_response(r, req.method == "HEAD"));
            match res {
                Ok(resp) => {
                    let close = resp
                        .header("Connection")
                        .map(|v| v.eq_ignore_ascii_case("close"))
                        .unwrap_or(false);
                    if close {
                        self.stream = None;
                    }
                    return resp;
                }
                Err(e) => {
                    self.stream = None;
                    if !reused {
                        panic!("{} {}: {e}", req.method, req.path);
                    }
                    last_err = Some(e);
                }
            }
        }
        panic!("{} {}: {:?}", req.method, req.path, last_err);
    }
}

// ---------------------------------------------------------------------------------------
// session helpers
// ---------------------------------------------------------------------------------------

/// Starts a session on the standard site: returns the cookie value (checked: status new,
/// one well-formed Set-Cookie whose ID equals `$session_id`).
pub fn new_session(port: u16, req: Req) -> String {
    let r = req.send(port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let c = r.one_cookie(SID);
    assert_cookie_format(&c.value);
    assert_eq!(r.id(), c.id(), "$session_id differs from the cookie's ID: {r}");
    c.value
}

/// Asserts that `value` is a valid session for `req` (status valid, no Set-Cookie).
pub fn assert_valid(port: u16, req: Req, value: &str) -> Response {
    let r = req.sid(value).send(port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "valid", "cookie {value} should be valid: {r}");
    assert!(r.no_cookie(SID), "no Set-Cookie expected on a valid request: {r}");
    assert_eq!(r.id(), id_of(value), "{r}");
    r
}

// ---------------------------------------------------------------------------------------
// redis-server fixture (for the Redis store; unused until it exists)
// ---------------------------------------------------------------------------------------

pub struct Redis {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = TempDir::new("redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server (apt-get install redis-server)");
        let mut redis = Redis { port, child, _dir: dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if redis.command("PING").map(|r| r.starts_with("+PONG")).unwrap_or(false) {
                return redis;
            }
            if let Ok(Some(st)) = redis.child.try_wait() {
                panic!("redis-server exited at start: {st}");
            }
            assert!(Instant::now() < deadline, "redis-server did not answer PING");
            thread::sleep(POLL);
        }
    }

    /// Sends one inline command, returns the first reply line.
    pub fn command(&self, cmd: &str) -> io::Result<String> {
        let mut s = connect(self.port, None)?;
        s.write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        Ok(line)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// redis-server fixture, continued: extra arguments, stop/restart, signals, a RESP client
// ---------------------------------------------------------------------------------------

/// Extra redis-server arguments of each fixture, by port (for `restart`).
static REDIS_EXTRA: std::sync::Mutex<std::collections::BTreeMap<u16, Vec<String>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server (apt-get install redis-server)")
}

/// One RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// A simple string or bulk string as text (lossy); panics on other types.
    pub fn text(&self) -> String {
        match self {
            Resp::Simple(s) => s.clone(),
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Resp::Bulk(Some(b)) => b.clone(),
            other => panic!("expected a bulk reply, got {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The elements of an array reply; panics on other types.
    pub fn items(&self) -> Vec<Resp> {
        match self {
            Resp::Array(Some(v)) => v.clone(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }
}

/// Reads one RESP2 reply.
pub fn read_resp<R: BufRead>(r: &mut R) -> io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad RESP line {line:?}"));
    let (kind, rest) = line.split_at(line.len().min(1));
    let num = || rest.parse::<i64>().map_err(|_| bad());
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(num()?),
        "$" => match num()? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        },
        "*" => match num()? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some((0..n).map(|_| read_resp(r)).collect::<io::Result<_>>()?)),
        },
        _ => return Err(bad()),
    })
}

fn encode_resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Redis {
    /// Like [`Redis::start`], with extra redis-server arguments (e.g. `--requirepass pw`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let dir = TempDir::new("redis");
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        REDIS_EXTRA.lock().unwrap().insert(port, extra.clone());
        let child = spawn_redis(port, &dir.path, &extra);
        let mut redis = Redis { port, child, _dir: dir };
        redis.wait_up();
        redis
    }

    /// Waits until the server answers PING (`+PONG`, or `-NOAUTH` with a password).
    fn wait_up(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let up = self
                .command("PING")
                .map(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
                .unwrap_or(false);
            if up {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("redis-server exited at start: {st}");
            }
            assert!(Instant::now() < deadline, "redis-server did not answer PING");
            thread::sleep(POLL);
        }
    }

    /// Kills the server (SIGKILL) and reaps it; the port stops accepting.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server if it runs, then starts a new one on the same port and directory
    /// with the same arguments (no persistence: the data is gone).
    pub fn restart(&mut self) {
        self.stop();
        let extra = REDIS_EXTRA.lock().unwrap().get(&self.port).cloned().unwrap_or_default();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.child = spawn_redis(self.port, &self._dir.path, &extra);
            // A bind race (port still held) makes redis-server exit at once: try again.
            thread::sleep(Duration::from_millis(50));
            match self.child.try_wait() {
                Ok(Some(_)) if Instant::now() < deadline => continue,
                _ => break,
            }
        }
        self.wait_up();
    }

    /// Sends a signal to redis-server (e.g. SIGSTOP / SIGCONT).
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Runs several commands on one connection (e.g. AUTH, SELECT, then a query); returns
    /// every reply in order.
    pub fn pipeline(&self, cmds: &[&[&str]]) -> io::Result<Vec<Resp>> {
        let mut s = connect(self.port, None)?;
        let mut out = Vec::new();
        for c in cmds {
            out.extend_from_slice(&encode_resp(c));
        }
        s.write_all(&out)?;
        let mut r = BufReader::new(s);
        cmds.iter().map(|_| read_resp(&mut r)).collect()
    }

    /// One command on its own connection; panics on I/O errors.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        let mut v = self.pipeline(&[args]).unwrap_or_else(|e| panic!("redis {args:?}: {e}"));
        v.pop().unwrap()
    }
}
