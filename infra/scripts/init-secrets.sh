#!/usr/bin/env bash
# Create every secret docker-compose.yml reads, once: files that exist are never overwritten.
#
# In DIR (default infra/secrets of this checkout; made mode 700, so only you and root can enter):
#   s3_access_key, s3_secret_key   MinIO's root credentials, which the bridge and trainer use
#   grafana_admin_password         Grafana's `admin` password (mode 644: Grafana runs as uid 472;
#                                  the 700 directory keeps it from other users of the host)
#   <key-id>.key, <key-id>.pem     the release signing pair (`fleetlearn keys generate`, or
#                                  openssl: PKCS8 / SubjectPublicKeyInfo PEM, Ed25519); the key
#                                  id is release.key_id of infra/trainer/trainer.yaml
#   bridge_mqtt_url                infra/bridge/bridge.yaml's mqtt_url as the `bridge` account
#   device_mqtt_url                infra/edge/simulated.yaml's mqtt_url as the `simulator` account
# and, through infra/mosquitto/init-broker.sh (FLEETLEARN_INIT_BROKER overrides the path):
#   mqtt_ca.key (never mounted), mqtt_ca.crt, mqtt_ca.crl, mqtt_server.key, mqtt_server.crt,
#   mosquitto_passwd, mosquitto_dynsec.json, mosquitto_services_passwd, mqtt_bridge_password,
#   mqtt_simulator_password
#
# Files the fleetlearn images read are mode 600 and must belong to the uid the images run as:
# build them with FLEETLEARN_UID=$(id -u) (docker-compose.yml passes it as a build argument).
# Run as root, the script gives those files to FLEETLEARN_UID:FLEETLEARN_GID (default 1000).
set -euo pipefail
umask 077
export LC_ALL=C

PROG=init-secrets.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly PROG ROOT

usage() {
    cat <<EOF
Usage: $PROG [--secrets DIR] [--hostname NAME ...] [--key-id ID]

Creates the secrets docker-compose.yml reads (see the top of this script); keeps what exists.

  --secrets DIR     where they go (default: $ROOT/infra/secrets)
  --hostname NAME   a name devices use to reach the broker, for its TLS certificate; repeat for
                    each (passed to infra/mosquitto/init-broker.sh, which has defaults)
  --key-id ID       the release key's id (default: release.key_id of infra/trainer/trainer.yaml)

FLEETLEARN_CLI is the fleetlearn command that generates the release key (default: fleetlearn
where it is on PATH); set it empty to use openssl instead.
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
say() { printf '==> %s\n' "$*"; }

secrets=$ROOT/infra/secrets key_id=""
broker_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --secrets | --hostname | --key-id)
        [[ $# -ge 2 && $2 != --* ]] || die "$1 needs a value (see --help)"
        case $1 in
        --secrets) secrets=$2 ;;
        --hostname) broker_args+=(--hostname "$2") ;;
        --key-id) key_id=$2 ;;
        esac
        shift 2
        ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

command -v openssl >/dev/null || die "openssl not found: install it (apt-get install openssl)"

yaml_value() { # FILE KEY: the first `KEY: value` in FILE, comments dropped (flat scalars only)
    sed -n "/^[[:space:]]*$2:/{s/^[[:space:]]*$2:[[:space:]]*\([^[:space:]#]*\).*/\1/p;q;}" "$1"
}

