#!/usr/bin/env bash
# Install the fleetlearn edge agent on a device: a virtual environment, its config, broker
# credentials, the fleet's release keys and the systemd unit. Safe to run again (upgrades).
#
# Raspberry Pi OS (Debian bookworm, arm64/armhf) and NVIDIA Jetson (Ubuntu / L4T, aarch64);
# any other Linux with systemd and Python >= 3.11 works too. See infra/edge/README.md.
set -euo pipefail
umask 022 # the service user must be able to read the venv whatever the caller's umask

readonly SERVICE_USER=fleetlearn
readonly UNIT=fleetlearn-edge.service
# On-device paths: the unit file names these, so --root only prefixes them.
readonly VENV_PATH=/opt/fleetlearn/venv
readonly CONF_PATH=/etc/fleetlearn
readonly DATA_PATH=/var/lib/fleetlearn
readonly UNIT_PATH=/etc/systemd/system/$UNIT

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

usage() {
    cat <<'EOF'
Usage: install.sh --device-id ID --mqtt-url URL [options]

Installs the fleetlearn edge agent: a virtual environment in /opt/fleetlearn/venv, the config
/etc/fleetlearn/device.yaml (written only if absent), broker credentials, the fleet's release
keys, the data directory /var/lib/fleetlearn and the systemd unit fleetlearn-edge.service,
then enables and (re)starts it. Running it again upgrades the agent and keeps your config.

Required:
  --device-id ID         this device's id (1-128 of A-Z a-z 0-9 . _ : -)
  --mqtt-url URL         the fleet broker, mqtt://host:port or mqtts://host:port
                         (URL options such as ?ca=/etc/fleetlearn/ca.pem are kept)

Options:
  --username NAME        broker user name } written with the URL to /etc/fleetlearn/credentials
  --password-file FILE   its password     } (mode 600), never to the world-readable device.yaml
  --fleet NAME           fleet name (default: default)
  --model NAME           which model's releases the device follows (needed for a new device.yaml)
  --keys DIR             copy the fleet's release public keys (DIR/*.pem) to /etc/fleetlearn/keys
  --train                also install local training (fleetlearn[edge,edge-train], with torch)
  --source SPEC          what pip installs: a requirement (fleetlearn==0.1.0), a URL, a source
                         directory or a wheel file (default: fleetlearn)
  --python PYTHON        the Python (>= 3.11) that makes the venv (default: python3)
  --system-site-packages let the venv see the system's packages: on a Jetson, with --train,
                         this reuses a CUDA-enabled torch installed system-wide from NVIDIA's
                         Jetson wheels (built for that same Python)
  --pip-args "ARGS"      extra pip arguments, split on spaces
                         (e.g. "--no-index --find-links /media/usb/wheels")
  --root DIR             prefix every path with DIR (images, packages, tests); the unit and the
                         config still name on-device paths; no user is created
  --no-systemd           write the unit file but do not call systemctl
  -h, --help             show this help
EOF
}

die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
say() { printf '==> %s\n' "$*"; }

