#!/bin/sh
# Refreshes this folder's copies of gateway-config/ (or writes them to the folder given): the
# route map as it is, and the Envoy config rendered for the Service names of usher.yaml and
# gateway.yaml. The cinema's own Service is assumed to be `cinema:80`: change UPSTREAM_HOST and
# UPSTREAM_PORT here for yours.
#   sh deploy/kubernetes/sync.sh [OUTPUT_FOLDER]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
config="$here/../../gateway-config"
cp "$config/routes.toml" "$out/routes.toml"
GATEWAY_PORT=8000 ADMIN_PORT=9901 \
USHER_INTERNAL_HOST=usher-internal USHER_INTERNAL_PORT=9191 \
USHER_API_HOST=usher-api USHER_API_PORT=8080 \
UPSTREAM_HOST=cinema UPSTREAM_PORT=80 \
    sh "$config/render.sh" "$config/envoy.yaml" "$out/envoy.yaml"
