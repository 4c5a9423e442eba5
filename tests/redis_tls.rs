//! `rediss://`: the Redis store over TLS against a real `redis-server --tls-port` (its plain
//! port stays open for the test's own client), with certificates the test makes with the
//! `openssl` CLI: TLS without verification, verification against the right CA (by IP and
//! by name) and a wrong one, a certificate for another name, `tls-auth-clients yes` with
//! and without a client certificate, pooling, pipelining and session resumption over TLS,
//! a Redis restart and an NGINX reload, a peer that never finishes the handshake, a plain
//! port behind `rediss://`, the ready `nginx-conf/cluster-tls.conf`, and the configuration
//! errors at `nginx -t`.

mod common;

use common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNAVAILABLE: &str = "is unavailable";

/// A CA, a server certificate (127.0.0.1 and localhost), a client certificate, a second CA
/// that signed nothing of these, and a server certificate for another name.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `<name>.crt` / `<name>.key` (EC keys: fast to make).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=sessions test {name}"),
        ],
    );
}

/// `<name>.crt` / `<name>.key` signed by `ca`, with these subjectAltNames.
fn make_leaf(dir: &Path, ca: &str, name: &str, san: &str) {
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

fn pki() -> Pki {
    let dir = TempDir::new("pki");
    make_ca(&dir.path, "ca");
    make_ca(&dir.path, "other-ca");
    make_leaf(&dir.path, "ca", "server", "DNS:localhost,IP:127.0.0.1");
    make_leaf(&dir.path, "ca", "client", "DNS:client");
    make_leaf(&dir.path, "ca", "elsewhere", "DNS:elsewhere.example");
    Pki { dir }
}

/// A Redis with a TLS port besides its plain one.
struct TlsRedis {
    redis: Redis,
    tls_port: u16,
}

/// Whether this redis-server speaks TLS: one started with a TLS port accepts on it (a
/// build without TLS refuses `--tls-port` and exits). Checked once per test process.
fn redis_has_tls(pki: &Pki) -> bool {
    static HAS_TLS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS_TLS.get_or_init(|| {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--bind", "127.0.0.1", "--tls-port"])
            .arg(port.to_string())
            .args(["--tls-cert-file", &pki.p("server.crt"), "--tls-key-file"])
            .arg(pki.p("server.key"))
            .args(["--tls-ca-cert-file", &pki.p("ca.crt"), "--dir"])
            .arg(&pki.dir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else { return false };
        let deadline = Instant::now() + Duration::from_secs(5);
        let up = loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break true;
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        up
    })
}

/// The PKI, or `None` (and a clear message) when redis-server has no TLS.
fn pki_or_skip() -> Option<Pki> {
    let pki = pki();
    if redis_has_tls(&pki) {
        return Some(pki);
    }
    eprintln!("SKIPPED: this redis-server has no TLS support (build it with BUILD_TLS=yes)");
    None
}

fn tls_redis(pki: &Pki, auth_clients: bool, cert: &str) -> TlsRedis {
    let tls_port = free_port();
    let (crt, key) = (pki.p(&format!("{cert}.crt")), pki.p(&format!("{cert}.key")));
    let (port, ca) = (tls_port.to_string(), pki.p("ca.crt"));
    let auth = if auth_clients { "yes" } else { "no" };
    let redis = Redis::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &crt,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        auth,
    ]);
    TlsRedis { redis, tls_port }
}

/// The standard site on `url` plus `extra` http directives.
fn site_on(url: &str, extra: &str) -> Nginx {
    Nginx::start(&site(&default_http(&format!("sessions_redis {url};\n    {extra}")), ""))
}

/// A new session, then the same cookie is `valid` a few times (over both workers).
fn assert_sessions_work(ng: &Nginx) {
    let r = Req::get("/index.html").send(ng.port);
    assert_eq!(r.st(), "new", "{r}\n{}", ng.error_log());
    let sid = r.sid();
    for _ in 0..6 {
        let r = Req::get("/index.html").sid(&sid).send(ng.port);
        assert_eq!(r.st(), "valid", "{r}\n{}", ng.error_log());
    }
}

