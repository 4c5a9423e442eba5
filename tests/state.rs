//! `sessions_zone ... state=<file>`: sessions and a random secret and name survive a stop
//! and start, a crash after a periodic write, and a binary upgrade; a bad file is one
//! `[warn]` and an empty start; expired records are not loaded; the file is mode 0600.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sessions_core::cookie::Signer;
use sessions_core::state::Snapshot;

/// A directory for the state file that the workers (`nobody` when the tests run as root)
/// can write to, and the file's path in it.
fn state_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new("state");
    let sub = dir.path.join("state");
    fs::create_dir_all(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).unwrap();
    (dir, sub.join("sessions.state"))
}

/// The standard site (fixed secret, name SID) with a state file.
fn conf_with(state: &Path, extra: &str) -> String {
    main_conf(
        &site(
            &default_http(&format!(
                "sessions_zone keep:1m state={};\n    {extra}",
                state.display()
            )),
            "",
        ),
        2,
    )
}

/// Polls `cond` every 20 ms for up to 10 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until process `pid` has exited (gone, or a zombie not yet reaped).
fn wait_exit(pid: u32) {
    wait_for(&format!("process {pid} to exit"), || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true)
    });
}

/// Sends `sig` to the master, waits for it to exit, and checks the logs.
fn stop_with(ng: &mut Nginx, sig: libc::c_int) {
    ng.signal(sig);
    wait_exit(ng.master_pid());
    ng.stop();
}

fn lines_with(log: &str, parts: &[&str]) -> Vec<String> {
    log.lines().filter(|l| parts.iter().all(|p| l.contains(p))).map(str::to_string).collect()
}

/// The one `[warn]` of a state file that was not loaded, saying why.
fn assert_one_warn(ng: &Nginx, why: &str) {
    let log = ng.error_log();
    let warns = lines_with(&log, &["[warn]", "state file"]);
    assert_eq!(warns.len(), 1, "expected one [warn] about the state file:\n{log}");
    assert!(warns[0].contains("not loaded") && warns[0].contains(why), "{}", warns[0]);
}

fn decode(path: &Path) -> Snapshot {
    Snapshot::decode(&fs::read(path).unwrap()).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `nginx -s stop` (TERM): the master writes the table once every worker is gone, the file
/// is mode 0600, and the next start loads it: every session is valid again, on both workers.
#[test]
fn stop_and_start_keeps_sessions() {
    let (_dir, state) = state_dir();
    // The default interval (60s): only the stop can have written the file.
    let mut ng = Nginx::start_template(&conf_with(&state, ""), 2);
    assert_one_warn(&ng, "No such file");
    let values: Vec<String> =
        (0..20).map(|_| new_session(ng.port, Req::get("/index.html"))).collect();
    // Bring half of them back once (protected segment).
    for v in &values[..10] {
        assert_valid(ng.port, Req::get("/index.html"), v);
    }
    assert!(!state.exists(), "written before the interval");
    stop_with(&mut ng, libc::SIGTERM);
    let written = lines_with(&ng.error_log(), &["[notice]", "20 sessions written to state file"]);
    assert_eq!(written.len(), 1, "{}", ng.error_log());
    let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "state file mode {mode:o}");
    assert_eq!(decode(&state).entries.len(), 20);
    let leftovers: Vec<_> = fs::read_dir(state.parent().unwrap()).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");

    let ng = Nginx::start_template(&conf_with(&state, ""), 2);
    let log = ng.error_log();
    assert_eq!(
        lines_with(&log, &["[notice]", "20 sessions loaded from state file", "(0 expired"]).len(),
        1,
        "{log}"
    );
    assert!(lines_with(&log, &["[warn]"]).is_empty(), "{log}");
    let mut pids = std::collections::HashSet::new();
    for _ in 0..2 {
        for v in &values {
            pids.insert(assert_valid(ng.port, Req::get("/index.html"), v).pid().to_string());
        }
    }
    assert_eq!(pids.len(), 2, "both workers should have answered: {pids:?}");
    ng.check_logs();
}

