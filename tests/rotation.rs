//! Secret rotation: `sessions_secret_fallback` and `sessions_secret_file`. A cookie signed
//! with a fallback keeps its session (same ID, `valid`) and comes back re-signed with the
//! current secret; once the fallback is dropped it is `invalid`. On the shared-memory
//! store and on a real `redis-server`; bad configurations fail `nginx -t`.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const OLD: &str = SECRET;
const NEW: &str = "rotated-test-secret-9876543210-zyxwvutsrqponmlkj";

#[derive(Clone, Copy)]
enum Store {
    Shm,
    Redis(u16),
}

impl Store {
    fn directive(self) -> String {
        match self {
            Store::Shm => String::new(),
            Store::Redis(port) => format!("sessions_redis redis://127.0.0.1:{port};"),
        }
    }
}

/// The http directives: the store, the cookie name and `secrets`.
fn http(store: Store, secrets: &str) -> String {
    format!("    sessions_name {SID};\n    {}\n    {secrets}\n", store.directive())
}

fn conf(store: Store, secrets: &str) -> String {
    main_conf(&site(&http(store, secrets), ""), 2)
}

/// A new session's cookie value.
fn new_session(port: u16) -> String {
    let r = Req::get("/index.html").send(port);
    assert_eq!(r.st(), "new", "{r}");
    r.sid()
}

/// The cookie is valid on both workers without a Set-Cookie.
fn assert_valid_as_is(port: u16, value: &str) {
    for _ in 0..4 {
        let r = Req::get("/index.html").sid(value).send(port);
        assert_eq!((r.st(), r.id()), ("valid", id_of(value)), "{r}");
        assert!(r.no_cookie(SID), "a current cookie must not be re-signed: {r}");
    }
}

/// The cookie (signed with a fallback) is valid, keeps its ID, and comes back re-signed
/// with a value that is then valid as it is. Several times: both workers answer.
fn assert_resigned(port: u16, value: &str) -> String {
    let mut resigned = None;
    for _ in 0..4 {
        let r = Req::get("/index.html").sid(value).send(port);
        assert_eq!((r.st(), r.id()), ("valid", id_of(value)), "{r}");
        let c = r.one_cookie(SID);
        assert_eq!(c.id(), id_of(value), "re-signed under another ID: {r}");
        assert_ne!(c.value, value, "not re-signed: {r}");
        assert_cookie_format(&c.value);
        // Signing is deterministic: every worker re-signs to the same value.
        assert_eq!(resigned.get_or_insert_with(|| c.value.clone()), &c.value, "{r}");
    }
    let resigned = resigned.unwrap_or_default();
    assert_valid_as_is(port, &resigned);
    resigned
}

fn assert_invalid(port: u16, value: &str) {
    let r = Req::get("/index.html").sid(value).send(port);
    assert_eq!(r.st(), "invalid", "{r}");
    assert_ne!(r.one_cookie(SID).id(), id_of(value), "{r}");
}

/// Start with OLD; rotate to NEW with OLD as fallback; drop the fallback.
fn rotate_with_directives(store: Store) {
    let ng = Nginx::start_template(&conf(store, &format!("sessions_secret {OLD};")), 2);
    let old_cookie = new_session(ng.port);
    assert_valid_as_is(ng.port, &old_cookie);

    ng.rewrite_conf(&conf(
        store,
        &format!("sessions_secret {NEW};\n    sessions_secret_fallback {OLD};"),
    ));
    ng.reload();
    let resigned = assert_resigned(ng.port, &old_cookie);
    let fresh = new_session(ng.port);

    ng.rewrite_conf(&conf(store, &format!("sessions_secret {NEW};")));
    ng.reload();
    assert_valid_as_is(ng.port, &resigned);
    assert_valid_as_is(ng.port, &fresh);
    assert_invalid(ng.port, &old_cookie);
    ng.check_logs();
}

#[test]
fn fallback_secret_keeps_sessions_shm() {
    rotate_with_directives(Store::Shm);
}

#[test]
fn fallback_secret_keeps_sessions_redis() {
    let redis = Redis::start();
    rotate_with_directives(Store::Redis(redis.port));
}

fn write_secret_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn fingerprint_kinds(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("sessions: secret fingerprint "))
        .filter_map(|l| Some(l[l.rfind('(')? + 1..l.rfind(')')?].to_string()))
        .collect()
}

