#!/usr/bin/env bash
# Entrypoint of the fleetlearn images: secrets from files into the environment, then the command.
#
# For every variable NAME__FILE=PATH (compose: FLEETLEARN_BRIDGE__MQTT_URL__FILE=/run/secrets/…,
# AWS_SECRET_ACCESS_KEY__FILE=/run/secrets/s3_secret_key) it exports NAME with the file's
# contents (trailing newlines dropped) and unsets NAME__FILE: the config loaders are strict and
# would reject `mqtt_url__file` as an unknown key. Secrets so stay out of the compose file, the
# image and `docker inspect`. For the edge agent (`fleetlearn edge …`) FLEETLEARN_EDGE__DEVICE_ID
# defaults to the container's hostname, so each replica of a scaled service is its own device.
set -euo pipefail

fail() {
    printf 'entrypoint: error: %s\n' "$*" >&2
    exit 1
}

mapfile -t names < <(compgen -e)
for name in "${names[@]}"; do
    [[ $name == *?__FILE ]] || continue
    target=${name%__FILE}
    path=${!name}
    if [[ -n ${!target+set} ]]; then
        fail "both $target and $name are set: keep one"
    fi
    if [[ ! -f $path || ! -r $path ]]; then
        fail "$name=$path: no readable file there (is the secret mounted, and readable by uid $(id -u)?)"
    fi
    value=$(<"$path")
    if [[ -z $value ]]; then
        fail "$name=$path: the file is empty"
    fi
    export "$target=$value"
    unset "$name"
done
unset names name target path value

if [[ ${1-} == fleetlearn || ${1-} == */fleetlearn ]] && [[ ${2-} == edge ]]; then
    if [[ -z ${FLEETLEARN_EDGE__DEVICE_ID-} ]]; then
        FLEETLEARN_EDGE__DEVICE_ID=${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}
        export FLEETLEARN_EDGE__DEVICE_ID
    fi
fi

exec "$@"
