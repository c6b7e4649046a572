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

write_dynsec() { # SECRETS: rewrite mosquitto_dynsec.json from the accounts in mosquitto_passwd
    # The dynamic-security plugin on the password listener (8883) checks every SUBSCRIBE, which
    # the acl file cannot (README.md). Its file is derived, never edited: one client per account
    # in mosquitto_passwd, in the group `devices` (what every device reads), with a role of its
    # own (its own topics): the plugin of Mosquitto 2.0 has no %u patterns. Clients carry no
    # password, so the plugin defers the login to mosquitto_passwd, which a reload re-reads.
    # Everything not granted here is refused, $share/... subscriptions included. Topics follow
    # the default prefix fleetlearn/{fleet}, as in the file `acl`. Device ids need no escaping
    # in JSON: provision-device.sh allows only A-Z a-z 0-9 . _ - in an account name.
    local file=$1/mosquitto_dynsec.json
    awk -F: '
        function acl(type, topic, last) {
            printf "      {\"acltype\": \"%s\", \"topic\": \"%s\", \"allow\": true}%s\n", \
                type, topic, (last ? "" : ",")
        }
        $1 == "" { next }
        $1 !~ /^[A-Za-z0-9._-]+$/ { bad = $1; exit 1 }
        { ids[++n] = $1 }
        END {
            if (bad != "") {
                printf "account \"%s\" in mosquitto_passwd is not a device id (A-Z a-z 0-9 . _ -)\n", \
                    bad >"/dev/stderr"
                exit 1
            }
            print "{"
            print "  \"defaultACLAccess\": {\"publishClientSend\": false, \"publishClientReceive\": false,"
            print "    \"subscribe\": false, \"unsubscribe\": true},"
            print "  \"clients\": ["
            for (i = 1; i <= n; i++) {
                printf "    {\"username\": \"%s\", \"roles\": [{\"rolename\": \"device/%s\"}]}%s\n", \
                    ids[i], ids[i], (i < n ? "," : "")
            }
            print "  ],"
            print "  \"groups\": ["
            printf "    {\"groupname\": \"devices\", \"roles\": [{\"rolename\": \"devices\"}], \"clients\": ["
            for (i = 1; i <= n; i++) {
                printf "%s{\"username\": \"%s\"}", (i > 1 ? ", " : ""), ids[i]
            }
            print "]}"
            print "  ],"
            print "  \"roles\": ["
            print "    {\"rolename\": \"devices\", \"acls\": ["
            acl("publishClientReceive", "fleetlearn/+/rounds/current")
            acl("subscribePattern", "fleetlearn/+/rounds/current")
            acl("publishClientReceive", "fleetlearn/+/models/+/release")
            acl("subscribePattern", "fleetlearn/+/models/+/release", 1)
            printf "    ]}%s\n", (n ? "," : "")
            for (i = 1; i <= n; i++) {
                topic = "fleetlearn/+/devices/" ids[i]
                printf "    {\"rolename\": \"device/%s\", \"acls\": [\n", ids[i]
                acl("publishClientSend", topic "/update")
                acl("publishClientSend", topic "/data")
                acl("publishClientSend", topic "/status")
                acl("publishClientReceive", topic "/cmd")
                acl("subscribePattern", topic "/cmd", 1)
                printf "    ]}%s\n", (i < n ? "," : "")
            }
            print "  ]"
            print "}"
        }' "$1/mosquitto_passwd" >"$WORK/dynsec.json" || die "could not write $file"
    if [[ -e $file ]]; then
        replace_contents "$WORK/dynsec.json" "$file"
    else
        mv "$WORK/dynsec.json" "$file"
    fi
}

dynsec_has() { # SECRETS ID: true when mosquitto_dynsec.json holds the client ID
    grep -qF "{\"username\": \"$2\", " "$1/mosquitto_dynsec.json" 2>/dev/null
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