/// The random secret and cookie name are kept with the sessions (`nginx -s quit`).
#[test]
fn random_secret_and_name_survive_a_restart() {
    let (_dir, state) = state_dir();
    let conf = |state: &Path| {
        main_conf(&site(&format!("sessions_zone keep:1m state={};", state.display()), ""), 2)
    };
    let mut ng = Nginx::start_template(&conf(&state), 2);
    let r = ng.get("/index.html");
    assert_eq!(r.st(), "new", "{r}");
    let cookie = SetCookie::parse(r.headers_all("Set-Cookie")[0]);
    assert_ne!(cookie.name, SID);
    let fingerprint = |ng: &Nginx| lines_with(&ng.error_log(), &["secret fingerprint"]);
    let before = fingerprint(&ng);
    stop_with(&mut ng, libc::SIGQUIT);

    let ng = Nginx::start_template(&conf(&state), 2);
    let r =
        Req::get("/index.html").cookie(&format!("{}={}", cookie.name, cookie.value)).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(r.id(), cookie.id(), "{r}");
    let r = ng.get("/index.html");
    assert_eq!(r.set_cookies(&cookie.name).len(), 1, "the cookie name changed: {r}");
    let after = fingerprint(&ng);
    let fp = |lines: &[String]| {
        lines
            .iter()
            .map(|l| l.split("fingerprint ").nth(1).unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(fp(&before), fp(&after), "the random secret changed");
    ng.check_logs();
}

/// Worker 0 writes the file every `sessions_state_interval`: after a crash (everything
/// killed, no stop write), the next start has the sessions of the last periodic write.
#[test]
fn periodic_write_survives_a_crash() {
    let (_dir, state) = state_dir();
    let mut ng = Nginx::start_template(&conf_with(&state, "sessions_state_interval 1s;"), 2);
    let values: Vec<String> =
        (0..5).map(|_| new_session(ng.port, Req::get("/index.html"))).collect();
    wait_for("a periodic write with the 5 sessions", || {
        fs::read(&state)
            .ok()
            .and_then(|b| Snapshot::decode(&b).ok())
            .is_some_and(|s| s.entries.len() == 5)
    });
    let workers = ng.worker_pids();
    ng.signal(libc::SIGKILL);
    for w in workers {
        // SAFETY: kill(2) on the workers of our own child.
        unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
    }
    wait_exit(ng.master_pid());
    ng.stop();

    let ng = Nginx::start_template(&conf_with(&state, "sessions_state_interval 1s;"), 2);
    for v in &values {
        assert_valid(ng.port, Req::get("/index.html"), v);
    }
    ng.check_logs();
}

/// A reload that changes the zone's size makes a new zone, filled from the file.
#[test]
fn a_reload_that_resizes_the_zone_loads_the_file() {
    let (_dir, state) = state_dir();
    let ng = Nginx::start_template(&conf_with(&state, "sessions_state_interval 1s;"), 2);
    let values: Vec<String> =
        (0..5).map(|_| new_session(ng.port, Req::get("/index.html"))).collect();
    wait_for("a periodic write with the 5 sessions", || {
        fs::read(&state)
            .ok()
            .and_then(|b| Snapshot::decode(&b).ok())
            .is_some_and(|s| s.entries.len() == 5)
    });
    ng.rewrite_conf(
        &conf_with(&state, "sessions_state_interval 1s;").replace("keep:1m", "keep:2m"),
    );
    ng.reload();
    for v in &values {
        assert_valid(ng.port, Req::get("/index.html"), v);
    }
    let log = ng.error_log();
    assert_eq!(lines_with(&log, &["5 sessions loaded from state file"]).len(), 1, "{log}");
    ng.check_logs();
}

/// A truncated, damaged, foreign or missing file: one `[warn]` saying why, an empty table
/// (the old cookies are not valid), and the start goes on.
#[test]
fn a_bad_state_file_is_one_warn_and_an_empty_start() {
    let (_dir, state) = state_dir();
    let mut ng = Nginx::start_template(&conf_with(&state, ""), 2);
    let value = new_session(ng.port, Req::get("/index.html"));
    stop_with(&mut ng, libc::SIGQUIT);
    let good = fs::read(&state).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() - 10].to_vec()),
        ("checksum mismatch", flipped),
        ("not a sessions state file", b"# some other file\n".to_vec()),
        ("format version 7", {
            let mut v = good.clone();
            v[8] = 7;
            v
        }),
    ];
    for (why, bytes) in cases {
        fs::write(&state, bytes).unwrap();
        let mut ng = Nginx::start_template(&conf_with(&state, ""), 2);
        assert_one_warn(&ng, why);
        let r = Req::get("/index.html").sid(&value).send(ng.port);
        assert_ne!(r.st(), "valid", "{why}: a session came back from a bad file: {r}");
        // The stop writes a good file again; put the bad one back for the next case.
        stop_with(&mut ng, libc::SIGQUIT);
    }
}

/// Records past their expiry when the file is loaded are left out.
#[test]
fn expired_records_are_not_loaded() {
    let (_dir, state) = state_dir();
    let mut ng = Nginx::start_template(&conf_with(&state, ""), 2);
    let kept = new_session(ng.port, Req::get("/index.html"));
    let expired = new_session(ng.port, Req::get("/index.html"));
    stop_with(&mut ng, libc::SIGQUIT);

    // As if the file had waited past the second session's idle timeout.
    let signer = Signer::new(SECRET.as_bytes());
    let key = signer.open(SID.as_bytes(), expired.as_bytes()).unwrap().store_key();
    let mut snapshot = decode(&state);
    let entry = snapshot.entries.iter_mut().find(|e| e.key == key).unwrap();
    entry.expires = now() - 1;
    fs::write(&state, snapshot.encode()).unwrap();

    let ng = Nginx::start_template(&conf_with(&state, ""), 2);
    let log = ng.error_log();
    assert_eq!(
        lines_with(&log, &["1 sessions loaded from state file", "(1 expired"]).len(),
        1,
        "{log}"
    );
    assert_valid(ng.port, Req::get("/index.html"), &kept);
    let r = Req::get("/index.html").sid(&expired).send(ng.port);
    assert_ne!(r.st(), "valid", "{r}");
    ng.check_logs();
}