requirement() { # SPEC EXTRAS: SPEC as a pip requirement with EXTRAS added
    local spec=$1 extras=$2 path_re='^(.*)\[([^]]*)\]$' name_re='^([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^]]*)\])?(.*)$'
    if [[ $spec == *://* && $spec != *" @ "* ]]; then
        printf 'fleetlearn[%s] @ %s\n' "$extras" "$spec"
    elif [[ $spec =~ $path_re && -e ${BASH_REMATCH[1]} ]]; then
        printf '%s[%s,%s]\n' "$(realpath "${BASH_REMATCH[1]}")" "${BASH_REMATCH[2]}" "$extras"
    elif [[ -e $spec ]]; then
        printf '%s[%s]\n' "$(realpath "$spec")" "$extras"
    elif [[ $spec =~ $name_re ]]; then
        printf '%s[%s%s]%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[3]:+${BASH_REMATCH[3]},}" \
            "$extras" "${BASH_REMATCH[4]}"
    else
        die "--source $spec: neither a requirement, a URL nor an existing path"
    fi
}

yaml_quote() { # VALUE as a single-quoted YAML scalar
    local q="'"
    printf "'%s'" "${1//$q/$q$q}"
}

# --- flags -------------------------------------------------------------------------------------

device_id="" mqtt_url="" username="" password_file="" fleet="default" model="" keys_src=""
train=0 source_spec="fleetlearn" root="/" no_systemd=0 python="python3" pip_args=""
system_site=0

value_of() { # FLAG [VALUE...]: fail unless FLAG is followed by a value
    if [[ $# -lt 2 ]] || { [[ $1 != --pip-args ]] && [[ $2 == --* ]]; }; then
        die "$1 needs a value (see --help)"
    fi
}

while [[ $# -gt 0 ]]; do
    # --flag=value as well as --flag value (only here, where a flag is expected, never in a value)
    if [[ $1 == --*=* ]]; then
        set -- "${1%%=*}" "${1#*=}" "${@:2}"
    fi
    case $1 in
    --device-id) value_of "$@" && device_id=$2 && shift 2 ;;
    --mqtt-url) value_of "$@" && mqtt_url=$2 && shift 2 ;;
    --username) value_of "$@" && username=$2 && shift 2 ;;
    --password-file) value_of "$@" && password_file=$2 && shift 2 ;;
    --fleet) value_of "$@" && fleet=$2 && shift 2 ;;
    --model) value_of "$@" && model=$2 && shift 2 ;;
    --keys) value_of "$@" && keys_src=$2 && shift 2 ;;
    --source) value_of "$@" && source_spec=$2 && shift 2 ;;
    --root) value_of "$@" && root=$2 && shift 2 ;;
    --python) value_of "$@" && python=$2 && shift 2 ;;
    --pip-args) value_of "$@" && pip_args=$2 && shift 2 ;;
    --train) train=1 && shift ;;
    --no-systemd) no_systemd=1 && shift ;;
    --system-site-packages) system_site=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ -n $device_id ]] || die "--device-id is required: this device's id (1-128 of A-Z a-z 0-9 . _ : -)"
[[ -n $mqtt_url ]] || die "--mqtt-url is required: the fleet broker, mqtt://host:port or mqtts://host:port"
[[ $device_id =~ ^[A-Za-z0-9._:-]{1,128}$ ]] ||
    die "--device-id must be 1-128 characters of A-Z a-z 0-9 . _ : - (got '$device_id')"
[[ $fleet =~ ^[A-Za-z0-9._-]{1,64}$ ]] ||
    die "--fleet must be 1-64 characters of A-Z a-z 0-9 . _ - (got '$fleet')"
[[ -z $model || $model =~ ^[A-Za-z0-9._-]{1,128}$ ]] ||
    die "--model must be 1-128 characters of A-Z a-z 0-9 . _ - (got '$model')"
[[ -z $password_file || -n $username ]] || die "--password-file needs --username"
[[ -z $password_file || -r $password_file ]] || die "--password-file $password_file: cannot read it"
if [[ -n $keys_src ]]; then
    [[ -d $keys_src ]] || die "--keys $keys_src: not a directory"
    compgen -G "$keys_src/*.pem" >/dev/null || die "--keys $keys_src: no .pem files in it"
fi
[[ -f $SCRIPT_DIR/$UNIT ]] ||
    die "$UNIT not found next to install.sh ($SCRIPT_DIR): copy the whole infra/edge directory"

# Every path below is "$R" + an on-device path; R is empty when installing for real.
mkdir -p "$root"
root=$(cd "$root" && pwd)
R=${root%/}
readonly R
if [[ -z $R ]]; then
    [[ $EUID -eq 0 ]] || die "run as root (sudo $0 ...), or stage the files elsewhere with --root DIR"