/// Requests answer `error` (no Set-Cookie), and the error log says why.
fn assert_refused(ng: &Nginx, why: &str) {
    for _ in 0..4 {
        let r = Req::get("/index.html").send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "error", "{r}\n{}", ng.error_log());
        assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
    }
    let log = ng.error_log();
    assert!(log.contains(why), "expected {why:?} in the error log:\n{log}");
}

/// `INFO stats` `total_connections_received`.
fn connections_received(redis: &Redis) -> u64 {
    let info = redis.cmd(&["INFO", "stats"]).text();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("no total_connections_received in INFO stats")
}

// ---------------------------------------------------------------------------------------
// working TLS
// ---------------------------------------------------------------------------------------

#[test]
fn tls_without_verification_works_and_pools_connections() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, false, "server");
    let ng = site_on(&format!("rediss://127.0.0.1:{}", r.tls_port), "");
    assert_sessions_work(&ng);
    // the session is in Redis (reached over TLS)
    let keys = r.redis.cmd(&["DBSIZE"]).int();
    assert!(keys >= 2, "session and binding key in Redis: {keys}");

    // pooled connections stay TLS: 200 sequential requests open at most a few
    let before = connections_received(&r.redis);
    let sid = Req::get("/index.html").send(ng.port).sid();
    for _ in 0..200 {
        let resp = Req::get("/index.html").sid(&sid).send(ng.port);
        assert_eq!(resp.st(), "valid", "{resp}");
    }
    let opened = connections_received(&r.redis) - before;
    // the test's own INFO connections count too (2), plus at most one per worker
    assert!(opened <= 2 + ng.workers as u64, "{opened} connections for 200 requests");
    ng.check_logs();
}

/// Many clients at once over TLS: commands pipelined on one TLS connection per worker
/// (writes that wait for the socket while more commands are appended included).
#[test]
fn concurrent_clients_share_pipelined_tls_connections() {
    const CLIENTS: usize = 48;
    const REQUESTS: usize = 10;
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, false, "server");
    let ng = site_on(
        &format!("rediss://127.0.0.1:{}", r.tls_port),
        "sessions_redis_keepalive 1;\n    sessions_redis_timeout 5s;",
    );
    assert_sessions_work(&ng);
    let before = connections_received(&r.redis);
    let port = ng.port;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let first = Req::get("/index.html").send(port);
                assert_eq!(first.st(), "new", "{first}");
                let sid = first.sid();
                for _ in 0..REQUESTS {
                    let again = Req::get("/index.html").sid(&sid).send(port);
                    assert_eq!(again.st(), "valid", "{again}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    let opened = connections_received(&r.redis) - before;
    // one per worker at most (the first may already be open), plus the INFO query
    assert!(opened <= 2 + 1, "{opened} Redis connections for {CLIENTS} clients over TLS");
    ng.check_logs();
}

#[test]
fn tls_without_keepalive_resumes_sessions() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, false, "server");
    // keepalive 0: every command is a new connection and a handshake, resumed after the
    // first one of each worker (the module's [info] line says which)
    let http = default_http(&format!(
        "sessions_redis rediss://127.0.0.1:{};\n    sessions_redis_keepalive 0;\n    \
         sessions_redis_ssl_verify on;\n    sessions_redis_ssl_trusted_certificate {};",
        r.tls_port,
        pki.p("ca.crt")
    ));
    let ng = Nginx::start(&site(&http, ""));
    for _ in 0..5 {
        assert_sessions_work(&ng);
    }
    let log = ng.error_log();
    let full = count(&log, "TLS handshake with Redis done (TLSv1.3, new session)");
    let resumed = count(&log, "TLS handshake with Redis done (TLSv1.3, session resumed)");
    eprintln!("keepalive 0 over TLS: {full} full handshakes, {resumed} resumed");
    assert!(full + resumed >= 20, "a handshake per command: {full} + {resumed}");
    // one full handshake per worker; a second one may race the first's ticket
    assert!(full <= 2 * ng.workers, "{full} full handshakes, {resumed} resumed");
    ng.check_logs();
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn verification_with_the_right_ca_works_by_ip_and_by_name() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, false, "server");
    for host in ["127.0.0.1", "localhost"] {
        let ng = site_on(
            &format!("rediss://{host}:{}", r.tls_port),
            &format!(
                "sessions_redis_ssl_verify on;\n    sessions_redis_ssl_trusted_certificate {};",
                pki.p("ca.crt")
            ),
        );
        assert_sessions_work(&ng);
        ng.check_logs();
    }
}

