#!/usr/bin/env bash
# Builds the module for Debian's packaged NGINX (`make debian`). Debian's nginx-dev ships
# the patched source tree and the exact configure flags of its nginx; the module is built
# against a configured copy of that tree, without the vendored NGINX. The result loads
# into /usr/sbin/nginx (version and configure signature match), not into build/sbin/nginx.
set -euo pipefail
cd "$(dirname "$0")/.."

src=/usr/share/nginx/src
if [ ! -f "$src/conf_flags" ]; then
    echo "build-debian: Debian's nginx-dev is not installed; as root: apt-get install nginx nginx-dev" >&2
    exit 1
fi
work="${TMPDIR:-/tmp}/ngx-sessions-debian-src"
rm -rf "$work"
cp -r "$src" "$work"
# Only configure is needed: it writes objs/ngx_auto_config.h and objs/Makefile, which the
# bindings are generated from.
(cd "$work" && source ./conf_flags && ./configure "${NGX_CONF_FLAGS[@]}" >/dev/null)
NGINX_SOURCE_DIR="$work" CARGO_TARGET_DIR=target/debian \
    cargo build --release --no-default-features --features export-modules
mkdir -p build/debian
cp -f target/debian/release/libngx_http_sessions_module.so build/debian/ngx_http_sessions_module.so
echo "built build/debian/ngx_http_sessions_module.so for $(cd "$work" && grep -m1 -o 'NGINX_VERSION *"[^"]*"' src/core/nginx.h)"
echo "install: cp build/debian/ngx_http_sessions_module.so /usr/lib/nginx/modules/"
echo "   then: load_module modules/ngx_http_sessions_module.so;  at the top of nginx.conf"
