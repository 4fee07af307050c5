#!/usr/bin/env bash
# Runs Fleet's whole test suite against real Redis and PostgreSQL (started if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# A local 3+3 Redis Cluster for the cluster suite (tests/cluster): its URL setting.
FLEET_TEST_REDIS_CLUSTER_URLS=$(scripts/redis-cluster.sh start)
export FLEET_TEST_REDIS_CLUSTER_URLS
scripts/s3.sh
scripts/radicale.sh
scripts/calendar-oracle.sh >/dev/null
scripts/dovecot.sh
# The SMTP server of tests/notify (aiosmtpd into a Maildir).
scripts/smtp.sh
# The real mail server of tests/notify: Postfix (STARTTLS, implicit TLS, AUTH) delivering
# into the Dovecot above, read back over IMAP.
scripts/postfix.sh
# The local Web Push service of tests/notify (decrypts with Python's http_ece).
scripts/push-service.sh
scripts/browser.sh
# The TLS Redis and PostgreSQL of tests/tls; it prints the URLs and the CA path they read.
if ! tls_env=$(scripts/tls-services.sh); then
  echo "test: scripts/tls-services.sh could not start the TLS services (see above); the tls tests will fail" >&2
  tls_env=""
fi
eval "$tls_env"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  echo "test: cargo-nextest not found, using cargo test (install it with: cargo install cargo-nextest)" >&2
  cargo test --workspace --locked --no-fail-fast "$@"
fi
# The TypeScript client: its types checked against the API, its tests against a fleet of
# their own (a filtered run, with arguments, is about the Rust tests only).
if [[ $# -eq 0 ]]; then
  scripts/ts-client.sh
fi
