#!/usr/bin/env bash
# Makes sure the TLS services of the TLS tests (tests/tls) are running, beside the plain
# ones of scripts/services.sh:
#   Redis with TLS only on 127.0.0.1:$FLEET_REDIS_TLS_PORT (default 6390; Debian's
#     redis-server 7 has TLS built in; `--port 0`; `--tls-auth-clients optional`: no client
#     certificate needed, but one that is presented must be signed by the test CA),
#   PostgreSQL with ssl=on on 127.0.0.1:$FLEET_PG_TLS_PORT (default 5440; also on 127.0.0.2,
#     an address the certificate does not name, for the host-name check): a throwaway
#     cluster (initdb, trust auth on loopback) under $DIR/pg, run by the postgres user when
#     this script runs as root (PostgreSQL refuses to run as root).
# Certificates are made here with openssl, once, under $DIR (default /tmp/fleet-tls):
#   ca.pem (the test CA), server.pem/server.key (signed by it, subjectAltName
#   IP:127.0.0.1 and DNS:localhost; rustls ignores the CN), other-ca.pem (a CA that signed
#   nothing here: what a "wrong CA" test trusts), client.pem/client.key (signed by the test
#   CA) and other-client.pem/other-client.key (signed by the other CA) for mutual TLS.
# Running it again when both are up does nothing. It prints, on stdout, the variables the
# tests read (scripts/test.sh evals them):
#   FLEET_TEST_REDIS_TLS_URL, FLEET_TEST_PG_TLS_URL, FLEET_TEST_TLS_CA, FLEET_TEST_TLS_OTHER_CA
# (the tests fall back to the same defaults, so running them by hand after this script works).
# Says plainly what is missing (openssl, redis-server, PostgreSQL's initdb) when it cannot.
set -euo pipefail

DIR="${FLEET_TLS_DIR:-/tmp/fleet-tls}"
REDIS_PORT="${FLEET_REDIS_TLS_PORT:-6390}"
PG_PORT="${FLEET_PG_TLS_PORT:-5440}"