fi
if [[ $no_systemd -eq 0 ]]; then
    command -v systemctl >/dev/null || die "systemctl not found: use --no-systemd and start the agent another way"
    if [[ -z $R && ! -d /run/systemd/system ]]; then
        die "systemd is not running on this machine: use --no-systemd and start the agent another way"
    fi
fi

[[ -e $R$CONF_PATH/device.yaml || -n $model ]] ||
    die "--model is required to write a new $R$CONF_PATH/device.yaml (the model whose releases this device follows)"
extras=edge
[[ $train -eq 0 ]] || extras=edge,edge-train
req=$(requirement "$source_spec" "$extras")

# --- platform ----------------------------------------------------------------------------------

arch=$(uname -m)
dt_model=""
if [[ -r /proc/device-tree/model ]]; then
    dt_model=$(tr -d '\0' </proc/device-tree/model)
fi
platform=generic
if [[ -r /etc/nv_tegra_release ]]; then
    platform=jetson
    l4t=$(sed -n '1{s/^# *//;s/, GCID.*//;p}' /etc/nv_tegra_release)
    say "platform: ${dt_model:-NVIDIA Jetson}, L4T $l4t ($arch)"
elif [[ $dt_model == *"Raspberry Pi"* ]]; then
    platform=pi
    say "platform: $dt_model ($arch)"
else
    say "platform: generic Linux${dt_model:+, $dt_model} ($arch)"
    warn "not a Raspberry Pi or a Jetson: going on as on any Linux with systemd"
fi
if [[ $arch == armv7l || $arch == armv6l ]]; then
    warn "32-bit ARM: PyPI has no onnxruntime (nor torch) wheels for $arch; use a 64-bit OS, or" \
        "bring wheels with --pip-args \"--find-links DIR\""
fi

# --- python ------------------------------------------------------------------------------------

command -v "$python" >/dev/null || die "$python not found: install Python >= 3.11 or name one with --python"
py_version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') ||
    die "$python does not run"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "fleetlearn needs Python >= 3.11, and $python is $py_version; install a newer one" \
        "(Raspberry Pi OS bookworm ships 3.11; JetPack 6 ships 3.10) and pass it with --python"
say "python: $(command -v "$python") $py_version"

if [[ $platform == jetson && $train -eq 1 ]]; then
    if [[ $system_site -eq 0 ]]; then
        warn "--train on a Jetson without --system-site-packages: pip installs torch from the" \
            "index, usually a build without CUDA for the Jetson's GPU; --system-site-packages" \
            "reuses a torch from NVIDIA's Jetson wheels installed for this Python"
    elif torch_version=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
        say "reusing the system's torch $torch_version"
    else
        warn "no torch among $python's system packages: pip will install one from the index"
    fi
fi

# --- broker URL and credentials (urllib does the quoting; the password never enters argv) ----

url_lines=$(
    "$python" - "$mqtt_url" "$username" "$password_file" <<'PY'
import ipaddress
import sys
from urllib.parse import quote, unquote, urlsplit, urlunsplit

url, username, password_file = sys.argv[1:4]
try:
    parts = urlsplit(url)
    parts.port  # raises on a bad port
except ValueError as exc:
    sys.exit(f"install.sh: error: --mqtt-url is not a valid URL ({exc})")
host = parts.netloc.rpartition("@")[2]
if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
    shown = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    sys.exit(f"install.sh: error: --mqtt-url must be mqtt://host:port or mqtts://host:port, got {shown}")
user = username or (unquote(parts.username) if parts.username else "")
password = unquote(parts.password) if parts.password and not username else None
if password_file:
    lines = open(password_file, encoding="utf-8").read().splitlines()
    password = lines[0] if lines else ""
    if not password:
        sys.exit(f"install.sh: error: --password-file {password_file} is empty")
public = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
secret = ""
if user:
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    secret = urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, ""))
    try:
        local = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        local = parts.hostname == "localhost"
    if password is not None and parts.scheme == "mqtt" and not local:
        print(
            f"install.sh: warning: the password crosses the network in clear text to {host};"
            " use mqtts://",
            file=sys.stderr,
        )
