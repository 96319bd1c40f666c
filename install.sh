#!/usr/bin/env bash
# Installer for edge-gateway. Safe to run again: it updates what it installed and never
# overwrites an existing configuration file. Run ./install.sh --help for the options.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./install.sh [--dev] [--prefix DIR] [--no-systemd] [--create-user] [--python PATH]

  (no option)     Production install (needs root; re-runs itself with sudo when available):
                    /opt/edge-gateway/venv               self-contained venv: the libraries exactly as pinned
                                                         in config/requirements.lock (hashes checked), then the
                                                         package from this repo
                    /etc/edge-gateway/gateway.toml       written only if absent (mode 0640, root:edge-gateway):
                                                         the example's settings with a generated gateway id,
                                                         data_dir = the state directory and no devices (the
                                                         demo's published passwords are left out); the service
                                                         is started only if check-config --production passes
                    /var/lib/edge-gateway                state directory (mode 0750, edge-gateway:edge-gateway)
                    /etc/systemd/system/edge-gateway.service
                    /etc/systemd/system/edge-gateway.service.d/50-privileged-port.conf   only while the
                                                         config has a port below 1024 (CAP_NET_BIND_SERVICE)
                  Debian's mosquitto package when the config has broker.backend = "mosquitto" (the gateway
                  runs it as its child; Debian's own mosquitto service is kept off),
                  creates the system user edge-gateway (member of dialout for serial ports), then
                  systemctl daemon-reload && systemctl enable --now edge-gateway (restart when already
                  running, so an upgrade takes effect; neither while the config fails
                  check-config --production), and prints the next steps.
  --dev           Development setup instead: .venv in the repo with `pip install -e ".[test]"` (resolved
                  from pyproject.toml, not the lock), plus the Debian packages the tests need
                  (mosquitto, mosquitto-clients, socat) when missing.
                  The system mosquitto service is kept from starting (our gateway owns port 1883).
  --prefix DIR    Install everything under DIR as a root: DIR/opt/edge-gateway/venv, DIR/etc/edge-gateway,
                  DIR/var/lib/edge-gateway, DIR/etc/systemd/system/edge-gateway.service. The config's data_dir
                  is DIR/var/lib/edge-gateway, whatever the current directory. The unit file names the DIR
                  paths (ExecStart=DIR/opt/edge-gateway/venv/bin/edge-gateway run --config
                  DIR/etc/edge-gateway/gateway.toml, ReadWritePaths=DIR/var/lib/edge-gateway). With a prefix
                  no system user is created and no systemctl is run, so a test run leaves no system-wide trace.
  --create-user   With --prefix: create the edge-gateway user anyway and chown to it.
  --no-systemd    Do not run systemctl.
  --python PATH   Interpreter for the venv (>= 3.11). Default: /usr/bin/python3 for a production install
                  (an interpreter under /root or /home would be hidden by the unit's ProtectHome=yes),
                  python3 from PATH for --dev.
  -h, --help      Show this help.
EOF
}

APP=edge-gateway
SERVICE_USER=edge-gateway
# Debian packages the test suite needs (chromium: the panel's browser test, driven by Playwright).
DEV_APT_PACKAGES=(mosquitto mosquitto-clients socat chromium)
POLICY_RC_D=/usr/sbin/policy-rc.d

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Production installs take every library from here (README, "Dependencies", says how to refresh it).
LOCK_FILE="$REPO_DIR/config/requirements.lock"

MODE=prod
PREFIX=""
NO_SYSTEMD=0
CREATE_USER=""
PYTHON=""

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

parse_args() {
    while (($#)); do
        case "$1" in
            --dev) MODE=dev ;;
            --prefix)
                (($# >= 2)) || die "--prefix needs a directory"
                PREFIX="$2"; shift ;;
            --prefix=*) PREFIX="${1#--prefix=}" ;;
            --no-systemd) NO_SYSTEMD=1 ;;
            --create-user) CREATE_USER=1 ;;
            --python)
                (($# >= 2)) || die "--python needs a path"
                PYTHON="$2"; shift ;;
            --python=*) PYTHON="${1#--python=}" ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
}

# --- privileges -------------------------------------------------------------------------------

