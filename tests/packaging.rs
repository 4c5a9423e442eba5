//! Packaging: the module built by NGINX's own build system (`config`: `./configure
//! --add-dynamic-module=<repo> && make modules`) loads and serves sessions; the Debian
//! package (`make deb`) has Debian's layout and loads into Debian's `/usr/sbin/nginx`.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// The cargo that runs the tests, so the nested builds use the same toolchain.
fn cargo() -> &'static str {
    option_env!("CARGO").unwrap_or("cargo")
}

/// Runs `cmd`, panics with its output unless it succeeds.
fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    out
}

fn stdout_of(cmd: &mut Command, what: &str) -> String {
    String::from_utf8_lossy(&run(cmd, what).stdout).into_owned()
}

/// The NGINX source vendored in the `nginx-src` crate, located the way `nginx-sys` does with
/// the `vendored` feature: the `nginx/` directory next to that crate's manifest, for the
/// version Cargo.lock resolves (asked from `cargo metadata`, so no version is hard-coded).
fn vendored_nginx_source() -> PathBuf {
    let metadata = stdout_of(
        Command::new(cargo())
            .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
            .arg(root().join("Cargo.toml")),
        "cargo metadata",
    );
    const KEY: &str = "\"manifest_path\":\"";
    let source = metadata
        .match_indices(KEY)
        .filter_map(|(at, _)| {
            let rest = &metadata[at + KEY.len()..];
            let manifest = Path::new(&rest[..rest.find('"')?]);
            let crate_dir = manifest.parent()?;
            let dir_name = crate_dir.file_name()?.to_str()?;
            dir_name.starts_with("nginx-src-").then(|| crate_dir.join("nginx"))
        })
        .next()
        .expect("cargo metadata lists no nginx-src package (is the vendored feature on?)");
    assert!(source.join("src/core/nginx.h").is_file(), "no NGINX source at {}", source.display());
    source
}

