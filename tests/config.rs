//! Configuration: bad values fail `nginx -t` with `[emerg]` and file:line; good ones pass;
//! every shipped `nginx-conf/*.conf` passes `nginx -t`; the demo config runs.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

/// An http body with the given extra directives; the line to blame carries `# BAD`.
fn body(http: &str, server: &str, location: &str) -> String {
    format!(
        r#"
    types {{ text/html html; }}
{http}
    server {{
        listen 127.0.0.1:%%PORT%%;
        root %%PREFIX%%/html;
{server}
        location / {{
            sessions on;
{location}
        }}
    }}
"#
    )
}

#[derive(Clone, Copy)]
enum Ctx {
    Http,
    Server,
    Location,
}

fn check_bad(ctx: Ctx, directives: &str, exact_line: bool) {
    let b = match ctx {
        Ctx::Http => body(directives, "", ""),
        Ctx::Server => body("", directives, ""),
        Ctx::Location => body("", "", directives),
    };
    let t = nginx_t_http(&b);
    let line = exact_line.then(|| line_of(&t.conf_text, "# BAD"));
    t.assert_emerg(line);
}

fn check_good(http: &str, server: &str, location: &str) {
    nginx_t_http(&body(http, server, location)).assert_ok();
}

#[test]
fn bad_flag_and_enum_values() {
    check_bad(Ctx::Location, "sessions maybe; # BAD", true);
    check_bad(Ctx::Server, "sessions 1; # BAD", true);
    check_bad(Ctx::Location, "sessions on off; # BAD", true);
    check_bad(Ctx::Http, "sessions_check_ip yes; # BAD", true);
    check_bad(Ctx::Server, "sessions_check_user_agent 1; # BAD", true);
    check_bad(Ctx::Http, "sessions_cookie_samesite lax2; # BAD", true);
    check_bad(Ctx::Http, "sessions_cookie_samesite \"\"; # BAD", true);
    check_bad(Ctx::Server, "sessions_cookie_secure maybe; # BAD", true);
    check_bad(Ctx::Http, "sessions_cookie_secure; # BAD", true);
    check_bad(Ctx::Location, "sessions_pass_cookie maybe; # BAD", true);
    check_bad(Ctx::Server, "sessions_pass_cookie; # BAD", true);
}

#[test]
fn bad_cookie_names() {
    for name in [
        r#""a;b""#,
        r#""a b""#,
        r#""a,b""#,
        r#""a=b""#,
        r#"'a"b'"#,
        r#""a\\b""#,
        r#""a\r\nb""#,
        r#""a\tb""#,
        r#""a/b""#,
        r#""a(b)""#,
        r#""a@b""#,
        r#""""#,
        "\"sess\u{e9}\"",
    ] {
        check_bad(Ctx::Http, &format!("    sessions_name {name}; # BAD"), true);
    }
}

#[test]
fn bad_cookie_attributes() {
    for d in [
        r#"sessions_cookie_domain "example.com;x"; # BAD"#,
        r#"sessions_cookie_domain "exa\r\nmple.com"; # BAD"#,
        r#"sessions_cookie_domain "example.com\n"; # BAD"#,
        r#"sessions_cookie_domain "example.com\rSet-Cookie: x=1"; # BAD"#,
        r#"sessions_cookie_path "/a;b"; # BAD"#,
        r#"sessions_cookie_path "/a\nb"; # BAD"#,
        r#"sessions_cookie_path "/a\r"; # BAD"#,
        r#"sessions_cookie_path "/; Max-Age=0"; # BAD"#,
        r#"sessions_cookie_domain "example.com,evil.com"; # BAD"#,
        r#"sessions_cookie_domain "exa mple.com"; # BAD"#,
        "sessions_cookie_domain \"example.com\u{1}\"; # BAD",
        r#"sessions_cookie_path "/a b"; # BAD"#,
        r#"sessions_cookie_path "/a,b"; # BAD"#,
        r#"sessions_cookie_path "app"; # BAD"#,
        r#"sessions_cookie_path ""; # BAD"#,
    ] {
        check_bad(Ctx::Http, d, true);
        check_bad(Ctx::Server, d, true);
    }
}

#[test]
fn cookie_prefix_and_samesite_rules() {
    // __Host- forbids Domain and any Path but /
    check_bad(
        Ctx::Http,
        "sessions_name __Host-sid; sessions_cookie_secure on;\n sessions_cookie_domain example.com; # BAD",
        false,
    );
    check_bad(
        Ctx::Http,
        "sessions_name __Host-sid; sessions_cookie_secure on;\n sessions_cookie_path /app; # BAD",
        false,
    );
    check_bad(
        Ctx::Server,
        "sessions_name __Host-sid; sessions_cookie_secure on; sessions_cookie_path /app; # BAD",
        false,
    );
    // SameSite=None needs Secure
    check_bad(
        Ctx::Http,
        "sessions_cookie_samesite none;\n sessions_cookie_secure off; # BAD",
        false,
    );
    check_bad(
        Ctx::Server,
        "sessions_cookie_secure off; sessions_cookie_samesite none; # BAD",
        false,
    );
}

