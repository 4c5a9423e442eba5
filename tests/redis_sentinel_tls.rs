//! Sentinel over `rediss://`: TLS to the sentinel (its certificate checked against the host
//! written in `sessions_redis_sentinel`) and to the master it names (checked against the
//! address it gave), with real `redis-server` processes on loopback and certificates made
//! with `openssl`.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const MASTER: &str = "m";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A CA `ca`, a second CA `other-ca`, and `server.crt` (localhost, 127.0.0.1) signed by `ca`.
fn pki() -> TempDir {
    let dir = TempDir::new("pki");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subj) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN={ca}"));
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
        openssl(&dir.path, &args);
    }
    std::fs::write(dir.path.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        .unwrap();
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server"]);
    openssl(&dir.path, &args);
    openssl(
        &dir.path,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    dir
}

fn poll_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

struct TlsCluster {
    master: Redis,
    master_tls_port: u16,
    sentinel_port: u16,
    sentinel: Child,
    pki: TempDir,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

fn tls_cluster() -> TlsCluster {
    let pki = pki();
    let p = |f: &str| pki.path.join(f).display().to_string();
    let master_tls_port = free_port();
    let tls_args = |port: u16| {
        format!(
            "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
            p("server.crt"),
            p("server.key"),
            p("ca.crt")
        )
    };
    let master = Redis::start_with(&[
        "--tls-port",
        &master_tls_port.to_string(),
        "--tls-cert-file",
        &p("server.crt"),
        "--tls-key-file",
        &p("server.key"),
        "--tls-ca-cert-file",
        &p("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let sentinel_port = free_port();
    let dir = pki.path.join("sentinel");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\nbind 127.0.0.1\ndaemonize no\ndir {}\n{}tls-replication yes\n\
             sentinel monitor {MASTER} 127.0.0.1 {master_tls_port} 1\n",
            dir.display(),
            tls_args(sentinel_port)
        ),
    )
    .unwrap();
    let sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server --sentinel");
    poll_until("the sentinel listens", Duration::from_secs(10), || {
        connect(sentinel_port, None).is_ok()
    });
    TlsCluster { master, master_tls_port, sentinel_port, sentinel, pki }
}

fn site_over_tls(cluster: &TlsCluster, ca: &str) -> Nginx {
    let ca = cluster.pki.path.join(ca).display().to_string();
    Nginx::start(&site(
        &default_http(&format!(
            "sessions_redis rediss://unused/0;\n    \
             sessions_redis_sentinel {MASTER} localhost:{};\n    \
             sessions_redis_ssl_verify on;\n    \
             sessions_redis_ssl_trusted_certificate {ca};",
            cluster.sentinel_port
        )),
        "",
    ))
}

#[test]
fn sentinel_and_master_over_tls_with_verification() {
    let cluster = tls_cluster();
    let mut ng = site_over_tls(&cluster, "ca.crt");
    let mut pids = std::collections::HashSet::new();
    poll_until("every worker answers new", Duration::from_secs(10), || {
        let r = Req::get("/index.html").send(ng.port);
        assert!(r.st() == "new" || r.st() == "error", "{r}");
        if r.st() == "new" {
            pids.insert(r.pid().to_string());
        }
        pids.len() == ng.workers
    });
    let before = cluster.master.cmd(&["DBSIZE"]).int();
    let r = Req::get("/index.html").send(ng.port);
    assert_eq!(r.st(), "new", "{r}");
    let c = r.set_cookies(SID).first().expect("a Set-Cookie").value.clone();
    assert_eq!(Req::get("/index.html").sid(&c).send(ng.port).st(), "valid");
    assert_eq!(cluster.master.cmd(&["DBSIZE"]).int(), before + 1);
    let log = ng.error_log();
    assert!(log.contains(&format!("is at 127.0.0.1:{}", cluster.master_tls_port)), "{log}");
    ng.stop();
}

#[test]
fn a_sentinel_certificate_from_another_ca_is_refused() {
    let cluster = tls_cluster();
    let mut ng = site_over_tls(&cluster, "other-ca.crt");
    poll_until("the failed lookup is logged", Duration::from_secs(10), || {
        ng.error_log().contains("no sentinel gave a reachable master")
    });
    let log = ng.error_log();
    assert!(log.contains("TLS certificate verify failed"), "{log}");
    assert_eq!(Req::get("/index.html").send(ng.port).st(), "error");
    ng.stop();
}
