#!/bin/sh
# Renders a gateway config template: replaces each ${NAME} placeholder with the value of the
# environment variable NAME, then runs the remaining arguments (if any) with exec.
#
#   render.sh TEMPLATE OUTPUT [-- COMMAND ARGS...]
#   GATEWAY_PORT=8000 ... render.sh envoy.yaml /tmp/envoy.yaml -- envoy -c /tmp/envoy.yaml
#
# Only the placeholders listed below are touched (NGINX's own $variables are left alone), and a
# placeholder present in the template whose variable is unset or empty is an error. Plain POSIX
# sh and sed, so it runs in the Envoy and NGINX images as they are.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: render.sh TEMPLATE OUTPUT [-- COMMAND ARGS...]" >&2
    exit 2
fi
template=$1
output=$2
shift 2

tmp="$output.tmp.$$"
cp "$template" "$tmp"
for name in GATEWAY_PORT ADMIN_PORT USHER_INTERNAL_HOST USHER_INTERNAL_PORT \
            USHER_API_HOST USHER_API_PORT UPSTREAM_HOST UPSTREAM_PORT; do
    grep -q "\${$name}" "$tmp" || continue
    value=$(printenv "$name" || true)
    if [ -z "$value" ]; then
        echo "render.sh: $template uses \${$name}, but $name is not set" >&2
        rm -f "$tmp"
        exit 1
    fi
    case $value in
        *[!A-Za-z0-9._:-]*)
            echo "render.sh: $name=$value is not a host name, address or port" >&2
            rm -f "$tmp"
            exit 1 ;;
    esac
    sed -i "s|\${$name}|$value|g" "$tmp"
done
mv "$tmp" "$output"

if [ "${1:-}" = "--" ]; then
    shift
fi
if [ $# -gt 0 ]; then
    exec "$@"
fi