#[test]
fn verification_with_a_wrong_ca_fails_with_the_reason() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, false, "server");
    let ng = site_on(
        &format!("rediss://127.0.0.1:{}", r.tls_port),
        &format!(
            "sessions_redis_ssl_verify on;\n    sessions_redis_ssl_trusted_certificate {};",
            pki.p("other-ca.crt")
        ),
    );
    // OpenSSL names the first problem it meets: the chain Redis sends ends with its own
    // CA ("self-signed certificate in certificate chain"), or it does not ("unable to get
    // local issuer certificate")
    assert_refused(&ng, "is unavailable (TLS certificate verify failed: ");
    let log = ng.error_log();
    assert!(
        log.contains("self-signed certificate in certificate chain")
            || log.contains("unable to get local issuer certificate"),
        "{log}"
    );
    assert!(ng.error_log().contains(UNAVAILABLE));
    ng.check_logs();
}

#[test]
fn verification_refuses_a_certificate_for_another_name() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, false, "elsewhere");
    for host in ["127.0.0.1", "localhost"] {
        let ng = site_on(
            &format!("rediss://{host}:{}", r.tls_port),
            &format!(
                "sessions_redis_ssl_verify on;\n    sessions_redis_ssl_trusted_certificate {};",
                pki.p("ca.crt")
            ),
        );
        assert_refused(&ng, &format!("certificate does not match \"{host}\""));
        ng.check_logs();
    }
    // without verification the same server is accepted
    let ng = site_on(&format!("rediss://localhost:{}", r.tls_port), "");
    assert_sessions_work(&ng);
    ng.check_logs();
}

#[test]
fn client_certificates() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, true, "server");
    let url = format!("rediss://127.0.0.1:{}", r.tls_port);

    // without one: the server refuses the connection. With TLS 1.3 the client's handshake
    // is over before the server checks; its alert comes with the first reply ("SSL_read()
    // failed ... alert certificate required", which NGINX logs at [crit]: OpenSSL's reason
    // is missing from its list of handshake errors), or the reset makes the first write fail
    let mut ng = site_on(&url, "");
    assert_refused(&ng, UNAVAILABLE);
    let log = ng.error_log();
    assert!(
        log.contains("alert certificate required") || log.contains("SSL_write() failed"),
        "{log}"
    );
    ng.allow_log("alert certificate required");
    ng.check_logs();
    drop(ng);

    // with one (and verification): it works
    let ng = site_on(
        &url,
        &format!(
            "sessions_redis_ssl_certificate {};\n    sessions_redis_ssl_certificate_key {};\n    \
             sessions_redis_ssl_verify on;\n    sessions_redis_ssl_trusted_certificate {};",
            pki.p("client.crt"),
            pki.p("client.key"),
            pki.p("ca.crt")
        ),
    );
    assert_sessions_work(&ng);
    ng.check_logs();
}

