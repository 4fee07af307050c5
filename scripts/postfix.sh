#!/usr/bin/env bash
# Makes sure a real mail server is running for the notification tests: Fleet's own
# Postfix instance (Debian's postfix) with its own config, delivering into the project's
# Dovecot (scripts/dovecot.sh, started here first) over LMTP, so a test sends an email
# with Fleet's SMTP client and reads it back over IMAP from the recipient's mailbox.
#
#   127.0.0.1:10587  submission: STARTTLS required before anything else, then AUTH
#                    (PLAIN/LOGIN, checked by Dovecot against its users) required
#   127.0.0.1:10465  submission over implicit TLS (TLS from the first byte), AUTH required
#
# Both present the certificate of scripts/dovecot.sh (its throwaway CA signs it for
# 127.0.0.1 and localhost; tests trust that CA through `ca_file`). Mail for any address
# at fleet.test goes to the Dovecot user named by the part before the @ (a test writes a
# user of its own there); a user Dovecot does not know is refused at delivery. Mail for
# any other domain is refused (nothing leaves the machine).
#
# Installs postfix when it is missing (apt-get, as root; the package's own instance is
# left unconfigured), and python3-dkim with python3-nacl (dkimpy, which the tests check
# RSA and Ed25519 DKIM signatures with), starts Fleet's instance when nothing answers on the ports, and
# says plainly what is missing when it cannot. Running it again when the instance is up
# does nothing (a changed config is reloaded in place). Override the ports with
# FLEET_POSTFIX_PORT and FLEET_POSTFIX_TLS_PORT (the tests read
# FLEET_TEST_SUBMISSION_PORT and FLEET_TEST_SMTPS_PORT) and the folder with
# FLEET_POSTFIX_DIR; Dovecot's folder is FLEET_DOVECOT_DIR, as in scripts/dovecot.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${FLEET_POSTFIX_PORT:-10587}"
TLS_PORT="${FLEET_POSTFIX_TLS_PORT:-10465}"
DIR="${FLEET_POSTFIX_DIR:-/tmp/fleet-postfix}"
DOVECOT_DIR="${FLEET_DOVECOT_DIR:-/tmp/fleet-dovecot}"
DOMAIN=fleet.test

say() { printf 'postfix: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when an SMTP server greets on the submission port.
smtp_up() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -n 1 <&3' _ "$PORT" 2>/dev/null) || true
  [[ "$reply" == 220* ]]
}

# True when a TLS handshake on the implicit-TLS port verifies against the test CA.
smtps_up() {
  timeout 3 openssl s_client -connect "127.0.0.1:$TLS_PORT" -CAfile "$DOVECOT_DIR/tls/ca.pem" -verify_return_error \
    </dev/null 2>/dev/null | grep -q 'Verify return code: 0 (ok)'
}

ensure_installed() {
  [[ -x /usr/sbin/postfix && -x /usr/lib/postfix/sbin/smtpd ]] && return
  command -v apt-get >/dev/null 2>&1 ||
    die "Postfix is missing and this is not a Debian-like system: install Postfix yourself"
  [[ $(id -u) -eq 0 ]] || die "Postfix is missing; as root run: apt-get install postfix"
  say "installing postfix from Debian packages"
  # The package's own instance stays unconfigured (and so stopped): Fleet's is separate.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 postfix >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed; install Postfix yourself: apt-get install postfix"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 postfix >/dev/null 2>&1 ||
      die "apt-get install postfix failed; install Postfix yourself"
  fi
  [[ -x /usr/sbin/postfix ]] || die "postfix was installed but /usr/sbin/postfix is missing"
}

