#!/usr/bin/env bash
# RabbitMQ 4.0 for the tests, beside the machine's own broker.
#
# Debian trixie ships rabbitmq-server 4.0 (on Erlang 27). We debootstrap trixie into a
# directory of our own, install the broker there, and run it as a second node with its
# own name, ports and data; the machine's epmd serves both nodes. Idempotent: an
# existing chroot is reused and a running node is left alone.
#
#   tests/support/rabbitmq4.sh [start|stop|status|root]
#
# Environment: TW_RABBITMQ4_ROOT (chroot directory), TW_RABBITMQ4_PORT (AMQP port, 5673),
# TW_RABBITMQ4_NODE (node name, tw4@localhost). The tests find the node through the same
# variables (tests/support/rabbit.py).
set -euo pipefail

ROOT=${TW_RABBITMQ4_ROOT:-/var/lib/taskwarren-test/rabbitmq4}
PORT=${TW_RABBITMQ4_PORT:-5673}
DIST_PORT=$((PORT + 20000))
NODE=${TW_RABBITMQ4_NODE:-tw4@localhost}
BASE=/var/lib/rabbitmq/tw4   # inside the chroot

in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq \
    LANG=C.UTF-8 \
    RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_PORT="$PORT" RABBITMQ_DIST_PORT="$DIST_PORT" \
    RABBITMQ_MNESIA_BASE="$BASE/mnesia" RABBITMQ_LOG_BASE="$BASE/log" \
    RABBITMQ_PID_FILE="$BASE/node.pid" RABBITMQ_CONFIG_FILE="$BASE/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
    RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" "$@"
}

mount_proc() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
}

install_root() {
  if [[ -x $ROOT/usr/sbin/rabbitmq-server ]]; then
    return
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
  fi
  echo "rabbitmq4: debootstrap trixie into $ROOT" >&2
  mkdir -p "$ROOT"
  if [[ ! -x $ROOT/usr/bin/apt-get ]]; then
    debootstrap --variant=minbase trixie "$ROOT" >"$ROOT.debootstrap.log" 2>&1 \
      || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
  fi
  mount_proc
  chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  # policy-rc.d: the package must not try to start a service inside the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod +x "$ROOT/usr/sbin/policy-rc.d"
  chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends rabbitmq-server >"$ROOT.apt.log" 2>&1 \
    || { tail -20 "$ROOT.apt.log" >&2; exit 1; }
}

configure() {
  local dir=$ROOT$BASE
  mkdir -p "$dir/mnesia" "$dir/log"
  printf 'listeners.tcp.local = 127.0.0.1:%s\nloopback_users = none\n' "$PORT" >"$dir/rabbitmq.conf"
  printf '[].\n' >"$dir/enabled_plugins"
  printf 'ERL_EPMD_ADDRESS=127.0.0.1\n' >"$dir/rabbitmq-env.conf"
  chroot "$ROOT" chown -R rabbitmq:rabbitmq "$BASE"
}

running() {
  in_root rabbitmqctl -q -n "$NODE" status >/dev/null 2>&1
}

start() {
  install_root
  mount_proc
  if running; then
    in_root rabbitmqctl -q -n "$NODE" version
    return
  fi
  configure
  echo "rabbitmq4: starting $NODE on 127.0.0.1:$PORT" >&2
  in_root rabbitmq-server -detached
  local i
  for i in $(seq 1 120); do
    if in_root rabbitmqctl -q -n "$NODE" await_startup --timeout 5 >/dev/null 2>&1; then
      in_root rabbitmqctl -q -n "$NODE" version
      return
    fi
    sleep 1
  done
  echo "rabbitmq4: $NODE did not start; its log:" >&2
  tail -30 "$ROOT$BASE"/log/*.log >&2 || true
  exit 1
}

stop() {
  if [[ -d $ROOT/usr ]] && running; then
    in_root rabbitmqctl -q -n "$NODE" stop
  fi
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) running && echo "running" || { echo "stopped"; exit 1; } ;;
  root) echo "$ROOT" ;;
  *) echo "usage: $0 [start|stop|status|root]" >&2; exit 2 ;;
esac
