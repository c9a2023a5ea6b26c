#!/bin/sh
# Install the real servers the tests start on loopback ports (Debian packages: influxdb, prometheus, alertmanager,
# redis-server, chromium), only where missing, and Debian's
# docker-compose, whose `config` validates docker-compose.yml with no Docker engine.
#
# Idempotent: a package is installed only when its binary is absent, so a second run does nothing.
# Runs apt-get only as root on Debian; elsewhere it prints what is missing and exits 0, so `make` goes on and the
# tests that need a missing binary say so themselves. Other helpers may append lines to PACKAGES.
set -eu

# "binary package" pairs: the command the tests run, and the Debian package that provides it.
PACKAGES="
influxd influxdb
prometheus prometheus
promtool prometheus
alertmanager prometheus-alertmanager
amtool prometheus-alertmanager
chromium chromium
prometheus-alertmanager prometheus-alertmanager
docker-compose docker-compose
redis-server redis-server
g++ g++
"

missing=""
echo "$PACKAGES" | {
    while read -r binary package; do
        [ -n "${binary:-}" ] || continue
        if ! command -v "$binary" >/dev/null 2>&1; then
            case " $missing " in *" $package "*) ;; *) missing="$missing $package" ;; esac
        fi
    done

    if [ -z "$missing" ]; then
        echo "system deps: all present"
        exit 0
    fi
    if [ "$(id -u)" != "0" ] || [ ! -f /etc/debian_version ]; then
        echo "system deps: missing:$missing (install them, or run this script as root on Debian)" >&2
        exit 0
    fi
    echo "system deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing
    # Debian's packages start their services where systemd runs; the tests start their own instances on free
    # ports, so stop any that started here to keep the default ports free (best effort).
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        for service in influxdb prometheus prometheus-alertmanager redis-server; do
            systemctl disable --now "$service" >/dev/null 2>&1 || true
        done
    fi
}