/// Masters of a daemonized NGINX (the binary upgrade test's), killed with their workers if
/// the test fails half-way.
struct Daemons(Vec<u32>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for &pid in &self.0 {
            for p in children_of(pid).into_iter().chain([pid]) {
                // SAFETY: kill(2) on processes this test started.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

fn read_pid(path: &Path) -> u32 {
    fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// A binary upgrade (USR2, then QUIT to the old master): the new master loads the last
/// periodic write, the old master leaves the file to it, and the new master's stop writes
/// it. NGINX refuses USR2 from a master whose parent is still the process that started it,
/// so this instance runs as a daemon (`daemon on`), outside the `Nginx` harness.
#[test]
fn binary_upgrade_keeps_sessions() {
    let (_dir, state) = state_dir();
    let prefix = TempDir::new("upgrade");
    write_html(&prefix.path);
    let port = free_port();
    let conf = prefix.path.join("conf/nginx.conf");
    let text = conf_with(&state, "sessions_state_interval 1s;")
        .replace("daemon off;", "daemon on;")
        .replace("%%PREFIX%%", prefix.path.to_str().unwrap())
        .replace("%%PORT%%", &port.to_string())
        .replace("%%MODULE%%", module_so().to_str().unwrap());
    fs::write(&conf, text).unwrap();
    let status = std::process::Command::new(nginx_bin())
        .arg("-p")
        .arg(&prefix.path)
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "nginx did not start");
    let pid_file = prefix.path.join("logs/nginx.pid");
    let mut daemons = Daemons(Vec::new());
    wait_for("the master's pid file", || read_pid(&pid_file) != 0);
    let old = read_pid(&pid_file);
    daemons.0.push(old);
    wait_for("two workers", || children_of(old).len() >= 2);

    let values: Vec<String> = (0..5).map(|_| new_session(port, Req::get("/index.html"))).collect();
    wait_for("a periodic write with the 5 sessions", || {
        fs::read(&state)
            .ok()
            .and_then(|b| Snapshot::decode(&b).ok())
            .is_some_and(|s| s.entries.len() == 5)
    });
    // SAFETY: kill(2) on the master this test started.
    unsafe { libc::kill(old as libc::pid_t, libc::SIGUSR2) };
    let mut new = 0;
    wait_for("the new master and its workers", || {
        new = read_pid(&pid_file);
        new != 0 && new != old && children_of(new).len() >= 2
    });
    daemons.0.push(new);
    // The old master and its workers go; the new ones answer.
    // SAFETY: as above.
    unsafe { libc::kill(old as libc::pid_t, libc::SIGQUIT) };
    wait_for("the old master to exit", || !Path::new(&format!("/proc/{old}")).exists());
    for v in &values {
        assert_valid(port, Req::get("/index.html"), v);
    }
    // SAFETY: kill(2) on the new master, started by the old one at our request.
    unsafe { libc::kill(new as libc::pid_t, libc::SIGQUIT) };
    wait_for("the new master to exit", || !Path::new(&format!("/proc/{new}")).exists());

    let log = fs::read_to_string(prefix.path.join("logs/error.log")).unwrap();
    assert_eq!(lines_with(&log, &["5 sessions loaded from state file"]).len(), 1, "{log}");
    assert_eq!(lines_with(&log, &["left to the new binary"]).len(), 1, "{log}");
    assert_eq!(lines_with(&log, &["5 sessions written to state file"]).len(), 1, "{log}");
    let bad: Vec<&str> =
        log.lines().filter(|l| FORBIDDEN_LOG.iter().any(|f| l.contains(f))).collect();
    assert!(bad.is_empty(), "forbidden lines in error.log:\n{}", bad.join("\n"));
}

#[test]
fn state_directives_are_checked() {
    let http = |zone: &str, extra: &str| {
        format!("    sessions_zone {zone};\n    {extra}\n    server {{ listen 127.0.0.1:%%PORT%%; location / {{ sessions on; }} }}\n")
    };
    for (zone, extra, at) in [
        ("s:1m state=", "", "sessions_zone"),
        ("s:1m keep=/tmp/x", "", "sessions_zone"),
        ("s:1m state=a state=b", "", "sessions_zone"),
        ("s:1m state=x.state", "sessions_state_interval 0;", "sessions_state_interval"),
        ("s:1m state=x.state", "sessions_state_interval soon;", "sessions_state_interval"),
        ("s:1m state=x.state", "sessions_state_interval 500ms;", "sessions_state_interval"),
        (
            "s:1m state=x.state",
            "sessions_state_interval 1s; sessions_state_interval 2s;",
            "sessions_state_interval",
        ),
    ] {
        let t = nginx_t_http(&http(zone, extra));
        t.assert_emerg(Some(line_of(&t.conf_text, at)));
    }
    // A relative path is under the prefix; `nginx -t` does not read the file.
    let t = nginx_t_http(&http("s:1m state=logs/sessions.state", "sessions_state_interval 5m;"));
    t.assert_ok();
    assert!(!t.stderr.contains("state file"), "{}", t.stderr);
}
