# shellcheck shell=bash
# An earlier release of pg_atx built from its tagged sources, and a throwaway copy of the server to
# install releases into without touching the real one (tests/integration/upgrade_from_*.sh).
# Sourced after testlib.sh.
#
#   old_release_build VERSION    builds release VERSION (0.1, 0.2: tag vVERSION.0, else the commit
#                                CHANGELOG.md names) for PG_CONFIG's server into
#                                $ATX_BUILD_DIR/releases/VERSION, once per tree; sets OLD_BUILD.
#                                Returns 2 when the sources are not in this clone, 3 when that
#                                release does not compile for this server (build.log says why).
#   server_copy DIR              copies PG_CONFIG's server (binaries, module directory, share) under
#                                DIR at the same paths, which keeps it relocatable; sets
#                                ATX_PG_BINDIR to the copy (clusters started afterwards use it),
#                                COPY_PKGLIBDIR and COPY_SHAREDIR
#   install_build_into_copy BUILD
#                                the module, control file and scripts of a build tree, installed
#                                into the copy (a package upgrade: the old files are replaced)

# The commits of the releases, for a clone without the tags (CHANGELOG.md).
declare -A OLD_RELEASE_COMMIT=([0.1]=f242930 [0.2]=ef18406)

old_release_build() {
    local version=$1 commit dir stamp
    commit=$(git -C "$ATX_ROOT" rev-parse -q --verify "v$version.0^{commit}" 2>/dev/null) ||
        commit=$(git -C "$ATX_ROOT" rev-parse -q --verify "${OLD_RELEASE_COMMIT[$version]:-none}^{commit}" 2>/dev/null) ||
        return 2
    dir=$ATX_BUILD_DIR/releases/$version
    OLD_BUILD=$dir/build
    stamp="$commit $("$PG_CONFIG" --version) $PG_CONFIG"
    if [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ] && [ -f "$OLD_BUILD/ext/pg_atx.so" ] &&
        [ -x "$OLD_BUILD/applier/atx-applier" ]; then
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir/src"
    git -C "$ATX_ROOT" archive "$commit" | tar -x -C "$dir/src" || return 2
    # Debug: compiles in about two thirds of the time, and speed is not what is tested.
    if ! { cmake -S "$dir/src" -B "$OLD_BUILD" -DPG_CONFIG="$PG_CONFIG" -DCMAKE_BUILD_TYPE=Debug \
               -DATX_BUILD_TESTS=OFF -DATX_FAULT_INJECTION=OFF &&
           cmake --build "$OLD_BUILD" -j "$(nproc)"; } >"$dir/build.log" 2>&1; then
        return 3
    fi
    echo "$stamp" >"$dir/stamp"
}

server_copy() {
    local dir=$1 d
    for d in "$("$PG_CONFIG" --bindir)" "$("$PG_CONFIG" --pkglibdir)" "$("$PG_CONFIG" --sharedir)"; do
        mkdir -p "$dir$(dirname "$d")"
        [ -e "$dir$d" ] || cp -a "$d" "$dir$d" || return 1
    done
    chmod -R a+rX "$dir"
    ATX_PG_BINDIR=$dir$("$PG_CONFIG" --bindir)
    export ATX_PG_BINDIR
    COPY_PKGLIBDIR=$dir$("$PG_CONFIG" --pkglibdir)
    COPY_SHAREDIR=$dir$("$PG_CONFIG" --sharedir)
}

install_build_into_copy() {
    local build=$1 tmp
    tmp=$(mktemp -d)
    # DESTDIR: the build's install rules name the real server's directories; nothing goes there.
    DESTDIR=$tmp cmake --install "$build" >/dev/null || { rm -rf "$tmp"; return 1; }
    rm -f "$COPY_PKGLIBDIR/pg_atx.so" "$COPY_SHAREDIR"/extension/pg_atx[.-]*
    find "$tmp" -name pg_atx.so -exec cp {} "$COPY_PKGLIBDIR/" \;
    find "$tmp" -path '*/extension/pg_atx*' \( -name '*.sql' -o -name '*.control' \) \
        -exec cp {} "$COPY_SHAREDIR/extension/" \;
    rm -rf "$tmp"
    [ -f "$COPY_PKGLIBDIR/pg_atx.so" ] && [ -f "$COPY_SHAREDIR/extension/pg_atx.control" ]
}
