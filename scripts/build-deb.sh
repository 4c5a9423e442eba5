#!/usr/bin/env bash
# `make deb`: the Debian 12 package libnginx-mod-http-sessions for Debian's packaged NGINX,
# laid out like Debian's own libnginx-mod-* packages and built with plain dpkg-deb:
#
#   /usr/lib/nginx/modules/ngx_http_sessions_module.so        (stripped)
#   /usr/share/nginx/modules-available/mod-http-sessions.conf  (the load_module line)
#   /etc/nginx/modules-enabled/50-mod-http-sessions.conf       (symlink, made by postinst)
#
# It depends on the exact nginx-abi-* that the installed nginx provides, so apt refuses to
# pair it with another NGINX build. Needs nginx, nginx-dev and dpkg-dev (make deb-deps).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

package=libnginx-mod-http-sessions
conf_name=mod-http-sessions.conf
link_name=50-$conf_name
so_name=ngx_http_sessions_module.so

for tool in dpkg-deb dpkg-shlibdeps strip; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-deb: $tool is missing; as root: make deb-deps" >&2
        exit 1
    fi
done
if [ ! -f /usr/share/nginx/src/conf_flags ]; then
    echo "build-deb: Debian's nginx-dev is not installed; as root: make deb-deps" >&2
    exit 1
fi

# The ABI the installed nginx provides (the `nginx` package on Debian 12; older releases
# had it on nginx-core/-full/-light/-extras): exactly one, for the version nginx-dev ships.
abi=$(dpkg-query -W -f='${db:Status-Abbrev} ${Provides}\n' 2>/dev/null \
    | awk '$1 == "ii"' | grep -o 'nginx-abi-[0-9][^ ,]*' | sort -u || true)
if [ -z "$abi" ]; then
    echo "build-deb: no installed package provides nginx-abi-*; as root: make deb-deps" >&2
    exit 1
fi
if [ "$(echo "$abi" | wc -l)" -ne 1 ]; then
    echo "build-deb: several nginx ABIs installed: $abi" >&2
    exit 1
fi
src_version=$(sed -n 's/^#define NGINX_VERSION *"\([^"]*\)".*/\1/p' /usr/share/nginx/src/src/core/nginx.h)
case "$abi" in
    "nginx-abi-$src_version-"*) ;;
    *) echo "build-deb: nginx provides $abi but nginx-dev ships nginx $src_version" >&2; exit 1 ;;
esac

bash scripts/build-debian.sh

crate_version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -1)
version="${DEB_VERSION:-$crate_version-1}"
arch=$(dpkg --print-architecture)
out="$repo/build/deb"
root="$out/root"
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/usr/lib/nginx/modules" "$root/usr/share/nginx/modules-available" \
    "$root/usr/share/doc/$package"

# Debian strips shipped objects (dh_strip); the symbols NGINX resolves stay dynamic.
strip --strip-unneeded -o "$root/usr/lib/nginx/modules/$so_name" build/debian/$so_name
chmod 0644 "$root/usr/lib/nginx/modules/$so_name"
echo "load_module modules/$so_name;" >"$root/usr/share/nginx/modules-available/$conf_name"
cat >"$root/usr/share/doc/$package/copyright" <<END
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ngx_http_sessions_module

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
END

# Shared-library dependencies of the .so (libc6, libgcc-s1), as dh_shlibdeps would compute
# them; dpkg-shlibdeps wants a debian/control, so it runs in a scratch directory.
shlib_dir=$(mktemp -d)
trap 'rm -rf "$shlib_dir"' EXIT
mkdir -p "$shlib_dir/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$package" "$package" \
    >"$shlib_dir/debian/control"
shlibs=$(cd "$shlib_dir" && dpkg-shlibdeps -O "$root/usr/lib/nginx/modules/$so_name" \
    | sed -n 's/^shlibs:Depends=//p')

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<END
Package: $package
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-ngx_http_sessions_module maintainers <root@localhost>}
Installed-Size: $installed_size
Depends: $abi${shlibs:+, $shlibs}
Recommends: nginx
Section: httpd
Priority: optional
Description: HTTP sessions for NGINX (signed cookie, shared memory or Redis)
 ngx_http_sessions_module gives every visitor a random session ID in a cookie
 signed with a server secret, keeps a server-side session record in NGINX
 shared memory or Redis, and enforces idle, rolling and absolute timeouts and
 optional binding to the client address and User-Agent.
END

# Maintainer scripts with the behaviour of dh_nginx's for Debian's libnginx-mod-*: the
# modules-enabled link is made on a fresh install; `remove` renames it to *.removed (so
# an admin who deleted it keeps it deleted across upgrades and a reinstall restores it);
# `purge` deletes it; nginx is asked to reload through its nginx-reload trigger.
cat >"$root/DEBIAN/postinst" <<END
#!/bin/sh
set -e
enabled=/etc/nginx/modules-enabled/$link_name
restore=false
if [ -L "\$enabled.removed" ]; then
    rm -f "\$enabled.removed"
    restore=true
fi
# \$2 is the previously configured version: empty on a fresh install.
if [ "\$1" = configure ] && { [ -z "\$2" ] || [ "\$restore" = true ]; }; then
    mkdir -p /etc/nginx/modules-enabled
    ln -sf /usr/share/nginx/modules-available/$conf_name "\$enabled"
fi
if [ "\$1" = configure ] && command -v dpkg-trigger >/dev/null 2>&1; then
    dpkg-trigger --no-await nginx-reload
fi
exit 0
END
cat >"$root/DEBIAN/prerm" <<END
#!/bin/sh
set -e
enabled=/etc/nginx/modules-enabled/$link_name
if [ "\$1" = remove ] || [ "\$1" = deconfigure ]; then
    if [ -L "\$enabled" ]; then
        mv -f "\$enabled" "\$enabled.removed"
    fi
fi
exit 0
END
cat >"$root/DEBIAN/postrm" <<END
#!/bin/sh
set -e
enabled=/etc/nginx/modules-enabled/$link_name
case "\$1" in
    purge)
        rm -f "\$enabled" "\$enabled.removed"
        ;;
    remove)
        if [ -L "\$enabled" ]; then
            mv -f "\$enabled" "\$enabled.removed"
        fi
        if command -v dpkg-trigger >/dev/null 2>&1; then
            dpkg-trigger --no-await nginx-reload
        fi
        ;;
esac
exit 0
END
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"

deb="$out/${package}_${version}_$arch.deb"
rm -f "$out"/*.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "built ${deb#"$repo"/} ($(stat -c %s "$deb") bytes; Depends: $abi${shlibs:+, $shlibs})"
