# shellcheck shell=bash
# Helpers shared by init-broker.sh and provision-device.sh (sourced, never run). The caller sets
# PROG (its name, for messages) and WORK (a private temporary directory it removes on exit).

# How long certificates last, in days. The CRL is rewritten at every revocation; it must not
# expire in between, or the mutual-TLS listener refuses every device certificate.
# DEFAULT_BROKER_GROUP: the group of the `mosquitto` user in the eclipse-mosquitto image; the
# broker reads its key and password files as that user (it drops root before loading them).
# shellcheck disable=SC2034 # read by the scripts that source this file
readonly CA_DAYS=3650 SERVER_DAYS=825 DEVICE_DAYS=825 CRL_DAYS=3650 DEFAULT_BROKER_GROUP=1883

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
say() { printf '==> %s\n' "$*"; }

value_of() { # FLAG [VALUE...]: fail unless FLAG is followed by a value
    if [[ $# -lt 2 || $2 == --* ]]; then
        die "$1 needs a value (see --help)"
    fi
}

need_openssl() {
    command -v openssl >/dev/null || die "openssl not found: install it (apt-get install openssl)"
}

new_key() { # FILE: a fresh EC P-256 private key, mode 600
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null) ||
        die "openssl could not write a private key to $1"
    chmod 600 "$1"
}

cert_matches_key() { # CRT KEY: true when the certificate holds the key's public half
    local cert_pub key_pub
    cert_pub=$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null) || return 1
    key_pub=$(openssl pkey -in "$2" -pubout 2>/dev/null) || return 1
    [[ $cert_pub == "$key_pub" ]]
}

signed_by_ca() { # CRT SECRETS: true when the CA in SECRETS signed it, and did not revoke it
    local crl=()
    [[ ! -e $2/mqtt_ca.crl ]] || crl=(-crl_check -CRLfile "$2/mqtt_ca.crl")
    openssl verify -CAfile "$2/mqtt_ca.crt" ${crl[@]+"${crl[@]}"} "$1" >/dev/null 2>&1
}

sign() { # CSR OUT DAYS EXTENSIONS SECRETS: sign CSR with the CA into OUT
    local serial
    serial=0x$(openssl rand -hex 16)
    printf '%s\n' "$4" >"$WORK/extensions"
    openssl x509 -req -in "$1" -CA "$5/mqtt_ca.crt" -CAkey "$5/mqtt_ca.key" -set_serial "$serial" \
        -days "$3" -sha256 -extfile "$WORK/extensions" -out "$WORK/signed.crt" 2>"$WORK/openssl.log" ||
        die "openssl could not sign $2: $(tail -n 3 "$WORK/openssl.log")"
    chmod 644 "$WORK/signed.crt"
    mv "$WORK/signed.crt" "$2"
}

replace_contents() { # SOURCE DEST: DEST gets SOURCE's bytes, keeping its inode, owner and mode
    # Compose mounts each secret file by its inode: a file replaced by `mv` would leave the
    # running broker reading the old one, even after a reload.
    cat "$1" >"$2"
}

hash_passwords() { # FILE: turn its `user:password` lines into `user:hash` lines, in place
    if command -v mosquitto_passwd >/dev/null; then
        mosquitto_passwd -U "$1" || die "mosquitto_passwd -U could not hash the passwords"
    elif command -v docker >/dev/null; then
        # No Mosquitto here: the image's own mosquitto_passwd, on the same private directory.
        local image=${MOSQUITTO_IMAGE:-eclipse-mosquitto:2}
        docker run --rm --network none --user "$(id -u):$(id -g)" \
            -v "$(dirname "$1"):/work" --entrypoint mosquitto_passwd "$image" \
            -U "/work/$(basename "$1")" ||
            die "docker run $image mosquitto_passwd failed (set MOSQUITTO_IMAGE to another image)"
    else
        die "mosquitto_passwd not found, and no docker to run it from the eclipse-mosquitto" \
            "image: apt-get install mosquitto (Debian/Ubuntu; it holds mosquitto_passwd) or install Docker"
    fi
}

check_password() { # TEXT WHERE: refuse what a Mosquitto password file cannot hold
    [[ -n $1 ]] || die "$2 is empty"
    [[ $1 != *:* ]] || die "$2 holds a ':', which a Mosquitto password file cannot store"
    [[ $1 =~ ^[[:graph:]]([[:print:]]*[[:graph:]])?$ ]] ||
        die "$2 starts or ends with a space, or holds control characters (Mosquitto trims them)"
}

ca_database() { # SECRETS: make the CA's revocation database if missing
    local db=$1/mqtt_ca.db
    mkdir -p "$db/issued" "$db/revoked"
    [[ -e $db/index.txt ]] || : >"$db/index.txt"
    [[ -e $db/crlnumber ]] || printf '1000\n' >"$db/crlnumber"
    cat >"$WORK/ca.cnf" <<EOF
[ ca ]
default_ca = fleetlearn
[ fleetlearn ]
database = $db/index.txt
crlnumber = $db/crlnumber
default_md = sha256
default_crl_days = $CRL_DAYS
EOF
}

write_crl() { # SECRETS: regenerate mqtt_ca.crl from the CA database (after ca_database)
    openssl ca -batch -config "$WORK/ca.cnf" -gencrl -keyfile "$1/mqtt_ca.key" \
        -cert "$1/mqtt_ca.crt" -out "$WORK/crl.pem" 2>"$WORK/openssl.log" ||
        die "openssl could not write the CRL: $(tail -n 3 "$WORK/openssl.log")"
    if [[ -e $1/mqtt_ca.crl ]]; then
        replace_contents "$WORK/crl.pem" "$1/mqtt_ca.crl"
    else
        install -m 644 "$WORK/crl.pem" "$1/mqtt_ca.crl"
    fi
}
