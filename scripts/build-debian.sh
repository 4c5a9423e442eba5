#!/usr/bin/env bash
# Builds the module for Debian's packaged NGINX (`make debian`) the way Debian builds its
# libnginx-mod-* packages: nginx-dev ships the patched source tree and the exact configure
# flags of /usr/sbin/nginx (conf_flags); a copy of that tree is configured with them plus
# --add-dynamic-module=<this repo> (see `config`), and `make modules` builds the .so. The
# result loads into /usr/sbin/nginx (same version and configure signature), not into
# build/sbin/nginx.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

src=/usr/share/nginx/src
if [ ! -f "$src/conf_flags" ]; then
    echo "build-debian: Debian's nginx-dev is not installed; as root: make deb-deps" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/ngx-sessions-debian-src.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$src/." "$work"
cd "$work"
# shellcheck source=/dev/null
source ./conf_flags
# A target dir outside the throw-away tree keeps later builds incremental.
NGX_CARGO_TARGET_DIR="$repo/target/debian" \
    ./configure "${NGX_CONF_FLAGS[@]}" --add-dynamic-module="$repo" >configure.log \
    || { tail -20 configure.log >&2; exit 1; }
make -f objs/Makefile modules >make.log 2>&1 || { tail -40 make.log >&2; exit 1; }

mkdir -p "$repo/build/debian"
cp -f objs/ngx_http_sessions_module.so "$repo/build/debian/ngx_http_sessions_module.so"
version=$(sed -n 's/^#define NGINX_VERSION *"\([^"]*\)".*/\1/p' src/core/nginx.h)
echo "built build/debian/ngx_http_sessions_module.so for nginx $version (Debian's nginx-dev)"
