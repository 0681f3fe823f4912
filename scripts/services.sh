# shellcheck shell=bash
# PostgreSQL and Redis for the test suite: probe them on 127.0.0.1, start them with this machine kind's
# own commands when they are down, and wait (bounded) until they answer. Sourced by scripts/test.
#
#   ensure_services   -> 0 when both answer; otherwise prints which one is missing and returns 1

SERVICES_WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-30}"

pg_up() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432 -t 2
}

redis_up() {
  command -v redis-cli >/dev/null 2>&1 \
    && [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == PONG ]]
}

start_pg() {
  command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]] || return 1
  local version
  # The newest installed version that has a "main" cluster.
  version="$(find /etc/postgresql -mindepth 2 -maxdepth 2 -name main -printf '%h\n' 2>/dev/null \
    | xargs -r -n1 basename | sort -V | tail -n1)"
  [[ -n $version ]] || return 1
  echo "test: starting PostgreSQL $version (pg_ctlcluster) ..." >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
}

start_redis() {
  command -v redis-server >/dev/null 2>&1 || return 1
  echo "test: starting Redis (redis-server --daemonize) ..." >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 2>&1 || true
}

# wait_for NAME PROBE: polls PROBE for up to SERVICES_WAIT_SECONDS.
wait_for() {
  local name=$1 probe=$2 deadline=$((SECONDS + SERVICES_WAIT_SECONDS))
  while ((SECONDS < deadline)); do
    "$probe" && return 0
    sleep 0.5
  done
  echo "test: $name did not answer within ${SERVICES_WAIT_SECONDS} s" >&2
  return 1
}

ensure_services() {
  local missing=()
  # A test URL pointing elsewhere is the user's own server: only the tests probe it.
  if [[ -z ${CURATORE_TEST_PG_URL:-} ]] && ! pg_up; then
    if start_pg; then wait_for PostgreSQL pg_up || missing+=("PostgreSQL (127.0.0.1:5432)")
    else missing+=("PostgreSQL (127.0.0.1:5432; no pg_ctlcluster to start it)"); fi
  fi
  if [[ -z ${CURATORE_TEST_REDIS_URL:-} ]] && ! redis_up; then
    if start_redis; then wait_for Redis redis_up || missing+=("Redis (127.0.0.1:6379)")
    else missing+=("Redis (127.0.0.1:6379; no redis-server to start it)"); fi
  fi
  if ((${#missing[@]})); then
    SERVICES_MISSING="$(printf '%s, ' "${missing[@]}")"
    SERVICES_MISSING="${SERVICES_MISSING%, }"
    return 1
  fi
  return 0
}