/// Attributes and the name are literal: a `$` would be sent as written (`Domain=$host`),
/// so it is refused with a message that says why (issue 8, finding 6).
#[test]
fn dollar_in_name_or_attributes_is_refused() {
    for d in [
        "sessions_cookie_domain $host; # BAD",
        "sessions_cookie_domain example.com$1; # BAD",
        "sessions_cookie_path /$uri; # BAD",
        "sessions_cookie_path \"/app$\"; # BAD",
        "sessions_name s$id; # BAD",
        "sessions_name $cookie_sid; # BAD",
    ] {
        for ctx in [Ctx::Http, Ctx::Server] {
            let b = match ctx {
                Ctx::Http => body(d, "", ""),
                _ => body("", d, ""),
            };
            let t = nginx_t_http(&b);
            t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));
            assert!(
                t.stderr.contains("\"$\"") && t.stderr.contains("variables are not expanded"),
                "{d}: the message should say that variables are not expanded:\n{}",
                t.stderr
            );
        }
    }
    check_good("sessions_cookie_domain example.com; sessions_cookie_path /app;", "", "");
}

/// Browsers match the `__Host-` / `__Secure-` prefixes ignoring case, so the rules apply
/// to `__host-x` and `__SECURE-x` too (issue 8, finding 6).
#[test]
fn cookie_prefixes_match_ignoring_case() {
    for name in ["__host-sid", "__HOST-sid", "__hOsT-sid"] {
        check_bad(
            Ctx::Http,
            &format!("sessions_name {name}; # BAD\n sessions_cookie_domain example.com;"),
            true,
        );
        check_bad(
            Ctx::Server,
            &format!("sessions_name {name}; # BAD\n sessions_cookie_path /app;"),
            true,
        );
        check_bad(
            Ctx::Http,
            &format!("sessions_name {name}; # BAD\n sessions_cookie_secure off;"),
            true,
        );
    }
    for name in ["__secure-sid", "__SECURE-sid"] {
        check_bad(
            Ctx::Http,
            &format!("sessions_name {name}; # BAD\n sessions_cookie_secure off;"),
            true,
        );
        check_good(&format!("sessions_name {name}; sessions_cookie_path /app;"), "", "");
    }
    check_good("sessions_name __host-sid;", "", "");
}

#[test]
fn bad_timeouts() {
    for d in [
        "sessions_idling_timeout 0; # BAD",
        "sessions_rolling_timeout 0s; # BAD",
        "sessions_absolute_timeout 0; # BAD",
        "sessions_idling_timeout 2h;\n sessions_absolute_timeout 1h; # BAD",
        "sessions_rolling_timeout 2h;\n sessions_absolute_timeout 1h; # BAD",
        "sessions_absolute_timeout 10s;\n sessions_idling_timeout 11s; # BAD",
    ] {
        check_bad(Ctx::Http, d, false);
        check_bad(Ctx::Server, d, false);
    }
    // inherited absolute at http, longer idle at server
    let t = nginx_t_http(&body(
        "sessions_absolute_timeout 1h;",
        "sessions_idling_timeout 2h; # BAD",
        "",
    ));
    t.assert_emerg(None);
    // not a time
    check_bad(Ctx::Http, "sessions_idling_timeout abc; # BAD", true);
    check_bad(Ctx::Http, "sessions_rolling_timeout -5; # BAD", true);
}

#[test]
fn bad_zones() {
    for d in [
        "sessions_zone s:abc; # BAD",
        "sessions_zone s; # BAD",
        "sessions_zone :1m; # BAD",
        "sessions_zone s:0; # BAD",
        "sessions_zone s:-1m; # BAD",
        "sessions_zone s:1m extra; # BAD",
        "sessions_zone s:16k; # BAD",
    ] {
        check_bad(Ctx::Http, d, true);
    }
    // http only
    check_bad(Ctx::Server, "sessions_zone s:1m; # BAD", true);
    check_bad(Ctx::Location, "sessions_zone s:1m; # BAD", true);
}

#[test]
fn duplicate_directives() {
    for d in [
        "sessions_name a;\n sessions_name b; # BAD",
        "sessions_secret abcdefghijabcdefghijabcdefghijabcdefghij;\n sessions_secret random; # BAD",
        "sessions_idling_timeout 10s;\n sessions_idling_timeout 20s; # BAD",
        "sessions_check_ip on;\n sessions_check_ip off; # BAD",
        "sessions_zone a:1m;\n sessions_zone b:1m; # BAD",
    ] {
        check_bad(Ctx::Http, d, true);
    }
    check_bad(Ctx::Location, "sessions off; # BAD", true);
}

