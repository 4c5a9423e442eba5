//! TLS and HTTP/2, driven by the `curl` and `openssl` command-line tools (skipped with a
//! message when they are not installed): `sessions_cookie_secure auto` adds Secure on https
//! only, and HTTP/2 cookie crumbs (several `cookie` fields) are found.

mod common;

use common::*;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
        || Command::new(tool).arg("version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// `curl -sk -D - <args> url` → parsed response headers + body.
fn curl(args: &[&str], url: &str) -> Response {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "5", "-D", "-", "-A", UA])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?} {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Response { status, headers, body: body.as_bytes().to_vec() }
}

/// An https server (http2) and an http server, both `sessions_cookie_secure auto`.
fn tls_nginx() -> Option<(Nginx, u16, TempDir)> {
    if !have("curl") || !have("openssl") {
        eprintln!("curl or openssl not installed: TLS tests skipped");
        return None;
    }
    let certdir = TempDir::new("cert");
    let key = certdir.path.join("key.pem");
    let crt = certdir.path.join("crt.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(st.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&st.stderr));
    let tls_port = free_port();
    let body = site(
        &default_http(&format!(
            r#"
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        http2 on;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        root %%PREFIX%%/html;
        add_header X-Status $session_status always;
        add_header X-Id $session_id always;
        location / {{ sessions on; }}
    }}"#,
            crt = crt.display(),
            key = key.display()
        )),
        "",
    );
    Some((Nginx::start(&body), tls_port, certdir))
}

#[test]
fn secure_auto_follows_the_scheme_and_h2_crumbs_are_found() {
    let Some((ng, tls_port, _certs)) = tls_nginx() else { return };
    let https = format!("https://127.0.0.1:{tls_port}/index.html");

    // https: Secure
    let r = curl(&["--http1.1"], &https);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let c = r.one_cookie(SID);
    assert!(c.has("Secure"), "https cookie without Secure under `auto`: {}", c.raw);
    assert!(c.has("HttpOnly"), "{}", c.raw);

    // http: no Secure
    let r = ng.get("/index.html");
    let c2 = r.one_cookie(SID);
    assert!(!c2.has("Secure"), "http cookie with Secure under `auto`: {}", c2.raw);

    // HTTP/2 with our cookie in a separate `cookie` field (crumbs)
    let r = curl(
        &[
            "--http2",
            "-H",
            "cookie: a=1",
            "-H",
            &format!("cookie: {SID}={}", c.value),
            "-H",
            "cookie: b=2",
        ],
        &https,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "valid", "h2 cookie crumbs: {r}");
    assert!(r.no_cookie(SID), "{r}");
    // and with no cookie over h2: one Set-Cookie
    let r = curl(&["--http2"], &https);
    assert_eq!(r.st(), "new", "{r}");
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
}