SUDO=()
if ((EUID != 0)) && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
fi

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif ((${#SUDO[@]})); then
        "${SUDO[@]}" "$@"
    else
        die "need root (and no sudo found) to run: $*"
    fi
}

systemd_running() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; }

# --- Debian packages --------------------------------------------------------------------------

APT_UPDATED=0
POLICY_RC_D_CREATED=0

cleanup() {
    if ((POLICY_RC_D_CREATED)); then
        as_root rm -f "$POLICY_RC_D" || true
        POLICY_RC_D_CREATED=0
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# apt_install PKG...: installs the packages that are missing; apt-get update at most once per run.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
    if ((!APT_UPDATED)); then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null
}

# --- venv ---------------------------------------------------------------------------------------

check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: $PYTHON"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); edge-gateway needs Python >= 3.11"
    # Debian ships the venv module without ensurepip unless python3-venv is installed.
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        log "$PYTHON has no working venv module; installing python3-venv"
        apt_install python3-venv
        "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 \
            || die "$PYTHON still cannot create venvs (install the venv package for that interpreter)"
    fi
}

# make_venv DIR: creates the venv, or recreates it when it is broken (e.g. its interpreter is gone).
make_venv() {
    local venv="$1"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        log "venv $venv exists"
    else
        log "creating venv $venv ($("$PYTHON" -V 2>&1))"
        "$PYTHON" -m venv --clear "$venv"
    fi
}

pip_in() {
    local venv="$1"; shift
    "$venv/bin/python" -m pip --disable-pip-version-check "$@"
}

# --- --dev ----------------------------------------------------------------------------------------

install_dev() {
    [[ -z "$PREFIX" ]] || die "--prefix is for production installs, not --dev"
    PYTHON="${PYTHON:-python3}"

    install_dev_packages
    check_python
    make_venv "$REPO_DIR/.venv"
    log "pip install -e .[test]"
    (cd "$REPO_DIR" && pip_in "$REPO_DIR/.venv" install -q -e ".[test]")
    log "dev setup done: run the tests with  .venv/bin/pytest -q"
}

install_dev_packages() {
    local pkg missing=()
    for pkg in "${DEV_APT_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "Debian packages present: ${DEV_APT_PACKAGES[*]}"
        return 0
    fi
    install_without_starting "${missing[@]}"
}

# install_without_starting PKG...: apt-get install, with Debian's own mosquitto service kept from starting
# and disabled when this run installed it (its broker would take port 1883, the gateway's).
install_without_starting() {
    local had_mosquitto=1
    deb_installed mosquitto || had_mosquitto=0
    # A policy-rc.d that exits 101 tells invoke-rc.d not to start services during this install.
    if [[ ! -e "$POLICY_RC_D" ]]; then
        as_root sh -c "printf '#!/bin/sh\n# temporary, from edge-gateway install.sh\nexit 101\n' > '$POLICY_RC_D' && chmod 755 '$POLICY_RC_D'"
        POLICY_RC_D_CREATED=1
    fi
    apt_install "$@"
    cleanup

    if ((!had_mosquitto)) && deb_installed mosquitto; then
        if systemd_running; then
            log "systemctl disable --now mosquitto (the gateway's broker uses port 1883)"
            as_root systemctl disable --now mosquitto || true
        elif command -v systemctl >/dev/null 2>&1; then
            # systemd is not running (container): still drop the boot-time enablement links.
            as_root systemctl disable mosquitto >/dev/null 2>&1 || true
        fi
    fi
}

# --- production -----------------------------------------------------------------------------------