/// The same through the secret file: rotation is writing the new secret on top, reload.
fn rotate_with_file(store: Store) {
    let dir = TempDir::new("secret");
    let file = dir.path.join("session-secret");
    write_secret_file(&file, &format!("{OLD}\n"));
    let secrets = format!("sessions_secret_file {};", file.display());
    let mut ng = Nginx::start_template(&conf(store, &secrets), 2);
    let old_cookie = new_session(ng.port);

    write_secret_file(&file, &format!("{NEW}\r\n{OLD}\r\n"));
    let skip = ng.error_log_lines();
    ng.reload();
    let kinds = fingerprint_kinds(&ng.error_log_since(skip).join("\n"));
    assert!(
        kinds.contains(&"file".to_string()) && kinds.contains(&"fallback".to_string()),
        "fingerprints of the file's secret and fallback not logged: {kinds:?}\n{}",
        ng.error_log()
    );
    let resigned = assert_resigned(ng.port, &old_cookie);

    write_secret_file(&file, NEW);
    ng.reload();
    assert_valid_as_is(ng.port, &resigned);
    assert_invalid(ng.port, &old_cookie);

    // A reload with an unreadable file is refused: the running configuration stays.
    fs::remove_file(&file).unwrap();
    let skip = ng.error_log_lines();
    ng.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ng.error_log_since(skip).iter().any(|l| l.contains("[emerg]")) {
        assert!(std::time::Instant::now() < deadline, "no [emerg] for a missing secret file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let emerg = ng.error_log_since(skip).join("\n");
    assert!(emerg.contains("session-secret") && emerg.contains("nginx.conf:"), "{emerg}");
    ng.allow_log("[emerg]");
    assert_valid_as_is(ng.port, &resigned);
    ng.check_logs();
}

#[test]
fn secret_file_rotation_shm() {
    rotate_with_file(Store::Shm);
}

#[test]
fn secret_file_rotation_redis() {
    let redis = Redis::start();
    rotate_with_file(Store::Redis(redis.port));
}

/// A server's secret file replaces the http level's `random`, and is the same secret as
/// when written in `sessions_secret`: both instances share Redis and accept each other's
/// cookies.
#[test]
fn secret_file_replaces_random() {
    let redis = Redis::start();
    let store = Store::Redis(redis.port);
    let dir = TempDir::new("secret");
    let file = dir.path.join("secret");
    write_secret_file(&file, NEW);
    let from_file = Nginx::start_template(
        &main_conf(
            &site(
                &http(store, "sessions_secret random;"),
                &format!("sessions_secret_file {};", file.display()),
            ),
            2,
        ),
        2,
    );
    let inline = Nginx::start_template(&conf(store, &format!("sessions_secret {NEW};")), 2);
    let a = new_session(from_file.port);
    let b = new_session(inline.port);
    assert_valid_as_is(inline.port, &a);
    assert_valid_as_is(from_file.port, &b);
    from_file.check_logs();
    inline.check_logs();
}

/// `nginx -t` with `secrets` at http level (and `server` in the server block).
fn nginx_t(secrets: &str, server: &str) -> ConfTest {
    nginx_t_http(&site(&http(Store::Shm, secrets), server))
}

#[test]
fn bad_secret_configurations_fail_with_the_line() {
    let dir = TempDir::new("secret");
    let (missing, empty, blank_first) =
        (dir.path.join("missing"), dir.path.join("empty"), dir.path.join("blank"));
    write_secret_file(&empty, "");
    write_secret_file(&blank_first, &format!("\r\n{OLD}\n"));
    for path in [&missing, &empty, &blank_first] {
        let t = nginx_t(&format!("sessions_secret_file {};", path.display()), "");
        t.assert_emerg(Some(line_of(&t.conf_text, "sessions_secret_file")));
        assert!(t.stderr.contains(&path.display().to_string()), "{}", t.stderr);
    }

    let file = dir.path.join("good");
    write_secret_file(&file, OLD);
    let file_directive = format!("sessions_secret_file {};", file.display());
    // Both at one level, either order, at http or server level.
    for (http_secrets, server) in [
        (format!("sessions_secret {OLD};\n    {file_directive}"), String::new()),
        (format!("{file_directive}\n    sessions_secret {OLD};"), String::new()),
        (String::new(), format!("sessions_secret {NEW}; {file_directive}")),
    ] {
        let t = nginx_t(&http_secrets, &server);
        t.assert_emerg(Some(line_of(&t.conf_text, "sessions_secret_file")));
        assert!(t.stderr.contains("cannot be combined"), "{}", t.stderr);
    }
    // At different levels, the nearest one wins: accepted.
    nginx_t(&format!("sessions_secret {OLD};"), &file_directive).assert_ok();
    nginx_t(&file_directive, &format!("sessions_secret {NEW};")).assert_ok();

    let t = nginx_t(&format!("sessions_secret {NEW};\n    sessions_secret_fallback \"\";"), "");
    t.assert_emerg(Some(line_of(&t.conf_text, "sessions_secret_fallback")));
    // Fallbacks with the random secret in force: accepted (cookies of an earlier fixed
    // secret keep working while moving to `random`).
    nginx_t(&format!("sessions_secret_fallback {OLD};"), "").assert_ok();
    // Not in a location.
    let t = nginx_t(
        &format!("sessions_secret {NEW};"),
        "location /x { sessions_secret_fallback abc; }",
    );
    t.assert_emerg(Some(line_of(&t.conf_text, "sessions_secret_fallback")));
}

#[test]
fn weak_or_exposed_secrets_warn() {
    let dir = TempDir::new("secret");
    let file = dir.path.join("secret");
    fs::write(&file, format!("{NEW}\nshort\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let t = nginx_t(
        &format!(
            "sessions_secret_file {};\n    sessions_secret_fallback tiny;\n    sessions_secret_fallback {OLD};",
            file.display()
        ),
        "",
    );
    t.assert_ok();
    let warns: Vec<&str> = t.stderr.lines().filter(|l| l.contains("[warn]")).collect();
    assert!(
        warns.iter().any(|l| l.contains("can be read by other users") && l.contains("0644")),
        "{}",
        t.stderr
    );
    assert!(
        warns.iter().any(|l| l.contains("fallback secret 1") && l.contains("5 bytes")),
        "{}",
        t.stderr
    );
    assert!(
        warns.iter().any(|l| l.contains("sessions_secret_fallback") && l.contains("4 bytes")),
        "{}",
        t.stderr
    );
    assert_eq!(warns.len(), 3, "{}", t.stderr);
}
