# Shared by scripts/*: install what pgbootfs and its tests need, and find PostgreSQL.
# shellcheck shell=bash

say() { printf '==> %s\n' "$*" >&2; }

pg_bindir() {
  if [ -n "${PGBOOTFS_PG_BIN:-}" ]; then echo "$PGBOOTFS_PG_BIN"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  d=$(command -v initdb 2>/dev/null) && { dirname "$d"; return; }
  return 1
}

# ensure_deps [extra apt packages...]: installs PostgreSQL, fuse3 and the clients the
# tests use, when missing, with apt-get as root. Elsewhere it says what is missing.
ensure_deps() {
  local need=()
  pg_bindir >/dev/null || need+=(postgresql)
  command -v psql >/dev/null || need+=(postgresql-client)
  command -v fusermount3 >/dev/null || need+=(fuse3)
  command -v runuser >/dev/null || need+=(util-linux)
  # TLS: the openssl crate builds against libssl; the tests make certificates with
  # the openssl CLI.
  command -v openssl >/dev/null || need+=(openssl)
  command -v pkg-config >/dev/null || need+=(pkg-config)
  pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
  for pkg in "$@"; do
    case "$pkg" in
      *:*) bin=${pkg%%:*}; pkg=${pkg#*:} ;;
      *) bin=$pkg ;;
    esac
    command -v "$bin" >/dev/null || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing: ${need[*]}"
    # Only our own throwaway clusters are wanted: no distribution cluster.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    say "missing: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})"
    return 1
  fi
}

# ensure_sstream: installs sstream-mirror (PyPI python-simplestreams) when missing and
# prints its path. Tests find it through $PGBOOTFS_SSTREAM_MIRROR.
ensure_sstream() {
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if [ ! -x "$scripts/sstream-mirror" ] && ! command -v sstream-mirror >/dev/null; then
    say "installing python-simplestreams (sstream-mirror) from PyPI"
    python3 -m pip install -q --disable-pip-version-check python-simplestreams >&2
  fi
  if [ -x "$scripts/sstream-mirror" ]; then echo "$scripts/sstream-mirror"; else command -v sstream-mirror; fi
}

# ensure_redbot: installs redbot (PyPI), the HTTP linter, when missing and prints its
# path. Tests find it through $PGBOOTFS_REDBOT.
ensure_redbot() {
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if [ ! -x "$scripts/redbot" ] && ! command -v redbot >/dev/null; then
    say "installing redbot (HTTP checks) from PyPI"
    python3 -m pip install -q --disable-pip-version-check redbot >&2
  fi
  if [ -x "$scripts/redbot" ]; then echo "$scripts/redbot"; else command -v redbot; fi
}

# ensure_prometheus_client: installs the Python prometheus_client (PyPI), whose text
# parser the metrics tests read every scrape with, when missing.
ensure_prometheus_client() {
  if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    say "installing prometheus_client (the reference metrics parser) from PyPI"
    python3 -m pip install -q --disable-pip-version-check prometheus_client >&2
  fi
}