# Writes main.cf and master.cf; CONFIG_CHANGED=1 when either changed.
write_config() {
  mkdir -p "$DIR/etc" "$DIR/log" "$DIR/data" "$DIR/spool"
  # Postfix's own layout: the queue folder root's, the data folder its mail owner's.
  id postfix >/dev/null 2>&1 && chown postfix "$DIR/data"
  local main="$DIR/etc/main.cf.new.$$" master="$DIR/etc/master.cf.new.$$"
  cat >"$main" <<EOF
# Fleet's test Postfix (written by scripts/postfix.sh; edits are overwritten).
compatibility_level = 3.6
queue_directory = $DIR/spool
data_directory = $DIR/data
maillog_file = $DIR/log/postfix.log
maillog_file_prefixes = $DIR/log
myhostname = mail.$DOMAIN
mydomain = $DOMAIN
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
# Every address at $DOMAIN is a mailbox, delivered by LMTP into Dovecot (which refuses
# a user it does not know); nothing else is delivered anywhere.
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_maps = regexp:$DIR/etc/recipients
virtual_transport = lmtp:unix:$DOVECOT_DIR/run/lmtp
default_transport = error:this test server delivers to $DOMAIN only
relay_transport = error:this test server delivers to $DOMAIN only
# TLS: the certificate scripts/dovecot.sh makes.
smtpd_tls_cert_file = $DOVECOT_DIR/tls/server.pem
smtpd_tls_key_file = $DOVECOT_DIR/tls/server.key
smtpd_tls_loglevel = 1
# Logins are checked by Dovecot (SASL over its auth-smtp socket), only over TLS.
smtpd_sasl_type = dovecot
smtpd_sasl_path = $DOVECOT_DIR/run/auth-smtp
smtpd_sasl_auth_enable = yes
smtpd_tls_auth_only = yes
broken_sasl_auth_clients = no
# Authenticated clients only, whatever the address.
mynetworks =
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
message_size_limit = 10240000
# A test server: no waiting before a retry, no DNS lookups.
disable_dns_lookups = yes
smtp_dns_support_level = disabled
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 30s
bounce_queue_lifetime = 0
maximal_queue_lifetime = 1h
EOF
  cat >"$master" <<EOF
# Fleet's test Postfix services (written by scripts/postfix.sh). Nothing is chrooted.
# service        type  private unpriv chroot wakeup maxproc command + args
127.0.0.1:$PORT  inet  n       -      n      -      -       smtpd
  -o syslog_name=fleet-postfix/submission
  -o smtpd_tls_security_level=encrypt
127.0.0.1:$TLS_PORT inet n     -      n      -      -       smtpd
  -o syslog_name=fleet-postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
pickup     unix  n       -      n      60     1       pickup
cleanup    unix  n       -      n      -      0       cleanup
qmgr       unix  n       -      n      300    1       qmgr
tlsmgr     unix  -       -      n      1000?  1       tlsmgr
rewrite    unix  -       -      n      -      -       trivial-rewrite
bounce     unix  -       -      n      -      0       bounce
defer      unix  -       -      n      -      0       bounce
trace      unix  -       -      n      -      0       bounce
verify     unix  -       -      n      -      1       verify
flush      unix  n       -      n      1000?  0       flush
proxymap   unix  -       -      n      -      -       proxymap
proxywrite unix  -       -      n      -      1       proxymap
smtp       unix  -       -      n      -      -       smtp
relay      unix  -       -      n      -      -       smtp
showq      unix  n       -      n      -      -       showq
error      unix  -       -      n      -      -       error
retry      unix  -       -      n      -      -       error
discard    unix  -       -      n      -      -       discard
lmtp       unix  -       -      n      -      -       lmtp
anvil      unix  -       -      n      -      1       anvil
scache     unix  -       -      n      -      1       scache
postlog    unix-dgram n  -      n      -      1       postlogd
EOF
  printf '/@%s$/ OK\n' "${DOMAIN//./\\.}" >"$DIR/etc/recipients.new.$$"
  # Each file is replaced whole (rename) and only when it changed: tests run this script
  # in parallel while Postfix processes read these files.
  CONFIG_CHANGED=0
  local f
  for f in main.cf master.cf recipients; do
    local new="$DIR/etc/$f.new.$$"
    if cmp -s "$new" "$DIR/etc/$f"; then rm -f "$new"
    else mv -f "$new" "$DIR/etc/$f"; CONFIG_CHANGED=1; fi
  done
}

# dkimpy for the tests' DKIM check (tests/notify/dkim_verify.py); PyNaCl for Ed25519.
ensure_dkimpy() {
  /usr/bin/python3 -c 'import dkim, nacl' 2>/dev/null && return
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 ||
    die "dkimpy is missing for the DKIM tests; as root run: apt-get install python3-dkim python3-nacl"
  say "installing python3-dkim and python3-nacl"
  local pkgs=(python3-dkim python3-nacl)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${pkgs[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${pkgs[@]}" >/dev/null 2>&1; } ||
    die "apt-get install python3-dkim python3-nacl failed; install dkimpy and PyNaCl for /usr/bin/python3 yourself"
}

running() {
  /usr/sbin/postfix -c "$DIR/etc" status >/dev/null 2>&1
}

ensure_dkimpy
# Dovecot first: the users, the CA, the LMTP and SASL sockets.
scripts/dovecot.sh
[[ -S "$DOVECOT_DIR/run/lmtp" && -S "$DOVECOT_DIR/run/auth-smtp" ]] ||
  die "Dovecot's lmtp and auth-smtp sockets are missing in $DOVECOT_DIR/run (an older Dovecot instance?); see scripts/dovecot.sh"

if smtp_up && smtps_up; then
  if [[ -d "$DIR/etc" ]] && running; then
    write_config
    if [[ "$CONFIG_CHANGED" == 1 ]]; then
      say "config changed; reloading Postfix"
      /usr/sbin/postfix -c "$DIR/etc" reload >/dev/null 2>&1 || die "postfix reload failed; see $DIR/log/postfix.log"
    fi
  fi
  exit 0
fi

ensure_installed
command -v openssl >/dev/null 2>&1 || die "openssl is needed to check the TLS port: apt-get install openssl"
write_config
if running; then
  # Up but not answering on the ports (a config of another version): restart it.
  say "restarting Fleet's Postfix instance"
  /usr/sbin/postfix -c "$DIR/etc" stop >/dev/null 2>&1 || true
fi
# `postfix check` makes the queue folders with their owners (postfix, postdrop).
/usr/sbin/postfix -c "$DIR/etc" check >>"$DIR/log/start.log" 2>&1 ||
  die "postfix check failed; see $DIR/log/start.log"
say "starting Postfix on 127.0.0.1:$PORT (STARTTLS) and 127.0.0.1:$TLS_PORT (TLS) (config: $DIR/etc, log: $DIR/log/postfix.log)"
/usr/sbin/postfix -c "$DIR/etc" start >>"$DIR/log/start.log" 2>&1 ||
  die "Postfix did not start; see $DIR/log/start.log and $DIR/log/postfix.log"
for _ in $(seq 1 100); do
  if smtp_up && smtps_up; then
    say "Postfix is up on 127.0.0.1:$PORT (STARTTLS) and 127.0.0.1:$TLS_PORT (TLS)"
    exit 0
  fi
  sleep 0.1
done
die "Postfix did not answer on 127.0.0.1:$PORT and $TLS_PORT within 10 s; see $DIR/log/postfix.log"