/// Every directive, given twice at one level, is "is duplicate" at the second line; for
/// `sessions_redis` that includes `off` after a URL (which used to keep the URL) and a URL
/// after `off`.
#[test]
fn every_directive_is_duplicate_when_repeated() {
    let redis = "redis://127.0.0.1:6379";
    for (first, second) in [
        ("sessions_name a", "sessions_name a"),
        ("sessions_secret random", "sessions_secret random"),
        ("sessions_idling_timeout 10s", "sessions_idling_timeout 10s"),
        ("sessions_rolling_timeout 10s", "sessions_rolling_timeout 20s"),
        ("sessions_absolute_timeout 1h", "sessions_absolute_timeout 2h"),
        ("sessions_check_ip on", "sessions_check_ip on"),
        ("sessions_check_user_agent off", "sessions_check_user_agent on"),
        ("sessions_cookie_domain example.com", "sessions_cookie_domain off"),
        ("sessions_cookie_path /", "sessions_cookie_path /app"),
        ("sessions_cookie_samesite lax", "sessions_cookie_samesite strict"),
        ("sessions_cookie_secure auto", "sessions_cookie_secure on"),
        ("sessions_zone a:1m", "sessions_zone a:1m"),
        (&format!("sessions_redis {redis}"), "sessions_redis off"),
        ("sessions_redis off", &format!("sessions_redis {redis}")),
        (&format!("sessions_redis {redis}"), &format!("sessions_redis {redis}")),
        ("sessions_redis_timeout 1s", "sessions_redis_timeout 2s"),
        ("sessions_redis_keepalive 10", "sessions_redis_keepalive 10"),
        ("sessions_pass_cookie off", "sessions_pass_cookie on"),
    ] {
        let t = nginx_t_http(&body(&format!("{first};\n    {second}; # BAD"), "", ""));
        t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));
        assert!(
            t.stderr.contains("is duplicate"),
            "{first} / {second}: expected \"is duplicate\":\n{}",
            t.stderr
        );
    }
    // The same directive at two levels is an override, not a duplicate.
    check_good("sessions_idling_timeout 10s;", "sessions_idling_timeout 20s;", "");
    check_bad(Ctx::Server, "sessions off;\n sessions on; # BAD", true);
    check_bad(Ctx::Location, "sessions_pass_cookie off;\n sessions_pass_cookie off; # BAD", true);
    // sessions_pass_cookie works at every level, overridden below.
    check_good(
        "sessions_pass_cookie off;",
        "sessions_pass_cookie on;",
        "sessions_pass_cookie off;",
    );
}

/// `sessions_redis off` alone is the shared-memory store; the Redis tuning directives are
/// accepted with it or without a URL.
#[test]
fn redis_off_and_tuning_alone_pass() {
    check_good("sessions_redis off;", "", "");
    check_good(
        "sessions_redis off;\n sessions_redis_timeout 500ms;\n sessions_redis_keepalive 0;",
        "",
        "",
    );
}

#[test]
fn directives_not_allowed_in_location() {
    for d in [
        "sessions_secret abcdefghijabcdefghijabcdefghijabcdefghij; # BAD",
        "sessions_name foo; # BAD",
        "sessions_idling_timeout 10s; # BAD",
        "sessions_check_ip off; # BAD",
    ] {
        check_bad(Ctx::Location, d, true);
    }
}

#[test]
fn good_configs_pass() {
    // everything at http level, several time syntaxes
    check_good(
        &format!(
            "sessions_secret {SECRET};\n sessions_name sid_1;\n sessions_idling_timeout 1800;\n \
             sessions_rolling_timeout 1h;\n sessions_absolute_timeout 1d;\n sessions_check_ip off;\n \
             sessions_check_user_agent on;\n sessions_zone main:4m;\n \
             sessions_cookie_domain example.com;\n sessions_cookie_path /;\n \
             sessions_cookie_samesite strict;\n sessions_cookie_secure auto;\n sessions on;"
        ),
        "",
        "",
    );
    // server-level overrides
    check_good(
        "sessions_idling_timeout 30m;",
        &format!(
            "sessions_secret {SECRET}; sessions_name other; sessions_idling_timeout 10m; \
             sessions_rolling_timeout 20m; sessions_absolute_timeout 1h; sessions_check_ip on; \
             sessions_check_user_agent off; sessions_cookie_path /app; sessions_cookie_samesite lax;"
        ),
        "",
    );
    // defaults: random secret and name, implicit zone
    check_good("", "", "");
    check_good("sessions_secret random;\n sessions_name random;", "", "");
    // prefixes done right
    check_good("sessions_name __Host-sid;\n sessions_cookie_secure on;", "", "");
    check_good(
        "sessions_name __Host-sid;\n sessions_cookie_secure on;\n sessions_cookie_path /;",
        "",
        "",
    );
    check_good("sessions_name __Secure-sid;\n sessions_cookie_secure on;", "", "");
    check_good("sessions_cookie_samesite none;\n sessions_cookie_secure on;", "", "");
    check_good("sessions_cookie_domain off;", "", "");
    check_good("sessions_zone small:32k;", "", "");
    // idle == rolling == absolute is not "longer"
    check_good(
        "sessions_idling_timeout 1h;\n sessions_rolling_timeout 1h;\n sessions_absolute_timeout 1h;",
        "",
        "",
    );
    // nginx's own escapes and token characters in names (all but `$`, which would read as
    // a variable that is never expanded)
    check_good("sessions_name \"My-Session_ID.v2!#%&'*+^`|~\";", "", "");
}