/// `NGINX_VERSION` of a source tree, e.g. "1.28.3".
fn tree_version(tree: &Path) -> String {
    let header = fs::read_to_string(tree.join("src/core/nginx.h")).unwrap();
    header
        .lines()
        .find_map(|l| l.strip_prefix("#define NGINX_VERSION"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("NGINX_VERSION in nginx.h")
}

#[test]
fn configure_add_dynamic_module_builds_a_module_that_serves_sessions() {
    let started = Instant::now();
    let work = TempDir::new("configure");
    let tree = work.path.join("nginx");
    run(
        Command::new("cp").arg("-r").arg(vendored_nginx_source()).arg(&tree),
        "copying the vendored NGINX source",
    );
    // A release tarball has ./configure, the nginx-src crate the repository's auto/configure.
    let configure = ["configure", "auto/configure"]
        .iter()
        .map(|c| tree.join(c))
        .find(|c| c.is_file())
        .expect("no configure script in the NGINX tree");
    run(
        Command::new(&configure)
            .current_dir(&tree)
            .arg("--with-compat")
            .arg(format!("--add-dynamic-module={}", root().display()))
            .env("NGX_CARGO", cargo())
            // Outside the throw-away tree, so a second run only rebuilds what changed.
            .env("NGX_CARGO_TARGET_DIR", root().join("target/packaging")),
        "configure --add-dynamic-module",
    );
    run(Command::new("make").current_dir(&tree).arg("modules"), "make modules");
    let so = tree.join("objs/ngx_http_sessions_module.so");
    assert!(so.is_file(), "make modules did not produce {}", so.display());
    let built_in = started.elapsed();

    // NGINX generated the module list; load_module places the module by its order.
    let modules_c = fs::read_to_string(tree.join("objs/ngx_http_sessions_module_modules.c"))
        .expect("objs/ngx_http_sessions_module_modules.c");
    let order: String = modules_c.split_whitespace().collect();
    assert!(
        order.contains(
            r#"char*ngx_module_order[]={"ngx_http_sessions_module","ngx_http_headers_filter_module",NULL};"#
        ),
        "unexpected module order in:\n{modules_c}"
    );

    // Both are --with-compat builds of the same source, so build/sbin/nginx accepts the
    // module (same version and signature); the version is checked for a clear message.
    let version =
        String::from_utf8_lossy(&run(Command::new(nginx_bin()).arg("-v"), "nginx -v").stderr)
            .into_owned();
    let expected = tree_version(&tree);
    assert!(
        version.contains(&format!("nginx/{expected}\n")),
        "build/sbin/nginx is not NGINX {expected} ({version}): run `make build`"
    );

    let prefix = TempDir::new("configure-run");
    write_html(&prefix.path);
    let port = free_port();
    let conf = prefix.path.join("conf/nginx.conf");
    let text = main_conf(&site(&default_http(""), ""), 2)
        .replace("%%MODULE%%", so.to_str().unwrap())
        .replace("%%PREFIX%%", prefix.path.to_str().unwrap())
        .replace("%%PORT%%", &port.to_string());
    fs::write(&conf, text).unwrap();

    let (ok, output) = nginx_t_file(&prefix.path, &conf);
    assert!(ok && output.contains("test is successful"), "nginx -t:\n{output}");

    let mut nginx = Nginx::start_file(prefix, conf, port, 2, &[]);
    let first = Req::get("/").send(port);
    assert_eq!(first.status, 200, "{first}");
    assert_eq!(first.st(), "new", "{first}");
    let sid = first.sid();
    let again = Req::get("/").sid(&sid).send(port);
    assert_eq!(again.st(), "valid", "{again}");
    assert!(again.no_cookie(SID), "{again}");
    nginx.stop();
    nginx.check_logs();
    eprintln!("configure + make modules: {:.0?}; whole test: {:.0?}", built_in, started.elapsed());
}

/// Where Debian's nginx and nginx-dev put what `make deb` needs.
const DEBIAN_NGINX: &str = "/usr/sbin/nginx";
const DEBIAN_SOURCE_FLAGS: &str = "/usr/share/nginx/src/conf_flags";
const PACKAGE: &str = "libnginx-mod-http-sessions";

/// The `nginx-abi-*` that the installed Debian nginx provides.
fn installed_nginx_abi() -> String {
    let provides = stdout_of(
        Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev} ${Provides}\n"]),
        "dpkg-query",
    );
    let mut abis: Vec<&str> = provides
        .lines()
        .filter(|l| l.starts_with("ii"))
        .flat_map(|l| l.split([' ', ',']))
        .filter(|w| w.starts_with("nginx-abi-"))
        .collect();
    abis.sort();
    abis.dedup();
    assert_eq!(abis.len(), 1, "expected one installed nginx-abi-*: {abis:?}");
    abis[0].to_string()
}

#[test]
fn debian_package_has_debian_layout_and_loads_into_debian_nginx() {
    if !Path::new(DEBIAN_NGINX).is_file() || !Path::new(DEBIAN_SOURCE_FLAGS).is_file() {
        eprintln!(
            "SKIPPED: Debian's nginx and nginx-dev are not installed ({DEBIAN_NGINX}, \
             {DEBIAN_SOURCE_FLAGS}); `make deb-deps` as root installs them"
        );
        return;
    }
    let started = Instant::now();
    let out =
        stdout_of(Command::new("bash").arg("scripts/build-deb.sh").current_dir(root()), "make deb");
    let deb_dir = root().join("build/deb");
    let debs: Vec<PathBuf> = fs::read_dir(&deb_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {}: {debs:?}\n{out}", deb_dir.display());
    let deb = &debs[0];

    let field = |name: &str| {
        stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name), "dpkg-deb -f")
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), PACKAGE);
    let depends = field("Depends");
    let abi = installed_nginx_abi();
    assert_eq!(depends.split(',').next(), Some(abi.as_str()), "Depends: {depends}");
    assert_eq!(
        field("Architecture"),
        stdout_of(Command::new("dpkg").arg("--print-architecture"), "dpkg").trim()
    );

    let listing = stdout_of(Command::new("dpkg-deb").arg("-c").arg(deb), "dpkg-deb -c");
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for expected in [
        "./usr/lib/nginx/modules/ngx_http_sessions_module.so",
        "./usr/share/nginx/modules-available/mod-http-sessions.conf",
        "./usr/share/doc/libnginx-mod-http-sessions/copyright",
    ] {
        assert!(files.contains(&expected), "{expected} missing from the package:\n{listing}");
    }
    assert_eq!(files.len(), 3, "unexpected files in the package:\n{listing}");

    // The maintainer scripts manage the modules-enabled link like Debian's libnginx-mod-*.
    let unpacked = TempDir::new("deb");
    let control = unpacked.path.join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control), "dpkg-deb -e");
    let postinst = fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("enabled=/etc/nginx/modules-enabled/50-mod-http-sessions.conf")
            && postinst.contains(
                "ln -sf /usr/share/nginx/modules-available/mod-http-sessions.conf \"$enabled\""
            ),
        "postinst:\n{postinst}"
    );
    for script in ["prerm", "postrm"] {
        let text = fs::read_to_string(control.join(script)).unwrap();
        assert!(text.contains("50-mod-http-sessions.conf"), "{script}:\n{text}");
    }

    let files_root = unpacked.path.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&files_root), "dpkg-deb -x");
    let enable_conf = files_root.join("usr/share/nginx/modules-available/mod-http-sessions.conf");
    assert_eq!(
        fs::read_to_string(&enable_conf).unwrap(),
        "load_module modules/ngx_http_sessions_module.so;\n"
    );

    // Debian's nginx, with the package's own load_module line: its relative path resolves
    // under the prefix, where modules/ points into the unpacked package (on a real system
    // /usr/share/nginx/modules points to /usr/lib/nginx/modules).
    let prefix = &unpacked.path;
    std::os::unix::fs::symlink(files_root.join("usr/lib/nginx/modules"), prefix.join("modules"))
        .unwrap();
    let p = prefix.to_str().unwrap();
    let conf = prefix.join("conf/nginx.conf");
    fs::write(
        &conf,
        format!(
            r#"include {enable};
pid {p}/logs/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/temp/client_body;
    proxy_temp_path {p}/temp/proxy;
    fastcgi_temp_path {p}/temp/fastcgi;
    uwsgi_temp_path {p}/temp/uwsgi;
    scgi_temp_path {p}/temp/scgi;
    sessions_secret {SECRET};
    server {{
        listen 127.0.0.1:{port};
        location / {{ sessions on; }}
    }}
}}
"#,
            enable = enable_conf.display(),
            port = free_port(),
        ),
    )
    .unwrap();
    let test = Command::new(DEBIAN_NGINX)
        .arg("-t")
        .arg("-p")
        .arg(format!("{p}/"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run Debian's nginx -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stderr),
        String::from_utf8_lossy(&test.stdout)
    );
    assert!(test.status.success() && text.contains("test is successful"), "nginx -t:\n{text}");
    assert!(!FORBIDDEN_LOG.iter().any(|f| text.contains(f)), "nginx -t:\n{text}");
    eprintln!(
        "make deb + checks: {:.0?}; {} ({} bytes)",
        started.elapsed(),
        deb.file_name().unwrap().to_string_lossy(),
        fs::metadata(deb).unwrap().len()
    );
}