say() { printf 'tls-services: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

ensure_certs() {
  local t="$DIR/tls"
  [[ -s "$t/ca.pem" && -s "$t/server.pem" && -s "$t/server.key" && -s "$t/other-ca.pem" ]] && return
  command -v openssl >/dev/null 2>&1 || die "openssl is needed to make the test certificates: apt-get install openssl"
  mkdir -p "$t"
  local ca_ext=(-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign")
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Fleet TLS test CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" "${ca_ext[@]}" >/dev/null 2>&1 || die "openssl could not make the test CA"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Some other CA" \
    -keyout "$t/other-ca.key" -out "$t/other-ca.pem" "${ca_ext[@]}" >/dev/null 2>&1 ||
    die "openssl could not make the other CA"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$t/server.key" -out "$t/server.csr" \
    >/dev/null 2>&1 || die "openssl could not make the server key"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' \
    >"$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 3650 \
    -extfile "$t/server.ext" -out "$t/server.pem" >/dev/null 2>&1 || die "openssl could not sign the server certificate"
  chmod 0755 "$DIR" "$t"
  chmod 0644 "$t/ca.pem" "$t/other-ca.pem" "$t/server.pem"
  chmod 0600 "$t/server.key" "$t/ca.key" "$t/other-ca.key"
  say "made the test certificates in $t"
}

# Client certificates for the mutual-TLS check, made once with the CAs above:
# client.pem/client.key (signed by the test CA) and other-client.pem/.key (by the other CA).
ensure_client_certs() {
  local t="$DIR/tls" name ca
  for name in client other-client; do
    [[ -s "$t/$name.pem" && -s "$t/$name.key" ]] && continue
    ca=ca; [[ $name == other-client ]] && ca=other-ca
    [[ -s "$t/$ca.key" ]] || die "$t/$ca.key is missing: remove $t and run this script again"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=fleet-$name" -keyout "$t/$name.key" -out "$t/$name.csr" \
      >/dev/null 2>&1 || die "openssl could not make the $name key"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$t/client.ext"
    openssl x509 -req -in "$t/$name.csr" -CA "$t/$ca.pem" -CAkey "$t/$ca.key" -CAcreateserial -days 3650 \
      -extfile "$t/client.ext" -out "$t/$name.pem" >/dev/null 2>&1 || die "openssl could not sign the $name certificate"
    chmod 0644 "$t/$name.pem"
    chmod 0600 "$t/$name.key"
  done
}

# True when a TLS handshake on the port verifies against the test CA and Redis answers PONG.
redis_up() {
  command -v redis-cli >/dev/null 2>&1 || return 1
  [[ $(timeout 3 redis-cli --tls --cacert "$DIR/tls/ca.pem" -h 127.0.0.1 -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]]
}

ensure_redis() {
  if redis_up; then
    # An instance started by an older version of this script did not check client certificates.
    timeout 3 redis-cli --tls --cacert "$DIR/tls/ca.pem" -h 127.0.0.1 -p "$REDIS_PORT" \
      CONFIG SET tls-auth-clients optional >/dev/null 2>&1 || true
    say "TLS Redis is up on 127.0.0.1:$REDIS_PORT"
    return
  fi
  command -v redis-server >/dev/null 2>&1 ||
    die "redis-server is missing (scripts/services.sh installs it, or: apt-get install redis-server)"
  command -v redis-cli >/dev/null 2>&1 || die "redis-cli is missing (apt-get install redis-tools)"
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$REDIS_PORT" 2>/dev/null &&
    die "something that is not Fleet's TLS Redis listens on 127.0.0.1:$REDIS_PORT; stop it or set FLEET_REDIS_TLS_PORT"
  mkdir -p "$DIR/redis"
  say "starting Redis with TLS on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port 0 --tls-port "$REDIS_PORT" \
    --tls-cert-file "$DIR/tls/server.pem" --tls-key-file "$DIR/tls/server.key" \
    --tls-ca-cert-file "$DIR/tls/ca.pem" --tls-auth-clients optional \
    --save "" --appendonly no --dir "$DIR/redis" --logfile "$DIR/redis/redis.log" \
    --pidfile "$DIR/redis/redis.pid" >/dev/null ||
    die "redis-server did not start with TLS (built without TLS?); see $DIR/redis/redis.log"
  for _ in $(seq 1 100); do
    if redis_up; then say "TLS Redis is up on 127.0.0.1:$REDIS_PORT"; return; fi
    sleep 0.1
  done
  die "the TLS Redis did not answer on 127.0.0.1:$REDIS_PORT within 10 s; see $DIR/redis/redis.log"
}

pg_bin() {
  local b
  for b in "${FLEET_PG_BIN:-}" /usr/lib/postgresql/*/bin; do
    [[ -n "$b" && -x "$b/initdb" && -x "$b/pg_ctl" ]] && { echo "$b"; return; }
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}

# Runs a command as the user that owns the cluster: postgres when root, else oneself.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# True when the server on the port answers over TLS at address $1 (default 127.0.0.1),
# verified against the test CA (the host name too for 127.0.0.1; 127.0.0.2, which the
# certificate does not name, is what the host-name check of the tests connects to).
pg_up() {
  command -v psql >/dev/null 2>&1 || return 1
  local host=${1:-127.0.0.1} mode=verify-full
  [[ $host == 127.0.0.1 ]] || mode=verify-ca
  [[ $(PGCONNECT_TIMEOUT=3 psql "host=$host port=$PG_PORT user=postgres dbname=postgres sslmode=$mode sslrootcert=$DIR/tls/ca.pem" \
    -tAc "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()" 2>/dev/null) == t ]]
}

write_pg_conf() {
  local pg="$DIR/pg"
  cat >"$pg/data/postgresql.auto.conf" <<EOF
# Written by scripts/tls-services.sh (edits are overwritten).
listen_addresses = '127.0.0.1,127.0.0.2'
port = $PG_PORT
unix_socket_directories = '$pg/run'
ssl = on
ssl_cert_file = '$pg/server.pem'
ssl_key_file = '$pg/server.key'
fsync = off
max_connections = 50
EOF
  if [[ $(id -u) -eq 0 ]]; then chown postgres: "$pg/data/postgresql.auto.conf"; fi
}

ensure_postgres() {
  local bin
  if pg_up; then
    if ! pg_up 127.0.0.2 && [[ -s "$DIR/pg/data/postmaster.pid" ]]; then
      # Started by an older version of this script: listen on 127.0.0.2 too.
      bin=$(pg_bin)
      say "restarting the TLS PostgreSQL to listen on 127.0.0.2 as well"
      write_pg_conf
      as_pg "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/postgres.log" -w -t 20 restart >/dev/null ||
        die "PostgreSQL did not restart; see $DIR/pg/postgres.log"
    fi
    say "TLS PostgreSQL is up on 127.0.0.1:$PG_PORT"
    return
  fi
  bin=$(pg_bin)
  [[ -n "$bin" ]] || die "PostgreSQL's initdb/pg_ctl are missing (scripts/services.sh installs PostgreSQL, or: apt-get install postgresql)"
  command -v psql >/dev/null 2>&1 || die "psql is missing (apt-get install postgresql-client)"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the postgres user to run the test cluster (PostgreSQL refuses root)"
    command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is needed to run PostgreSQL as postgres"
  fi
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PG_PORT" 2>/dev/null &&
    die "something that is not Fleet's TLS PostgreSQL listens on 127.0.0.1:$PG_PORT; stop it or set FLEET_PG_TLS_PORT"
  local pg="$DIR/pg"
  mkdir -p "$pg"
  # The server's own copy of the key: PostgreSQL wants it owned by its user, mode 0600.
  cp "$DIR/tls/server.pem" "$pg/server.pem"
  cp "$DIR/tls/server.key" "$pg/server.key"
  chmod 0600 "$pg/server.key"
  mkdir -p "$pg/run"
  [[ $(id -u) -eq 0 ]] && chown -R postgres: "$pg"
  if [[ ! -s "$pg/data/PG_VERSION" ]]; then
    rm -rf "$pg/data"
    say "creating a throwaway PostgreSQL cluster in $pg/data"
    as_pg "$bin/initdb" -D "$pg/data" -U postgres -A trust --no-sync >"$pg/initdb.log" 2>&1 ||
      die "initdb failed; see $pg/initdb.log"
  fi
  write_pg_conf
  say "starting PostgreSQL with TLS on 127.0.0.1:$PG_PORT"
  as_pg "$bin/pg_ctl" -D "$pg/data" -l "$pg/postgres.log" -w -t 20 start >/dev/null ||
    die "PostgreSQL did not start; see $pg/postgres.log"
  for _ in $(seq 1 100); do
    if pg_up && pg_up 127.0.0.2; then say "TLS PostgreSQL is up on 127.0.0.1:$PG_PORT (and 127.0.0.2)"; return; fi
    sleep 0.1
  done
  die "the TLS PostgreSQL did not answer over TLS on 127.0.0.1:$PG_PORT within 10 s; see $pg/postgres.log"
}

ensure_certs
ensure_client_certs
ensure_redis
ensure_postgres
printf 'export FLEET_TEST_REDIS_TLS_URL=%q\n' "rediss://127.0.0.1:$REDIS_PORT"
printf 'export FLEET_TEST_PG_TLS_URL=%q\n' "postgres://postgres@127.0.0.1:$PG_PORT"
printf 'export FLEET_TEST_TLS_CA=%q\n' "$DIR/tls/ca.pem"
printf 'export FLEET_TEST_TLS_OTHER_CA=%q\n' "$DIR/tls/other-ca.pem"
