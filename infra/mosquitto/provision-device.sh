#!/usr/bin/env bash
# Give one device access to the fleet broker (a password account, or a client certificate for
# mutual TLS), write what the device needs, and say how to install it; or take access away.
set -euo pipefail
umask 077

PROG=provision-device.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly PROG SCRIPT_DIR
# shellcheck source=SCRIPTDIR/lib.sh
source "$SCRIPT_DIR/lib.sh"

usage() {
    cat <<'EOF'
Usage: provision-device.sh DEVICE_ID [options]
       provision-device.sh DEVICE_ID --revoke [--secrets DIR]

Gives DEVICE_ID access to the broker and writes to --out what the device needs:

  ca.pem                  the CA that signed the broker's certificate (both kinds)
  password                the device's broker password, one line (password devices)
  device.crt, device.key  its client certificate (CN = DEVICE_ID) and key (--mtls)

A password device gets an account DEVICE_ID in SECRETS/mosquitto_passwd and, in
SECRETS/mosquitto_dynsec.json, the ACL of the dynamic-security plugin that guards port 8883: it
may publish only under .../devices/DEVICE_ID/... and subscribe only to what it may read. An
--mtls device gets a certificate signed by the fleet CA and connects to port 8884, where the
certificate's CN is its user name and the ACL file infra/mosquitto/acl, written with %u
patterns, needs no edit. Run init-broker.sh first.

Options:
  --secrets DIR         the broker's secrets (default: infra/secrets of this checkout)
  --password-file FILE  use the password on FILE's first line (default: keep the one already
                        in --out, else generate one); no ':', no leading or trailing spaces
  --mtls                issue a client certificate instead of a password account
  --out DIR             where the device's files go (default: SECRETS/devices/DEVICE_ID)
  --broker HOST         the broker's name as devices see it, for the printed install command
  --force               replace the device's existing password or key and certificate
  --revoke              remove the device's account and revoke its certificates
  -h, --help            show this help

After a change the broker must reload its files, or restart for a new password device (the
dynamic-security plugin reads its file only at start); the script says which:
  docker compose kill -s HUP mosquitto      (or: systemctl reload mosquitto)
  docker compose restart mosquitto          (or: systemctl restart mosquitto)
EOF
}

device="" secrets="" password_src="" out="" broker=BROKER_HOST mtls=0 force=0 revoke=0
while [[ $# -gt 0 ]]; do
    if [[ $1 == --*=* ]]; then
        set -- "${1%%=*}" "${1#*=}" "${@:2}"
    fi
    case $1 in
    --secrets) value_of "$@" && secrets=$2 && shift 2 ;;
    --password-file) value_of "$@" && password_src=$2 && shift 2 ;;
    --out) value_of "$@" && out=$2 && shift 2 ;;
    --broker) value_of "$@" && broker=$2 && shift 2 ;;
    --mtls) mtls=1 && shift ;;
    --force) force=1 && shift ;;
    --revoke) revoke=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *)
        [[ -z $device ]] || die "one DEVICE_ID at a time (got '$device' and '$1')"
        device=$1 && shift
        ;;
    esac
done

[[ -n $device ]] || die "DEVICE_ID is required (see --help)"
[[ $device =~ ^[A-Za-z0-9._:-]{1,128}$ ]] ||
    die "device id '$device' must be 1-128 characters of A-Z a-z 0-9 . _ : -"
[[ $device != . && $device != .. ]] || die "device id '$device' cannot name a directory"
if [[ $device == *:* && $mtls -eq 0 && $revoke -eq 0 ]]; then
    die "device id '$device' contains ':', which cannot be a user name in a Mosquitto password" \
        "file: use --mtls (the id goes in the certificate), or an id without ':'"
fi
if [[ $revoke -eq 1 && (-n $password_src || -n $out || $mtls -eq 1 || $force -eq 1) ]]; then
    die "--revoke takes only --secrets"
fi
[[ $mtls -eq 0 || -z $password_src ]] ||
    die "--password-file is for password devices; an --mtls device signs in with its certificate"

