#!/usr/bin/env bash
# install.sh: build taskctl and task-executor in release mode and install them,
# with the shipped plugins as DIR/bin/taskctl-NAME.
#
# Usage:
#   ./install.sh [--prefix DIR] [--no-images]  build, then install into DIR/bin
#   ./install.sh --debug ...                   taskctl from the dev profile
#                                              (faster to build, slower to run)
#   ./install.sh --no-build ...                install what the target directory
#                                              holds (after your own cargo build)
#   ./install.sh [--prefix DIR] --uninstall    remove what a previous install put in DIR
#   ./install.sh --help
#
# DIR defaults to $HOME/.local (no root needed); use --prefix /usr/local for a
# system-wide install. The build honors CARGO_TARGET_DIR and Cargo's own config.
# What was installed is listed in DIR/share/taskctl/install-manifest, so that
# --uninstall removes exactly those files (and the directories it created).
#
# When a Docker engine answers and the user is root, it also builds the local
# stack's service images offline from Debian packages (scripts/images.sh:
# about 2.5 minutes the first time, nothing when they exist), which
# profiles/local.yaml runs; --no-images skips that.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BINARIES=(taskctl task-executor)

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# abspath PATH: PATH made absolute against the current directory (the path
# need not exist yet).
abspath() {
    case $1 in
    /*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$PWD" "$1" ;;
    esac
}

# The target directory cargo will use, from cargo itself: it accounts for
# CARGO_TARGET_DIR, build.target-dir in .cargo/config.toml and the default.
target_dir() {
    local meta dir
    meta=$(cargo metadata --format-version 1 --no-deps --locked) || die "cargo metadata failed (see above)."
    dir=$(printf '%s' "$meta" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [[ -n $dir ]] || die "could not read the target directory from 'cargo metadata'."
    printf '%s' "$dir"
}

do_install() {
    local prefix=$1 profile=$2 build=$3 bindir="$1/bin" sharedir="$1/share/taskctl" manifest target bin src
    manifest="$sharedir/install-manifest"

    command -v cargo >/dev/null ||
        die "cargo was not found on PATH: install Rust (https://rustup.rs), make sure ~/.cargo/bin is on PATH, then run ./install.sh again."

    # A relative CARGO_TARGET_DIR means "relative to where I ran this": pin it
    # down before changing into the repository.
    if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
        CARGO_TARGET_DIR=$(abspath "$CARGO_TARGET_DIR")
        export CARGO_TARGET_DIR
    fi
    # From the repository, so that its .cargo/config.toml (if any) applies.
    cd "$REPO"
    # The agent is linked statically: the docker target packs it into a
    # `scratch` image, which has no libc. An explicit --target keeps these
    # flags away from the host artifacts (build scripts, proc macros).
    local triple out=release
    triple=$(rustc -vV | sed -n 's/^host: //p')
    [[ $profile == release ]] || out=debug
    if ((build)); then
        log "building taskctl ($profile)"
        if [[ $profile == release ]]; then
            cargo build --release --locked -p taskctl
        else
            cargo build --locked -p taskctl
        fi
        log "building task-executor (release, static, $triple)"
        env "CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static" \
            cargo build --release --locked -p task-executor --target "$triple"
    else
        log "not building (--no-build): installing what the target directory holds"
    fi
    target=$(target_dir)

    # Record the directories this install creates, so --uninstall removes
    # them again, but never one that existed before.
    # On a reinstall, the directories the first install created stay ours.
    local created=() d kind sum path
    if [[ -f $manifest ]]; then
        while read -r kind sum path; do
            [[ $kind != dir ]] || created+=("$path")
        done <"$manifest"
    fi
    for d in "$prefix" "$bindir" "$prefix/share" "$sharedir"; do
        [[ -d $d ]] || created+=("$d")
    done
    mkdir -p "$bindir" "$sharedir"

    local entries=()
    # put SRC DEST: copy then rename, since replacing a binary that is
    # running fails with "Text file busy" if written in place and a rename
    # always works; recorded for --uninstall.
    put() {
        local tmp
        tmp=$(mktemp "$(dirname "$2")/.$(basename "$2").XXXXXX")
        cp "$1" "$tmp"
        chmod 755 "$tmp"
        mv -f "$tmp" "$2"
        entries+=("file $(sha256sum "$2" | cut -d' ' -f1) $2")
        log "installed $2"
    }
    for bin in "${BINARIES[@]}"; do
        src="$target/$out/$bin"
        [[ $bin != task-executor ]] || src="$target/$triple/release/$bin"
        [[ -x $src ]] || die "there is no $src: build it first, or run without --no-build."
        put "$src" "$bindir/$bin"
    done

    # The shipped plugins, as taskctl-NAME on PATH, where taskctl finds
    # them from any directory (plugins/README.md).
    local plugin
    for plugin in "$REPO"/plugins/*; do
        [[ -f $plugin && -x $plugin ]] || continue
        put "$plugin" "$bindir/taskctl-$(basename "$plugin")"
    done

    {
        echo "# Written by taskctl's install.sh; read by install.sh --uninstall."
        printf '%s\n' "${entries[@]}"
        for d in "${created[@]}"; do
            printf 'dir - %s\n' "$d"
        done
    } >"$manifest"

    case ":$PATH:" in
    *":$bindir:"*) ;;
    *) log "note: $bindir is not on your PATH; add it, e.g. in ~/.profile: export PATH=\"$bindir:\$PATH\"" ;;
    esac
}

do_uninstall() {
    local prefix=$1 manifest="$1/share/taskctl/install-manifest" kind sum path dirs=() i
    if [[ ! -f $manifest ]]; then
        for i in "${BINARIES[@]}"; do
            [[ ! -e $prefix/bin/$i ]] ||
                die "$prefix/bin/$i exists but $manifest does not, so install.sh did not install it there: remove it by hand if it is yours to remove."
        done
        log "nothing to uninstall under $prefix (pass the --prefix used to install)"
        return 0
    fi

    while read -r kind sum path; do
        case $kind in
        file)
            if [[ ! -e $path ]]; then
                log "already gone: $path"
            elif [[ "$(sha256sum "$path" | cut -d' ' -f1)" != "$sum" ]]; then
                # Someone replaced it since: not ours to delete.
                log "left in place (changed since install.sh installed it): $path"
            else
                rm -f "$path"
                log "removed $path"
            fi
            ;;
        dir) dirs+=("$path") ;;
        *) ;; # comment line
        esac
    done <"$manifest"
    rm -f "$manifest"

    # Deepest first; only directories this install created, and only if empty.
    for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
        if rmdir "${dirs[i]}" 2>/dev/null; then
            log "removed empty directory ${dirs[i]}"
        fi
    done
    rmdir "$prefix/share/taskctl" 2>/dev/null || true
}

main() {
    local prefix="$HOME/.local" uninstall=0 images=1 profile=release build=1
    while (($# > 0)); do
        case $1 in
        --prefix)
            [[ $# -ge 2 && -n $2 ]] || die "--prefix needs a directory, e.g. --prefix /usr/local."
            prefix=$2
            shift 2
            ;;
        --prefix=*)
            prefix=${1#--prefix=}
            [[ -n $prefix ]] || die "--prefix needs a directory, e.g. --prefix=/usr/local."
            shift
            ;;
        --uninstall)
            uninstall=1
            shift
            ;;
        --no-images)
            images=0
            shift
            ;;
        --debug)
            profile=dev
            shift
            ;;
        --no-build)
            build=0
            shift
            ;;
        -h | --help)
            usage
            return 0
            ;;
        *) die "unknown option '$1'; see ./install.sh --help." ;;
        esac
    done
    prefix=$(abspath "$prefix")
    prefix=${prefix%/}
    [[ -n $prefix ]] || die "refusing to use / as the prefix."

    if ((uninstall)); then
        do_uninstall "$prefix"
    else
        do_install "$prefix" "$profile" "$build"
        if ((images)); then
            if ! docker info >/dev/null 2>&1; then
                log "no Docker engine answers: skipping the service images (scripts/images.sh builds them later)"
            elif ((EUID != 0)); then
                log "building the service images needs root (debootstrap, chroot): run 'sudo scripts/images.sh' for profiles/local.yaml"
            else
                log "building the local stack's service images offline (scripts/images.sh)"
                "$REPO/scripts/images.sh" rabbitmq postgres prometheus alertmanager openbao
            fi
        fi
    fi
}

main "$@"
