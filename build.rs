//! Build script: turn what `nginx-sys` learned about the NGINX tree into `cfg`s, and tell
//! the Makefile where that NGINX was built.
//!
//! `nginx-sys` must be a *direct* dependency for its `DEP_NGINX_*` metadata to reach us
//! (cargo's `links` rule, rust-lang/cargo#3544).

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        std::env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    if let Ok(features) = std::env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    // The request's Cookie headers became a linked list in 1.23.0 and `ngx_table_elt_t`
    // gained `next`; Debian 12 ships 1.22.1, so both layouts are supported.
    const VERSION_CHECKS: &[(u64, &str)] = &[(1_023_000, "nginx1_23_0")];
    for (_, name) in VERSION_CHECKS {
        println!("cargo::rustc-check-cfg=cfg({name})");
    }
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    if let Ok(version) = std::env::var("DEP_NGINX_VERSION_NUMBER") {
        let version: u64 = version.parse().unwrap_or(0);
        for (min, name) in VERSION_CHECKS {
            if version >= *min {
                println!("cargo::rustc-cfg={name}");
            }
        }
    }

    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    if let Ok(build_dir) = std::env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo::rustc-env=DEP_NGINX_BUILD_DIR={build_dir}");
        export_build_dir(&build_dir);
    }
}

/// Writes the NGINX build directory (where `nginx-sys` built the vendored NGINX, or the
/// tree it was pointed at) to `target/<profile>/nginx-build-dir`, so that `make build`
/// copies the binary of *this* build, not the newest of several `nginx-sys-*` dirs.
fn export_build_dir(build_dir: &str) {
    // OUT_DIR is target/<profile>/build/<package>-<hash>/out.
    let Some(out_dir) = std::env::var_os("OUT_DIR") else { return };
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    let file = profile_dir.join("nginx-build-dir");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(build_dir) {
        // A failure here only matters to `make build`, which then says what is missing.
        let _ = std::fs::write(&file, build_dir);
    }
}
