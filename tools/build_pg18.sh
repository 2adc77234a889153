#!/usr/bin/env bash
# Builds PostgreSQL 18.3 from the shared source tarball into a cache outside the clone and prints
# the path of its pg_config. Debian bookworm packages no server newer than 15, so CI builds one.
#
#   tools/build_pg18.sh            # -> /var/cache/pg_atx/postgresql-18.3-<sha12>/bin/pg_config (as root)
#
# The cache entry is keyed by the tarball's sha256 (and the configure flags below): an unchanged
# tarball is built once per machine, a changed one gets a new entry. Concurrent runs wait on a lock; a build happens in a temporary
# directory and is renamed into place only when complete, so a killed build leaves no half tree.
#
# ATX_PG18_TARBALL  the tarball (default: ../shared/postgres/postgresql-18.3.tar.gz next to the
#                   clone, else /work/shared/postgres/postgresql-18.3.tar.gz)
# ATX_CACHE_DIR     the cache (default /var/cache/pg_atx as root, else
#                   ${XDG_CACHE_HOME:-$HOME/.cache}/pg_atx)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=18.3
# The shared README's flags, plus libxml: Debian's and other distributions' servers have the xml
# type, and the tests bind an xml parameter.
CONFIGURE_FLAGS=(--without-readline --without-icu --with-openssl --with-libxml)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "build_pg18: $*" >&2; exit 1; }

tarball=${ATX_PG18_TARBALL:-}
if [ -z "$tarball" ]; then
    for t in "$ROOT/../shared/postgres/postgresql-$VERSION.tar.gz" \
        "/work/shared/postgres/postgresql-$VERSION.tar.gz"; do
        [ -f "$t" ] && { tarball=$t; break; }
    done
fi
if [ -z "$tarball" ] || [ ! -f "$tarball" ]; then
    die "no postgresql-$VERSION.tar.gz (set ATX_PG18_TARBALL)"
fi

if [ "$(id -u)" = 0 ]; then
    cache=${ATX_CACHE_DIR:-/var/cache/pg_atx}
else
    cache=${ATX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pg_atx}
fi
sha=$(sha256sum "$tarball" | cut -c1-64)
flags=$(printf '%s\n' "${CONFIGURE_FLAGS[@]}" | sha256sum | cut -c1-6)
key=$VERSION-${sha:0:12}-$flags
# "postgresql" in the prefix keeps PostgreSQL from adding a postgresql/ level under lib/ and share/.
dest=$cache/postgresql-$key

if [ -x "$dest/bin/pg_config" ]; then
    echo "$dest/bin/pg_config"
    exit 0
fi

# The server runs as `postgres` when we are root: every directory on the way must be searchable.
umask 022
mkdir -p "$cache"
chmod 0755 "$cache"

exec 9>"$cache/.postgresql-$key.lock"
if ! flock -n 9; then
    log "another run is building PostgreSQL $VERSION into $dest; waiting"
    flock 9
fi
if [ -x "$dest/bin/pg_config" ]; then # built while we waited
    echo "$dest/bin/pg_config"
    exit 0
fi
# Holding the lock, any temporary tree of this key is a killed build's leftover.
rm -rf "$cache/.build-$key".*

for tool in bison flex make cc perl xml2-config; do
    command -v "$tool" >/dev/null || die "$tool is missing (tools/atx deps installs it)"
done

tmp=$(mktemp -d "$cache/.build-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "building PostgreSQL $VERSION (sha256 ${sha:0:12}) into $dest; log: $tmp/build.log (about 7 min on 2 cores)"
start=$SECONDS
fail() {
    cp "$tmp/build.log" "$cache/build-$key.failed.log" 2>/dev/null || true
    die "$1; log: $cache/build-$key.failed.log"
}
if ! (
    set -e
    tar -xzf "$tarball" -C "$tmp"
    cd "$tmp/postgresql-$VERSION"
    # The prefix is the final place; make install stages under DESTDIR so the rename is the commit.
    ./configure --prefix="$dest" "${CONFIGURE_FLAGS[@]}"
    make -j"$(nproc)" world-bin
    make install-world-bin DESTDIR="$tmp/stage"
) >"$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    fail "the build failed"
fi
for f in bin/postgres bin/pg_config bin/initdb bin/psql lib/pgxs/src/test/regress/pg_regress \
    lib/pgcrypto.so lib/dblink.so share/extension/pgcrypto.control share/extension/dblink.control \
    include/server/postgres.h; do
    [ -e "$tmp/stage$dest/$f" ] || fail "the build lacks $f"
done
chmod 0755 "$tmp/stage$dest"
mv -T "$tmp/stage$dest" "$dest"
log "PostgreSQL $VERSION built in $((SECONDS - start)) s"
echo "$dest/bin/pg_config"