need_openssl
secrets=${secrets:-$(cd "$SCRIPT_DIR/../.." && pwd)/infra/secrets}
[[ -d $secrets ]] || die "--secrets $secrets: no such directory (run init-broker.sh first)"
secrets=$(cd "$secrets" && pwd)
passwd=$secrets/mosquitto_passwd
for file in mqtt_ca.crt mqtt_ca.key mosquitto_passwd mosquitto_dynsec.json; do
    [[ -e $secrets/$file ]] || die "$secrets/$file is missing: run init-broker.sh (again) first"
done
WORK=$(mktemp -d)
readonly WORK
trap 'rm -rf "$WORK"' EXIT
ca_database "$secrets"
issued=$secrets/mqtt_ca.db/issued/$device

has_account() { awk -F: -v user="$1" '$1 == user { found = 1 } END { exit !found }' "$passwd"; }

set_account() { # USER [PASSWORD]: rewrite mosquitto_passwd in place without USER, then add it;
    # then mosquitto_dynsec.json, which follows mosquitto_passwd
    awk -F: -v user="$1" '$1 != user' "$passwd" >"$WORK/accounts"
    if [[ $# -eq 2 ]]; then
        printf '%s:%s\n' "$1" "$2" >"$WORK/new"
        hash_passwords "$WORK/new"
        cat "$WORK/new" >>"$WORK/accounts"
    fi
    replace_contents "$WORK/accounts" "$passwd"
    write_dynsec "$secrets"
}

reload_hint() {
    cat <<'EOF'
The broker reads this at its next reload:
  docker compose kill -s HUP mosquitto      (or: systemctl reload mosquitto)
EOF
}

restart_hint() {
    cat <<'EOF'
The broker reads the new device's ACL (mosquitto_dynsec.json) only when it starts: restart it
(a reload is not enough; until then the device may log in but can publish and read nothing):
  docker compose restart mosquitto          (or: systemctl restart mosquitto)
EOF
}

# --- revoke ------------------------------------------------------------------------------------

if [[ $revoke -eq 1 ]]; then
    revoked=0
    if has_account "$device"; then
        set_account "$device"
        say "removed the account $device from $passwd and $secrets/mosquitto_dynsec.json"
        revoked=1
    fi
    shopt -s nullglob
    for cert in "$issued"/*.crt; do
        openssl ca -batch -config "$WORK/ca.cnf" -revoke "$cert" -keyfile "$secrets/mqtt_ca.key" \
            -cert "$secrets/mqtt_ca.crt" 2>"$WORK/openssl.log" ||
            grep -q 'Already revoked' "$WORK/openssl.log" ||
            die "openssl could not revoke $cert: $(tail -n 3 "$WORK/openssl.log")"
        mkdir -p "$secrets/mqtt_ca.db/revoked/$device"
        mv "$cert" "$secrets/mqtt_ca.db/revoked/$device/"
        say "revoked the certificate $(basename "$cert" .crt) of $device"
        revoked=1
    done
    if [[ $revoked -eq 0 ]]; then
        say "$device has no account and no certificate: nothing to revoke"
        exit 0
    fi
    write_crl "$secrets"
    say "wrote the CRL $secrets/mqtt_ca.crl"
    reload_hint
    cat <<EOF
A reload disconnects a connected password device whose account is gone. A device connected
with a certificate keeps its connection until it reconnects (the CRL is checked when a
connection opens): restart the broker to cut it off now (docker compose restart mosquitto).
The device's files under $secrets/devices/$device (if any) are useless now; delete them.
EOF
    exit 0
fi

# --- provision ---------------------------------------------------------------------------------

out=${out:-$secrets/devices/$device}
mkdir -p "$out" || die "cannot create --out $out"
out=$(cd "$out" && pwd)
name=$(basename "$out")
install -m 644 "$secrets/mqtt_ca.crt" "$out/ca.pem"

if [[ $mtls -eq 1 ]]; then
    key=$out/device.key cert=$out/device.crt
    if [[ $force -eq 0 && -e $key ]]; then
        [[ -e $cert ]] || die "$key exists without device.crt: --force issues a new pair"
        cert_matches_key "$cert" "$key" || die "$cert does not belong to $key: --force issues a new pair"
        signed_by_ca "$cert" "$secrets" ||
            die "$cert is not signed by the fleet CA, or expired or revoked: --force issues a new pair"
        subject=$(openssl x509 -in "$cert" -noout -subject -nameopt RFC2253)
        [[ $subject == "subject=CN=$device" ]] ||
            die "$cert is for ${subject#subject=}, not CN=$device: --force issues a new pair"
        say "keeping the certificate $cert"
    else
        new_key "$WORK/device.key"
        openssl req -new -key "$WORK/device.key" -subj "/CN=$device" -out "$WORK/device.csr" ||
            die "openssl could not make the certificate request for $device"
        sign "$WORK/device.csr" "$WORK/device.crt" "$DEVICE_DAYS" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always" "$secrets"
        serial=$(openssl x509 -in "$WORK/device.crt" -noout -serial)
        mkdir -p "$issued"
        cp "$WORK/device.crt" "$issued/${serial#serial=}.crt"
        mv "$WORK/device.key" "$key"
        mv "$WORK/device.crt" "$cert"
        say "issued a certificate for $device: $cert (key $key, mode 600)"
    fi
    if has_account "$device"; then
        warn "$device also has a password account in $passwd; --revoke removes both"
    fi
    url="mqtts://$broker:8884?ca=/etc/fleetlearn/ca.pem&cert=/etc/fleetlearn/device.crt&key=/etc/fleetlearn/device.key"
    reload_hint
    cat <<EOF

On the device: copy $out (it holds the device's key) and infra/edge to it, then as root in the
directory that holds both:
  install -D -m 644 $name/ca.pem /etc/fleetlearn/ca.pem
  install -D -m 644 $name/device.crt /etc/fleetlearn/device.crt
  install -D -m 600 $name/device.key /etc/fleetlearn/device.key
  edge/install.sh --device-id '$device' --model MODEL --mqtt-url '$url'
  chown fleetlearn: /etc/fleetlearn/device.key && systemctl restart fleetlearn-edge
(install.sh creates the fleetlearn user, who must own the key.) Then delete the copy of $name.
EOF
    exit 0
fi

password_out=$out/password
if [[ -n $password_src ]]; then
    [[ -r $password_src ]] || die "--password-file $password_src: cannot read it"
    IFS= read -r password <"$password_src" || true
    check_password "$password" "--password-file $password_src"
    if [[ -e $password_out && $force -eq 0 ]]; then
        IFS= read -r kept <"$password_out" || true
        [[ $kept == "$password" ]] ||
            die "$password_out holds another password for $device: --force replaces it"
    fi
elif [[ -e $password_out && $force -eq 0 ]]; then
    IFS= read -r password <"$password_out" || true
    check_password "$password" "$password_out"
    say "keeping the password in $password_out"
elif has_account "$device" && [[ $force -eq 0 ]]; then
    die "$device already has an account in $passwd, and $password_out is missing: give its" \
        "password with --password-file, or --force to set a new one (the device then needs it)"
else
    password=$(openssl rand -hex 24)
    say "generated a password for $device"
fi
printf '%s\n' "$password" >"$WORK/password"
chmod 600 "$WORK/password"
mv "$WORK/password" "$password_out"
known=0 # 1: the file held the device already, so a broker started since then has its ACL
if dynsec_has "$secrets" "$device"; then known=1; fi
set_account "$device" "$password"
unset password kept
say "wrote the account $device to $passwd and its password to $password_out (mode 600)"

url="mqtts://$broker:8883?ca=/etc/fleetlearn/ca.pem"
if [[ $known -eq 1 ]]; then
    reload_hint
else
    say "added $device to $secrets/mosquitto_dynsec.json, its ACL on port 8883"
    restart_hint
fi
cat <<EOF

On the device: copy $out (it holds the device's password) and infra/edge to it, then as root
in the directory that holds both:
  install -D -m 644 $name/ca.pem /etc/fleetlearn/ca.pem
  edge/install.sh --device-id '$device' --model MODEL --mqtt-url '$url' \\
      --username '$device' --password-file $name/password
Then delete the copy of $name (install.sh keeps the password in /etc/fleetlearn/credentials).
EOF
