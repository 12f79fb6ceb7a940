#!/usr/bin/env bash
# Start the local PostgreSQL, Redis and RabbitMQ (with its management API) when they are down.
set -uo pipefail

wait_for() {  # wait_for NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "$name did not come up within ${seconds}s" >&2; return 1
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  wait_for PostgreSQL 60 pg_isready -h 127.0.0.1 -p 5432 -q || exit 1
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_for Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping || exit 1
fi

if ! rabbitmqctl -q status >/dev/null 2>&1 && ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for RabbitMQ 120 rabbitmqctl -q await_startup || exit 1
fi
if ! curl -sf -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1; then
  echo "enabling rabbitmq_management" >&2
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_for "RabbitMQ management API" 90 curl -sf -u guest:guest http://127.0.0.1:15672/api/overview || exit 1
fi
exit 0