url_encode() { # TEXT: percent-encoded for the user or password part of a URL
    local text=$1 out="" char i
    for ((i = 0; i < ${#text}; i++)); do
        char=${text:i:1}
        case $char in
        [A-Za-z0-9._~-]) out+=$char ;;
        *) printf -v char '%%%02X' "'$char" && out+=$char ;;
        esac
    done
    printf '%s' "$out"
}

created() { # NAME MODE: publish $WORK/NAME as DIR/NAME with MODE, unless DIR/NAME exists
    chmod "$2" "$WORK/$1"
    # A hard link fails, rather than replaces, if the name was taken meanwhile.
    if ln "$WORK/$1" "$secrets/$1" 2>/dev/null; then
        say "created $secrets/$1"
    elif [[ -e $secrets/$1 ]]; then
        say "keeping $secrets/$1"
    else
        die "cannot write $secrets/$1"
    fi
}

value_file() { # NAME MODE COMMAND...: DIR/NAME holds COMMAND's output, created once
    if [[ -e $secrets/$1 ]]; then
        say "keeping $secrets/$1"
        return
    fi
    local name=$1 mode=$2 value
    shift 2
    value=$("$@") || die "could not make $name"
    printf '%s' "$value" >"$WORK/$name"
    created "$name" "$mode"
}

mqtt_url_file() { # NAME CONFIG ACCOUNT: CONFIG's mqtt_url with ACCOUNT's password, created once
    if [[ -e $secrets/$1 ]]; then
        say "keeping $secrets/$1 (delete it after changing the $3 password)"
        return
    fi
    local url password_file=$secrets/mqtt_$3_password password
    url=$(yaml_value "$2" mqtt_url)
    [[ $url == mqtt://* || $url == mqtts://* ]] || die "$2: no mqtt_url to add credentials to"
    [[ ${url#*://} != *@* ]] || die "$2: mqtt_url already holds credentials; keep them out of it"
    [[ -r $password_file ]] || die "$password_file is missing: init-broker.sh should have made it"
    IFS= read -r password <"$password_file" || true
    [[ -n $password ]] || die "$password_file is empty"
    printf '%s://%s:%s@%s' "${url%%://*}" "$3" "$(url_encode "$password")" "${url#*://}" \
        >"$WORK/$1"
    created "$1" 600
}

release_keys() { # ID: DIR/ID.key (600) and DIR/ID.pem (644), as `fleetlearn keys generate`
    local key=$secrets/$1.key pem=$secrets/$1.pem cli
    if [[ -e $key && -e $pem ]]; then
        say "keeping the release key pair $key, $pem"
        return
    elif [[ -e $pem ]]; then
        die "$pem exists without $key: restore the key from your backup, or delete $pem (and" \
            "install the new .pem on every device)"
    elif [[ -e $key ]]; then
        openssl pkey -in "$key" -pubout -out "$WORK/$1.pem" || die "$key is not a private key"
        created "$1.pem" 644
        return
    fi
    cli=${FLEETLEARN_CLI-$(command -v fleetlearn || true)}
    if [[ -n $cli ]]; then
        "$cli" keys generate --out "$secrets" --key-id "$1" >/dev/null ||
            die "$cli keys generate failed"
        say "created the release key pair $key, $pem (fleetlearn keys generate)"
    else
        openssl genpkey -algorithm ed25519 -out "$WORK/$1.key" 2>/dev/null ||
            die "this openssl cannot make Ed25519 keys (OpenSSL 1.1.1 or later can)"
        openssl pkey -in "$WORK/$1.key" -pubout -out "$WORK/$1.pem"
        created "$1.key" 600
        created "$1.pem" 644
        say "(the release key pair was made with openssl: fleetlearn is not installed here)"
    fi
}

key_id=${key_id:-$(yaml_value "$ROOT/infra/trainer/trainer.yaml" key_id)}
[[ $key_id =~ ^[A-Za-z0-9._-]{1,128}$ ]] ||
    die "release key id '$key_id' is not 1-128 of A-Z a-z 0-9 . _ - (give --key-id)"

mkdir -p "$secrets" || die "cannot create --secrets $secrets"
chmod 700 "$secrets"
secrets=$(cd "$secrets" && pwd)
# Inside DIR, so that a hard link can publish each file (links do not cross filesystems).
WORK=$(mktemp -d "$secrets/.init-secrets.XXXXXX")
readonly WORK
trap 'rm -rf "$WORK"' EXIT

"${FLEETLEARN_INIT_BROKER:-$ROOT/infra/mosquitto/init-broker.sh}" --secrets "$secrets" \
    ${broker_args[@]+"${broker_args[@]}"} || die "init-broker.sh failed"

value_file s3_access_key 600 openssl rand -hex 10
value_file s3_secret_key 600 openssl rand -hex 32
value_file grafana_admin_password 644 openssl rand -hex 16
release_keys "$key_id"
mqtt_url_file bridge_mqtt_url "$ROOT/infra/bridge/bridge.yaml" bridge
mqtt_url_file device_mqtt_url "$ROOT/infra/edge/simulated.yaml" simulator

# The fleetlearn containers run as uid FLEETLEARN_UID (default 1000) and read these files.
for_containers=(s3_access_key s3_secret_key "$key_id.key" "$key_id.pem" bridge_mqtt_url
    device_mqtt_url)
if [[ $(id -u) -eq 0 ]]; then
    owner=${FLEETLEARN_UID:-1000}:${FLEETLEARN_GID:-${FLEETLEARN_UID:-1000}}
    (cd "$secrets" && chown "$owner" "${for_containers[@]}") || die "cannot chown to $owner"
    say "gave ${for_containers[*]} to $owner, the fleetlearn containers' user"
elif [[ $(id -u) -ne ${FLEETLEARN_UID:-1000} ]]; then
    warn "build the images with your uid so that they can read these files:" \
        "export FLEETLEARN_UID=$(id -u) before docker compose build / up"
fi
cat <<EOF

The secrets are in $secrets (release key id: $key_id).
Next: docker compose --profile cpu up -d --build    (or --profile gpu), see infra/README.md.
EOF