print(public)
print(secret)
PY
) || exit 1
{
    read -r public_url
    IFS= read -r secret_url || true # empty (and so cut off) without credentials
} <<<"$url_lines"
unset url_lines

# --- service user ------------------------------------------------------------------------------

own=0 # chown files to the service user: only when installing for real
if [[ -z $R ]]; then
    own=1
    if getent passwd "$SERVICE_USER" >/dev/null; then
        say "user $SERVICE_USER exists"
    else
        useradd --system --user-group --home-dir "$DATA_PATH" --no-create-home \
            --shell /usr/sbin/nologin --comment "fleetlearn edge agent" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
    # CUDA on a Jetson goes through device nodes of the video group.
    if [[ $platform == jetson && $train -eq 1 ]] && getent group video >/dev/null; then
        usermod -a -G video "$SERVICE_USER"
    fi
else
    say "--root $root: no user created, files keep their owner (chown to $SERVICE_USER on the device)"
fi

# --- virtual environment and the package -------------------------------------------------------

venv=$R$VENV_PATH
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    say "reusing the virtual environment $venv"
    if [[ $system_site -eq 1 ]]; then
        sed -i 's/^include-system-site-packages = .*/include-system-site-packages = true/' "$venv/pyvenv.cfg"
    elif grep -q '^include-system-site-packages = true' "$venv/pyvenv.cfg"; then
        say "it sees the system's packages (made with --system-site-packages): kept"
    fi
else
    "$python" -c 'import ensurepip' 2>/dev/null ||
        die "$python cannot make virtual environments: apt-get install python3-venv (or python3.X-venv)"
    venv_flags=(--clear)
    [[ $system_site -eq 0 ]] || venv_flags+=(--system-site-packages)
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "${venv_flags[@]}" "$venv"
    say "created the virtual environment $venv${venv_flags[1]:+ (it sees the system packages)}"
fi

read -r -a pip_extra <<<"$pip_args"
say "pip install $req"
"$venv/bin/python" -m pip install --disable-pip-version-check --upgrade \
    ${pip_extra[@]+"${pip_extra[@]}"} "$req"