/// Redis restarted between two requests: the pooled TLS connections are dead, the next
/// requests go through fresh TLS connections without an `error` (the retry on a fresh
/// connection includes its handshake).
#[test]
fn restart_between_requests_is_invisible_over_tls() {
    let Some(pki) = pki_or_skip() else { return };
    let mut r = tls_redis(&pki, false, "server");
    let ng = site_on(
        &format!("rediss://127.0.0.1:{}", r.tls_port),
        &format!(
            "sessions_redis_ssl_verify on;\n    sessions_redis_ssl_trusted_certificate {};",
            pki.p("ca.crt")
        ),
    );
    for _ in 0..6 {
        let resp = Req::get("/index.html").send(ng.port);
        assert_eq!(resp.st(), "new", "{resp}");
    }
    r.redis.restart();
    for _ in 0..8 {
        let resp = Req::get("/index.html").send(ng.port);
        assert_eq!(resp.st(), "new", "a dead pooled TLS connection must be replaced: {resp}");
    }
    let log = ng.error_log();
    assert!(!log.contains(UNAVAILABLE), "{log}");
    ng.check_logs();
}

/// A reload makes a new SSL context; the new workers connect with it, the old ones close
/// their TLS connections as they exit.
#[test]
fn reload_keeps_tls_sessions_working() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, false, "server");
    let ng = site_on(
        &format!("rediss://127.0.0.1:{}", r.tls_port),
        &format!(
            "sessions_redis_ssl_verify on;\n    sessions_redis_ssl_trusted_certificate {};",
            pki.p("ca.crt")
        ),
    );
    let sid = Req::get("/index.html").send(ng.port).sid();
    ng.reload();
    for _ in 0..6 {
        let resp = Req::get("/index.html").sid(&sid).send(ng.port);
        assert_eq!(resp.st(), "valid", "{resp}\n{}", ng.error_log());
    }
    ng.check_logs();
}

// ---------------------------------------------------------------------------------------
// never a hang
// ---------------------------------------------------------------------------------------

