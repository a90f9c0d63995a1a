#!/usr/bin/env bash
# Make sure the services the tests talk to are up: PostgreSQL (127.0.0.1:5432) and Redis (6379).
# They run already on the CI machine; if one is down it is started the way the machine starts it.
# etcd, FRR, Ceph, QEMU and OpenStack are started (and stopped, by PID) by the tests themselves.
set -euo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { for _ in $(seq 1 60); do up "$1" && return 0; sleep 0.5; done; echo "services: $2 did not come up on :$1" >&2; return 1; }
if ! up 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  wait_up 5432 PostgreSQL
fi
if ! up 6379; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis \
    --logfile /var/log/redis/ci.log
  wait_up 6379 Redis
fi
echo "services: PostgreSQL and Redis are up"