// ---------------------------------------------------------------------------------------
// nginx-conf/*.conf
// ---------------------------------------------------------------------------------------

fn shipped_confs() -> Vec<PathBuf> {
    let dir = root().join("nginx-conf");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A prefix that looks like build/: `modules` → build/modules, `logs`, and every other
/// entry of build/ (except logs and sbin) linked in.
fn build_like_prefix() -> TempDir {
    let dir = TempDir::new("conf");
    let build = root().join("build");
    module_so();
    std::os::unix::fs::symlink(build.join("modules"), dir.path.join("modules")).unwrap();
    if let Ok(rd) = fs::read_dir(&build) {
        for e in rd.flatten() {
            let name = e.file_name();
            if ["logs", "sbin", "modules"].iter().any(|n| name == *n) {
                continue;
            }
            let dst = dir.path.join(&name);
            if dst.is_dir() && fs::read_dir(&dst).map(|mut d| d.next().is_none()).unwrap_or(false) {
                fs::remove_dir(&dst).unwrap();
            }
            if !dst.exists() {
                std::os::unix::fs::symlink(e.path(), &dst).unwrap();
            }
        }
    }
    dir
}

#[test]
fn shipped_configs_pass_nginx_t() {
    let confs = shipped_confs();
    if confs.is_empty() {
        eprintln!("nginx-conf/ has no *.conf yet: nothing to check");
        return;
    }
    let mut failures = Vec::new();
    for conf in &confs {
        let prefix = build_like_prefix();
        let (ok, stderr) = nginx_t_file(&prefix.path, conf);
        let bad = FORBIDDEN_LOG.iter().filter(|f| **f != "[emerg]").any(|f| stderr.contains(f));
        if !ok || bad {
            failures.push(format!("{}:\n{stderr}", conf.display()));
        }
    }
    assert!(failures.is_empty(), "shipped configs fail nginx -t:\n{}", failures.join("\n"));
}

/// Replaces the port of every `listen` of 8080 with `port`.
fn rewrite_listen(text: &str, port: u16) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("listen") {
                l.replace(":8080", &format!(":{port}")).replace(" 8080", &format!(" {port}"))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &dst.join(e.file_name()));
        } else {
            fs::copy(&p, dst.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn demo_conf_shows_session_status() {
    let demo = root().join("nginx-conf/demo.conf");
    if !demo.is_file() {
        eprintln!("nginx-conf/demo.conf does not exist yet: nothing to check");
        return;
    }
    let prefix = build_like_prefix();
    // the whole nginx-conf dir, so relative includes keep working
    let confdir = prefix.path.join("conf");
    copy_dir(&root().join("nginx-conf"), &confdir);
    let port = free_port();
    let text = fs::read_to_string(&demo).unwrap();
    assert!(text.contains("8080"), "demo.conf is expected to listen on 127.0.0.1:8080");
    let conf = confdir.join("demo.conf");
    fs::write(&conf, rewrite_listen(&text, port)).unwrap();
    let mut args = Vec::new();
    if !text.lines().any(|l| l.trim_start().starts_with("daemon")) {
        args.push("-g");
        args.push("daemon off;");
    }
    let ng = Nginx::start_file(prefix, conf, port, 1, &args);

    let r = ng.get("/");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body_str().contains("new"), "demo page must show `new`: {r}");
    let set = r.headers_all("Set-Cookie");
    let c = set
        .iter()
        .map(|s| SetCookie::parse(s))
        .find(|c| c.value.len() == 45 && c.value.as_bytes()[22] == b'.')
        .unwrap_or_else(|| panic!("no session cookie from the demo: {r}"));
    assert_cookie_format(&c.value);
    let r = Req::get("/").cookie(&format!("{}={}", c.name, c.value)).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body_str().contains("valid"), "demo page must show `valid`: {r}");
    assert!(r.set_cookies(&c.name).is_empty(), "{r}");
}
