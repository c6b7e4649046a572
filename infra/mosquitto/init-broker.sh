#!/usr/bin/env bash
# Create what the fleet broker needs before its first start: a CA, the server certificate, the
# device and service password files, the device ACL of the dynamic-security plugin, and the CRL.
# Safe to run again: it keeps what exists (and rewrites the derived ACL file).
set -euo pipefail
umask 077

PROG=init-broker.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly PROG SCRIPT_DIR
# shellcheck source=SCRIPTDIR/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly SERVICES=(bridge simulator)
readonly DEFAULT_HOSTNAMES=(localhost mosquitto 127.0.0.1)

usage() {
    cat <<EOF
Usage: init-broker.sh [--secrets DIR] [--hostname NAME ...] [options]

Creates in DIR (default: infra/secrets of this checkout) what infra/mosquitto/mosquitto.conf
reads, and keeps whatever is already there:

  mqtt_ca.key, mqtt_ca.crt     the fleet's CA (its key, mode 600, never goes to the broker)
  mqtt_ca.db/                  the CA's record of device certificates, for revocation
  mqtt_ca.crl                  the certificates revoked so far (none at first)
  mqtt_server.key, .crt        the broker's TLS identity, for the names given by --hostname
  mosquitto_passwd             device accounts (empty; provision-device.sh adds them)
  mosquitto_dynsec.json        the device ACL of listener 8883, derived from mosquitto_passwd
  mosquitto_services_passwd    the service accounts ${SERVICES[*]}, hashed
  mqtt_<account>_password      their passwords in clear text (mode 600), for the services

Options:
  --secrets DIR        where the files go (created if missing)
  --hostname NAME      a DNS name or IP address devices use to reach the broker; repeat for
                       each. Replaces the default list: ${DEFAULT_HOSTNAMES[*]}
  --broker-group GRP   group that may read the key and password files (mode 640): the
                       broker reads them after dropping root. Default $DEFAULT_BROKER_GROUP, the
                       mosquitto group of the eclipse-mosquitto image; \`mosquitto\` for a
                       broker installed on the host
  --force              issue a new server key and certificate even if they exist
  -h, --help           show this help

The CA is never replaced: a new CA invalidates every device's ca.pem and certificate. To start
over on purpose, delete mqtt_ca.key, mqtt_ca.crt and mqtt_ca.db/ first. To change a service
password, delete its mqtt_<account>_password file and run this again.

Needs openssl and mosquitto_passwd; without mosquitto_passwd, docker runs the one in the
eclipse-mosquitto:2 image (MOSQUITTO_IMAGE overrides the image).
EOF
}

secrets="" force=0 broker_group=$DEFAULT_BROKER_GROUP
hostnames=()
while [[ $# -gt 0 ]]; do
    if [[ $1 == --*=* ]]; then
        set -- "${1%%=*}" "${1#*=}" "${@:2}"
    fi
    case $1 in
    --secrets) value_of "$@" && secrets=$2 && shift 2 ;;
    --hostname) value_of "$@" && hostnames+=("$2") && shift 2 ;;
    --broker-group) value_of "$@" && broker_group=$2 && shift 2 ;;
    --force) force=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

explicit_names=1
if [[ ${#hostnames[@]} -eq 0 ]]; then
    hostnames=("${DEFAULT_HOSTNAMES[@]}")
    explicit_names=0
fi
sans=()
for name in "${hostnames[@]}"; do
    if [[ $name =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || ($name == *:* && $name =~ ^[0-9A-Fa-f:]+$) ]]; then
        sans+=("IP:$name")
    elif [[ $name =~ ^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$ ]]; then
        sans+=("DNS:$name")
    else
        die "--hostname '$name' is neither a DNS name nor an IP address"
    fi
done
san_list=$(
    IFS=,
    printf '%s' "${sans[*]}"
)

need_openssl
secrets=${secrets:-$(cd "$SCRIPT_DIR/../.." && pwd)/infra/secrets}
mkdir -p "$secrets" || die "cannot create --secrets $secrets"
secrets=$(cd "$secrets" && pwd)
WORK=$(mktemp -d)
readonly WORK
trap 'rm -rf "$WORK"' EXIT

broker_reads() { # FILE...: mode 640, group broker_group, so the broker (not the world) reads them
    chmod 640 "$@"
    if ! chgrp "$broker_group" "$@" 2>/dev/null; then
        warn "cannot give $* to group $broker_group (run as root, or:" \
            "sudo chgrp $broker_group $*); until then the broker cannot read them"
    fi
}

# --- the CA ------------------------------------------------------------------------------------

ca_key=$secrets/mqtt_ca.key ca_crt=$secrets/mqtt_ca.crt
if [[ -e $ca_key && -e $ca_crt ]]; then
    cert_matches_key "$ca_crt" "$ca_key" ||
        die "$ca_crt does not belong to $ca_key: restore the pair from your backup"
    say "keeping the CA $ca_crt"
elif [[ -e $ca_key || -e $ca_crt ]]; then
    die "only one of mqtt_ca.key and mqtt_ca.crt is in $secrets: restore the other from your" \
        "backup, or delete both (and mqtt_ca.db/) to start a new CA, which invalidates every" \
        "device's ca.pem and certificate"
else
    new_key "$WORK/ca.key"
    openssl req -x509 -new -key "$WORK/ca.key" -sha256 -days "$CA_DAYS" \
        -subj "/CN=fleetlearn MQTT CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$WORK/ca.crt" 2>"$WORK/openssl.log" ||
        die "openssl could not make the CA: $(tail -n 3 "$WORK/openssl.log")"
    chmod 644 "$WORK/ca.crt"
    mv "$WORK/ca.key" "$ca_key"
    mv "$WORK/ca.crt" "$ca_crt"
    say "created the CA $ca_crt (key: $ca_key, mode 600; keep it off the broker, back it up)"
fi
chmod 600 "$ca_key"

ca_database "$secrets"
if [[ -e $secrets/mqtt_ca.crl ]] && openssl crl -in "$secrets/mqtt_ca.crl" -CAfile "$ca_crt" \
    -noout 2>/dev/null; then
    say "keeping the CRL $secrets/mqtt_ca.crl"
else
    write_crl "$secrets"
    say "wrote the CRL $secrets/mqtt_ca.crl"
fi
chmod 644 "$secrets/mqtt_ca.crl"

# --- the server certificate --------------------------------------------------------------------

server_key=$secrets/mqtt_server.key server_crt=$secrets/mqtt_server.crt
reissue=$force
if [[ $force -eq 0 && (-e $server_key || -e $server_crt) ]]; then
    [[ -e $server_key && -e $server_crt ]] ||
        die "only one of mqtt_server.key and mqtt_server.crt is in $secrets: --force issues both"
    cert_matches_key "$server_crt" "$server_key" ||
        die "$server_crt does not belong to $server_key: --force issues a new pair"
    signed_by_ca "$server_crt" "$secrets" ||
        die "$server_crt is not signed by $ca_crt (or has expired): --force issues a new one"
    have=$(openssl x509 -in "$server_crt" -noout -ext subjectAltName 2>/dev/null |
        tail -n +2 | tr -d ' ' | sed 's/IPAddress:/IP:/g' | tr ',' '\n' | sort | paste -sd, -)
    want=$(printf '%s\n' "${sans[@]}" | sort | paste -sd, -)
    if [[ $explicit_names -eq 1 && $have != "$want" ]]; then
        die "$server_crt is for $have, not $want: add --force to issue a new one for these names"
    fi
    if ! openssl x509 -in "$server_crt" -noout -checkend $((30 * 86400)) >/dev/null; then
        warn "$server_crt expires within 30 days: run again with --force to renew it"
    fi
    say "keeping the server certificate $server_crt ($have)"
else
    reissue=1
fi
if [[ $reissue -eq 1 ]]; then
    new_key "$WORK/server.key"
    openssl req -new -key "$WORK/server.key" -subj "/CN=${hostnames[0]}" -out "$WORK/server.csr" ||
        die "openssl could not make the server's certificate request"
    sign "$WORK/server.csr" "$WORK/server.crt" "$SERVER_DAYS" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san_list
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always" "$secrets"
    mv "$WORK/server.key" "$server_key"
    mv "$WORK/server.crt" "$server_crt"
    say "issued the server certificate $server_crt for $san_list"
fi
chmod 644 "$server_crt"
broker_reads "$server_key"

# --- accounts ----------------------------------------------------------------------------------

devices=$secrets/mosquitto_passwd
if [[ -e $devices ]]; then
    say "keeping the device accounts $devices ($(grep -c . "$devices" || true) accounts)"
else
    : >"$devices"
    say "created the empty device password file $devices (provision-device.sh adds devices)"
fi
broker_reads "$devices"
# Derived from mosquitto_passwd, so rewritten every time (in place: compose pins the inode).
write_dynsec "$secrets"
broker_reads "$secrets/mosquitto_dynsec.json"
say "wrote the dynamic-security file $secrets/mosquitto_dynsec.json (its ACL for listener 8883)"

: >"$WORK/services"
for account in "${SERVICES[@]}"; do
    password_file=$secrets/mqtt_${account}_password
    if [[ ! -e $password_file ]]; then
        openssl rand -hex 24 >"$password_file"
        say "generated the $account password $password_file (mode 600)"
    fi
    chmod 600 "$password_file"
    IFS= read -r password <"$password_file" || true
    check_password "$password" "$password_file"
    printf '%s:%s\n' "$account" "$password" >>"$WORK/services"
done
unset password
hash_passwords "$WORK/services"
services=$secrets/mosquitto_services_passwd
if [[ -e $services ]]; then
    replace_contents "$WORK/services" "$services"
else
    mv "$WORK/services" "$services"
fi
broker_reads "$services"
say "wrote the service accounts ${SERVICES[*]} to $services"

cat <<EOF

The broker's secrets are in $secrets.
Next: provision each device (infra/mosquitto/provision-device.sh DEVICE_ID), then start the
broker (docker compose up -d mosquitto), or restart it if it runs (the dynamic-security plugin
reads mosquitto_dynsec.json only when the broker starts):
  docker compose restart mosquitto      (or: systemctl restart mosquitto)
EOF