if [[ -n $R ]]; then
    # Scripts pip wrote name their interpreter under --root; on the device it is at VENV_PATH.
    for script in "$venv"/bin/*; do
        [[ -f $script && ! -L $script ]] || continue
        first=""
        IFS= read -r first <"$script" || true
        if [[ $first == "#!$venv/bin/"* ]]; then
            sed -i "1s|^#!$venv/bin/|#!$VENV_PATH/bin/|" "$script"
        fi
    done
fi

# Through the venv's python so that this works under --root too; -I: nothing from the current
# directory or PYTHON* variables, as under systemd.
if ! check_output=$("$venv/bin/python" -I "$venv/bin/fleetlearn" --help 2>&1); then
    printf '%s\n' "$check_output" | tail -n 20 >&2
    die "the installed fleetlearn command does not start (above); fix that and run install.sh again"
fi
say "fleetlearn command works: $VENV_PATH/bin/fleetlearn"

# --- config, credentials, keys, data -----------------------------------------------------------

conf=$R$CONF_PATH
install -d -m 755 "$conf" "$conf/keys"
config=$conf/device.yaml
if [[ -e $config ]]; then
    say "keeping $config as it is (never overwritten; edit it, or remove it to have it rewritten)"
else
    train_enabled=false
    [[ $train -eq 0 ]] || train_enabled=true
    cat >"$config.tmp" <<EOF
# fleetlearn edge agent: this device. Written once by install.sh, never overwritten by it.
# Every section, with comments: $CONF_PATH/device.example.yaml.
# Environment variables override any field: FLEETLEARN_EDGE__SECTION__FIELD=value; the
# broker URL with credentials comes from $CONF_PATH/credentials that way.
# After editing: systemctl restart fleetlearn-edge
device_id: $(yaml_quote "$device_id")
fleet: $(yaml_quote "$fleet")
mqtt_url: $(yaml_quote "$public_url")
data_dir: $DATA_PATH
heartbeat_s: 30
# Where samples come from (replay, file, mqtt, plugin): see device.example.yaml.
collectors: []
model:
  name: $(yaml_quote "$model")
  runtime: auto
  keys_dir: $CONF_PATH/keys
training:
  enabled: $train_enabled
EOF
    chmod 644 "$config.tmp"
    mv "$config.tmp" "$config"
    say "wrote $config"
fi
if [[ -f $SCRIPT_DIR/device.example.yaml ]]; then
    install -m 644 "$SCRIPT_DIR/device.example.yaml" "$conf/device.example.yaml"
fi

credentials=$conf/credentials
if [[ -n $secret_url ]]; then
    (
        umask 077
        printf '# The broker URL with its credentials, read by systemd for %s.\n' "$UNIT" >"$credentials.tmp"
        printf 'FLEETLEARN_EDGE__MQTT_URL=%s\n' "$secret_url" >>"$credentials.tmp"
    )
    chmod 600 "$credentials.tmp"
    [[ $own -eq 0 ]] || chown "$SERVICE_USER:$SERVICE_USER" "$credentials.tmp"
    mv "$credentials.tmp" "$credentials"
    say "wrote $credentials (mode 600)"
elif [[ -e $credentials ]]; then
    say "keeping $credentials: its URL overrides mqtt_url in device.yaml (--username rewrites it)"
fi
unset secret_url

if [[ -n $keys_src ]]; then
    install -m 644 "$keys_src"/*.pem "$conf/keys/"
    say "copied the release keys from $keys_src to $conf/keys"
elif ! compgen -G "$conf/keys/*.pem" >/dev/null; then
    warn "no release keys in $conf/keys: the agent refuses every model release until the" \
        "fleet's .pem files are there (--keys DIR)"
fi

data=$R$DATA_PATH
install -d -m 750 "$data"
[[ $own -eq 0 ]] || chown "$SERVICE_USER:$SERVICE_USER" "$data"

# A config the agent would reject makes the service restart forever: say so now.
"$venv/bin/python" -I - "$config" "$device_id" "$fleet" "$public_url" <<'PY' || exit 1
import sys
from pathlib import Path

from bus.errors import ConfigError
from bus.urls import mask_password
from edge_agent.config import load_edge_config

path, device_id, fleet, url = sys.argv[1:5]
try:
    config = load_edge_config(Path(path))
except ConfigError as exc:
    sys.exit(f"install.sh: error: the agent would reject its config: {exc}")
for name, flag, value in (
    ("device_id", device_id, config.device_id),
    ("fleet", fleet, config.fleet),
    ("mqtt_url", url, mask_password(config.mqtt_url)),
):
    if value != flag:
        print(
            f"install.sh: warning: {path} has {name} {value!r}, not {flag!r} as given;"
            " the file wins (edit it, or remove it and run again)",
            file=sys.stderr,
        )
PY

# --- systemd -----------------------------------------------------------------------------------

install -D -m 644 "$SCRIPT_DIR/$UNIT" "$R$UNIT_PATH"
say "installed $R$UNIT_PATH"
if [[ $no_systemd -eq 1 ]]; then
    say "--no-systemd: not enabled; on the device: systemctl daemon-reload && systemctl enable --now ${UNIT%.service}"
elif [[ -n $R ]]; then
    systemctl --root="$root" enable "$UNIT"
    say "enabled in $root: it starts at the device's next boot"
else
    systemctl daemon-reload
    systemctl enable "$UNIT"
    # restart, not start: after an upgrade the running agent must load the new code.
    systemctl restart "$UNIT"
    say "enabled and (re)started ${UNIT%.service}"
fi

cat <<EOF

fleetlearn edge agent installed for device $device_id.
  logs:    journalctl -u ${UNIT%.service} -f
  status:  systemctl status ${UNIT%.service}
  config:  $CONF_PATH/device.yaml (then: systemctl restart ${UNIT%.service})
EOF