#[test]
fn a_peer_that_never_answers_the_handshake_costs_the_timeout() {
    // no redis-server needed: a listener that accepts and says nothing
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ng = site_on(&format!("rediss://127.0.0.1:{port}"), "sessions_redis_timeout 300ms;");
    let started = Instant::now();
    let r = Req::get("/index.html").send(ng.port);
    assert_eq!(r.st(), "error", "{r}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(ng.error_log().contains("timed out"), "{}", ng.error_log());
    drop(listener);
    ng.check_logs();
}

#[test]
fn rediss_to_a_plain_port_fails_within_the_timeout() {
    // Redis takes the ClientHello for the start of an inline command and waits for its end
    let redis = Redis::start();
    let ng =
        site_on(&format!("rediss://127.0.0.1:{}", redis.port), "sessions_redis_timeout 300ms;");
    let started = Instant::now();
    assert_refused(&ng, UNAVAILABLE);
    // the first request of each worker waits for the timeout, the others fail fast
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    ng.check_logs();
}

// ---------------------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------------------

/// nginx-conf/cluster-tls.conf runs against a TLS Redis that wants client certificates
/// once its port, CA and client certificate lines are filled in (tests/config.rs checks
/// the file as shipped with `nginx -t`).
#[test]
fn cluster_tls_conf_runs() {
    let Some(pki) = pki_or_skip() else { return };
    let r = tls_redis(&pki, true, "server");
    let text = std::fs::read_to_string(root().join("nginx-conf/cluster-tls.conf")).unwrap();
    let port = free_port();
    let replaced = text
        .replace("rediss://127.0.0.1:6380/0", &format!("rediss://127.0.0.1:{}/0", r.tls_port))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("worker_processes auto;", "worker_processes 2;")
        .replace(
            "# sessions_redis_ssl_trusted_certificate /etc/redis/tls/ca.crt",
            &format!("sessions_redis_ssl_trusted_certificate {}", pki.p("ca.crt")),
        )
        .replace(
            "# sessions_redis_ssl_certificate     /etc/nginx/redis-client.crt",
            &format!("sessions_redis_ssl_certificate {}", pki.p("client.crt")),
        )
        .replace(
            "# sessions_redis_ssl_certificate_key /etc/nginx/redis-client.key",
            &format!("sessions_redis_ssl_certificate_key {}", pki.p("client.key")),
        )
        .replace(
            "proxy_pass http://127.0.0.1:8081;",
            "add_header X-Status $session_status always;",
        );
    for line in ["sessions_redis_ssl_trusted_certificate /", "sessions_redis_ssl_certificate_key /"]
    {
        assert!(replaced.contains(line), "cluster-tls.conf changed: no {line:?} after filling in");
    }
    let prefix = TempDir::new("cluster-tls");
    write_html(&prefix.path);
    std::os::unix::fs::symlink(module_so().parent().unwrap(), prefix.path.join("modules")).unwrap();
    let conf = prefix.path.join("conf/nginx.conf");
    std::fs::write(&conf, replaced).unwrap();
    let ng = Nginx::start_file(prefix, conf, port, 2, &["-g", "daemon off;"]);
    let first = Req::get("/index.html").send(ng.port);
    assert_eq!(first.st(), "new", "{first}\n{}", ng.error_log());
    let cookie = first.one_cookie("clustersession");
    let again =
        Req::get("/index.html").cookie(&format!("clustersession={}", cookie.value)).send(ng.port);
    assert_eq!(again.st(), "valid", "{again}\n{}", ng.error_log());
    ng.check_logs();
}

fn conf_body(http: &str) -> String {
    format!(
        r#"
    sessions_secret {SECRET};
{http}
    server {{
        listen 127.0.0.1:%%PORT%%;
        location / {{ sessions on; }}
    }}
"#
    )
}

#[test]
fn bad_tls_settings_fail_nginx_t() {
    let pki = pki();
    let (crt, key) = (pki.p("client.crt"), pki.p("client.key"));
    let missing = pki.p("no-such-file.pem");
    let bad = [
        "sessions_redis rediss://127.0.0.1:6380;\n    sessions_redis_ssl_verify maybe; # BAD"
            .to_string(),
        format!(
            "sessions_redis rediss://127.0.0.1:6380;\n    \
             sessions_redis_ssl_trusted_certificate {missing}; # BAD"
        ),
        format!(
            "sessions_redis rediss://127.0.0.1:6380;\n    \
             sessions_redis_ssl_certificate {missing}; # BAD\n    \
             sessions_redis_ssl_certificate_key {key};"
        ),
        format!(
            "sessions_redis rediss://127.0.0.1:6380;\n    \
             sessions_redis_ssl_certificate {crt}; # BAD"
        ),
        format!(
            "sessions_redis rediss://127.0.0.1:6380;\n    \
             sessions_redis_ssl_certificate_key {key}; # BAD"
        ),
        // a key that is not the certificate's
        format!(
            "sessions_redis rediss://127.0.0.1:6380;\n    \
             sessions_redis_ssl_certificate {crt}; # BAD\n    \
             sessions_redis_ssl_certificate_key {};",
            pki.p("server.key")
        ),
        "sessions_redis rediss://127.0.0.1:6380;\n    sessions_redis_ssl_verify on;\n    \
         sessions_redis_ssl_verify off; # BAD"
            .to_string(),
    ];
    for b in &bad {
        let t = nginx_t_http(&conf_body(b));
        t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));
    }
    // good: everything, and verification with the system's CAs
    let good = [
        format!(
            "sessions_redis rediss://127.0.0.1:6380;\n    sessions_redis_ssl_verify on;\n    \
             sessions_redis_ssl_trusted_certificate {};\n    \
             sessions_redis_ssl_certificate {crt};\n    sessions_redis_ssl_certificate_key {key};",
            pki.p("ca.crt")
        ),
        "sessions_redis rediss://localhost:6380/1;\n    sessions_redis_ssl_verify on;".to_string(),
    ];
    for g in &good {
        nginx_t_http(&conf_body(g)).assert_ok();
    }
    // TLS settings without rediss://: a warning, not an error
    let t = nginx_t_http(&conf_body(
        "sessions_redis redis://127.0.0.1:6379;\n    sessions_redis_ssl_verify on;",
    ));
    assert!(t.ok, "{}", t.stderr);
    assert!(t.stderr.contains("[warn]") && t.stderr.contains("rediss://"), "{}", t.stderr);
}