install_prod() {
    local venv etc_dir conf state_dir unit_dir unit
    local have_user=0 do_user=1 do_systemctl=1

    if [[ -n "$PREFIX" ]]; then
        PREFIX="$(realpath -m -- "$PREFIX")"
        [[ "$PREFIX" == / ]] && PREFIX=""
    fi
    if [[ -n "$PREFIX" ]]; then
        # The paths end up in the unit file, where spaces and specials would need quoting.
        [[ "$PREFIX" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "--prefix may only contain letters, digits and ._/+-"
        [[ -n "$CREATE_USER" ]] || do_user=0
        do_systemctl=0   # the unit is not in systemd's search path
    else
        if ((EUID != 0)); then
            ((${#SUDO[@]})) || die "a production install needs root (or use --prefix DIR)"
            log "not root: re-running with sudo"
            exec sudo -- "$0" "${ORIG_ARGS[@]}"
        fi
    fi
    ((NO_SYSTEMD)) && do_systemctl=0

    venv="$PREFIX/opt/$APP/venv"
    etc_dir="$PREFIX/etc/$APP"
    conf="$etc_dir/gateway.toml"
    state_dir="$PREFIX/var/lib/$APP"
    unit_dir="$PREFIX/etc/systemd/system"
    unit="$unit_dir/$APP.service"

    [[ -f "$REPO_DIR/config/gateway.example.toml" ]] || die "missing $REPO_DIR/config/gateway.example.toml"
    [[ -f "$REPO_DIR/systemd/$APP.service" ]] || die "missing $REPO_DIR/systemd/$APP.service"
    [[ -f "$LOCK_FILE" ]] || die "missing $LOCK_FILE"

    # Files must be readable by the service user whatever root's umask is.
    umask 022

    if [[ -z "$PYTHON" ]]; then
        if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
    fi
    check_python
    case "$(readlink -f "$(command -v "$PYTHON")")" in
        /root/*|/home/*) log "warning: $PYTHON lives under /root or /home, which the unit hides (ProtectHome=yes)" ;;
    esac

    # 1. user
    if ((do_user)); then
        if id -u "$SERVICE_USER" >/dev/null 2>&1; then
            log "user $SERVICE_USER exists"
        else
            log "creating system user $SERVICE_USER"
            useradd --system --user-group --no-create-home --home-dir "/var/lib/$APP" \
                --shell /usr/sbin/nologin "$SERVICE_USER"
        fi
        if getent group dialout >/dev/null && ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx dialout; then
            log "adding $SERVICE_USER to group dialout (serial ports)"
            usermod -a -G dialout "$SERVICE_USER"
        fi
    fi
    # chown only as root and only to a user that exists.
    if ((EUID == 0)) && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        have_user=1
    fi

    # 2. venv (self-contained: no system site-packages), package installed non-editable. The libraries come
    # from the lock, each file checked against its hash (the build backend too: the package is built with
    # it, so nothing unpinned is fetched); then the package alone.
    mkdir -p "$(dirname "$venv")"
    make_venv "$venv"
    log "pip install --require-hashes -r $LOCK_FILE into $venv"
    pip_in "$venv" install -q --require-hashes -r "$LOCK_FILE"
    log "pip install --no-deps $REPO_DIR into $venv"
    # --upgrade: reinstalls the package from the repo even when its version number did not change.
    # setuptools builds in the tree: a stale build/ would ship files since deleted from the repo.
    rm -rf "$REPO_DIR/build"
    (cd "$REPO_DIR" && pip_in "$venv" install -q --upgrade --no-deps --no-build-isolation .)
    rm -rf "$REPO_DIR/build"

    # 3. config: written only when absent, never overwritten. A production config has a generated gateway id,
    # the state directory as its data_dir (so `edge-gateway status/backup/export` find the database from any
    # directory) and no devices: the example's demo passwords are published, and `run` refuses them.
    mkdir -p "$etc_dir"
    if [[ -e "$conf" ]]; then
        log "kept existing config $conf"
    else
        "$venv/bin/edge-gateway" init-config --example "$REPO_DIR/config/gateway.example.toml" \
            --data-dir "$state_dir" "$conf" >/dev/null
        if ((have_user)); then
            chown "root:$SERVICE_USER" "$conf"
        fi
        log "wrote config $conf (mode 0640): gateway id $(sed -n 's/^id = "\(gw-[^"]*\)".*/\1/p' "$conf" | head -1), no devices yet"
    fi
    local config_ok=1 config_errors
    if ! config_errors="$("$venv/bin/edge-gateway" check-config --production "$conf" 2>&1 >/dev/null)"; then
        config_ok=0
        log "warning: $conf is not ready for production (the service is not started or restarted):"
        printf '%s\n' "$config_errors" | sed 's/^/[install]   /' >&2
    fi

    mosquitto_for_backend

    # 4. state directory
    mkdir -p "$state_dir"
    chmod 0750 "$state_dir"
    if ((have_user)); then
        chown "$SERVICE_USER:$SERVICE_USER" "$state_dir"
    fi
    log "state directory $state_dir (mode 0750)"

    # 5. systemd unit (rewritten to the prefix paths when --prefix is given)
    mkdir -p "$unit_dir"
    local tmp_unit
    tmp_unit="$(mktemp "$unit_dir/.$APP.service.XXXXXX")"
    if [[ -n "$PREFIX" ]]; then
        {
            printf '# Installed by install.sh --prefix %s: the paths below are under that prefix.\n' "$PREFIX"
            printf '# StateDirectory= stays /var/lib/%s (systemd only takes it relative to /var/lib); the config\n' "$APP"
            printf '# this installer writes sets gateway.data_dir = %s, which the daemon uses instead.\n' "$state_dir"
            sed -e "s|/opt/$APP/venv|$venv|g" \
                -e "s|/etc/$APP/gateway.toml|$conf|g" \
                -e "s|^ReadWritePaths=/var/lib/$APP|ReadWritePaths=$state_dir|" \
                "$REPO_DIR/systemd/$APP.service"
        } >"$tmp_unit"
    else
        cat "$REPO_DIR/systemd/$APP.service" >"$tmp_unit"
    fi
    chmod 0644 "$tmp_unit"
    mv -f "$tmp_unit" "$unit"
    log "installed unit $unit"
    privileged_port_dropin


    # 6. systemctl
    if ((do_systemctl)) && systemd_running; then
        local was_active=0
        systemctl is-active --quiet "$APP" && was_active=1
        log "systemctl daemon-reload"
        systemctl daemon-reload
        if ((config_ok)); then
            log "systemctl enable --now $APP"
            systemctl enable --now "$APP"
            if ((was_active)); then
                log "systemctl restart $APP (was running: load the new version)"
                systemctl restart "$APP"
            fi
        else
            log "systemctl enable $APP (not started: fix the config first, then systemctl restart $APP)"
            systemctl enable "$APP"
            if ((was_active)); then
                log "warning: $APP still runs the previous version; \`edge-gateway run\` will refuse this config"
            fi
        fi
        if systemctl is-active --quiet mosquitto 2>/dev/null; then
            log "warning: the system mosquitto service is running and may hold port 1883:" \
                "systemctl disable --now mosquitto"
        fi
    else
        log "skipped systemctl (--prefix, --no-systemd, or systemd not running)"
    fi

    log "done. Next steps:"
    log "  1. add each device (asks for its password):  sudo $venv/bin/edge-gateway device add ID --config $conf"
    log "  2. apply the config:                          sudo systemctl reload $APP   (started: restart)"
    log "  3. check the gateway:                         $venv/bin/edge-gateway status --config $conf"
    log "  The cloud link: set gateway.org and [uplink] in $conf, then systemctl restart $APP."
    log "  By hand (no systemd): $venv/bin/edge-gateway run --config $conf   (data in $state_dir)"
}

# broker.backend = "mosquitto" runs Debian's Mosquitto as the gateway's child: the package is installed when
# the config asks for it (its own system service stays off). (Uses the variables of install_prod.)
mosquitto_for_backend() {
    local backend
    backend="$("$venv/bin/python" - "$conf" 2>/dev/null <<'PY' || true
import sys
from gateway.settings import load_settings
print(load_settings(sys.argv[1]).settings.broker.backend)
PY
)"
    [[ "$backend" == mosquitto ]] || return 0
    if deb_installed mosquitto; then
        log "broker.backend = mosquitto: Debian's mosquitto is installed"
    else
        log "broker.backend = mosquitto: installing Debian's mosquitto (run by the gateway, not as a service)"
        install_without_starting mosquitto
    fi
}

# The unit grants no capabilities. A listener below port 1024 (a panel on 80/443) needs CAP_NET_BIND_SERVICE:
# a drop-in grants it while the config has such a port, and is removed when it no longer does. (Uses the
# variables of install_prod.)
privileged_port_dropin() {
    local dropin_dir="$unit_dir/$APP.service.d" dropin low_port
    dropin="$dropin_dir/50-privileged-port.conf"
    low_port="$("$venv/bin/python" - "$conf" 2>/dev/null <<'PY' || true
import sys
from gateway.settings import load_settings
s = load_settings(sys.argv[1]).settings
ports = [listener.port for listener in s.broker.listeners] + ([s.api.port] if s.api.enabled else [])
print(min((port for port in ports if port > 0), default=65535))
PY
)"
    if [[ "$low_port" =~ ^[0-9]+$ ]] && ((low_port < 1024)); then
        mkdir -p "$dropin_dir"
        printf '# Written by install.sh: the config listens on port %s (below 1024).\n[Service]\n%s\n%s\n' \
            "$low_port" "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" "AmbientCapabilities=CAP_NET_BIND_SERVICE" \
            >"$dropin"
        chmod 0644 "$dropin"
        log "port $low_port in the config is below 1024: $dropin grants CAP_NET_BIND_SERVICE"
    elif [[ -f "$dropin" ]]; then
        rm -f "$dropin"
        rmdir "$dropin_dir" 2>/dev/null || true
        log "removed $dropin (no port below 1024 in the config)"
    fi
}

main() {
    ORIG_ARGS=("$@")
    parse_args "$@"
    if [[ "$MODE" == dev ]]; then
        install_dev
    else
        install_prod
    fi
}

main "$@"
