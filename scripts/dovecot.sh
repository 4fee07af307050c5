#!/usr/bin/env bash
# Makes sure an IMAP server is running for the communication tests: Fleet's own
# Dovecot (Debian's dovecot-imapd and dovecot-lmtpd) with its own config, on 127.0.0.1:10143 (plain
# IMAP and STARTTLS, plaintext login allowed) and 127.0.0.1:10993 (implicit TLS), mail
# under /tmp. The TLS certificate is generated here with openssl: a throwaway CA
# ($DIR/tls/ca.pem, what the tests trust through `ca_file`) and a server certificate
# for 127.0.0.1 and localhost signed by it.
# Installs dovecot-imapd and dovecot-lmtpd when missing, starts Fleet's instance when nothing
# answers on the port, and says plainly what is missing when it cannot. Running it
# again when the instance is up does nothing. Override the port with
# FLEET_DOVECOT_PORT (the tests read FLEET_TEST_IMAP_PORT, default 10143), the TLS
# port with FLEET_DOVECOT_TLS_PORT (tests: FLEET_TEST_IMAPS_PORT, default 10993) and the
# folder with FLEET_DOVECOT_DIR. An instance of an older version of this script (plain
# port only) is reconfigured and reloaded in place.
#
# Users live in passwd-files, one per user ($DIR/users/<user>, one line
# `user:{PLAIN}password::::::`), so a test writes a user of its own and gets an empty
# mailbox at once (tests run in parallel; one shared file edited within the same
# second is not always re-read). `fleet` / `fleet` is always there.
#
# OAuth2: `AUTHENTICATE XOAUTH2` (and OAUTHBEARER) is checked by Dovecot's oauth2
# passdb with local JWT validation: an HS256 token signed with the key in
# $DIR/oauth2/secret (made here), whose `sub` is the user name and `exp` is in the
# future, logs that user in. No token service is needed.
#
# For the test mail server (scripts/postfix.sh) the instance also serves, on Unix
# sockets in $DIR/run: `lmtp` (LMTP delivery into a user's mailbox; the domain of the
# address is dropped, so `anna@fleet.test` is the user `anna`, and a user without a
# passwd-file is refused) and `auth-smtp` (Dovecot SASL: the SMTP server checks logins
# against the same users). Both are open to every local user: a loopback test server.
set -euo pipefail

PORT="${FLEET_DOVECOT_PORT:-10143}"
TLS_PORT="${FLEET_DOVECOT_TLS_PORT:-10993}"
DIR="${FLEET_DOVECOT_DIR:-/tmp/fleet-dovecot}"

say() { printf 'dovecot: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when an IMAP server greets on the port.
imap_up() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -n 1 <&3' _ "$PORT" 2>/dev/null) || true
  [[ "$reply" == "* OK"* ]]
}

# True when a TLS handshake on the TLS port verifies against the test CA.
imaps_up() {
  [[ -s "$DIR/tls/ca.pem" ]] || return 1
  timeout 3 openssl s_client -connect "127.0.0.1:$TLS_PORT" -CAfile "$DIR/tls/ca.pem" -verify_return_error \
    </dev/null 2>/dev/null | grep -q 'Verify return code: 0 (ok)'
}

# A throwaway CA and a server certificate for 127.0.0.1 / localhost, made once.
ensure_cert() {
  [[ -s "$DIR/tls/ca.pem" && -s "$DIR/tls/server.pem" && -s "$DIR/tls/server.key" ]] && return
  command -v openssl >/dev/null 2>&1 || die "openssl is needed to make the test TLS certificate: apt-get install openssl"
  mkdir -p "$DIR/tls"
  local t="$DIR/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Fleet test CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1 ||
    die "openssl could not make the test CA"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$t/server.key" -out "$t/server.csr" >/dev/null 2>&1 ||
    die "openssl could not make the server key"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 3650 \
    -extfile "$t/server.ext" -out "$t/server.pem" >/dev/null 2>&1 || die "openssl could not sign the server certificate"
  chmod 0644 "$t/ca.pem" "$t/server.pem"
  chmod 0600 "$t/server.key" "$t/ca.key"
  [[ $(id -u) -eq 0 ]] && id dovecot >/dev/null 2>&1 && chown root:root "$t/server.key"
  return 0
}

port_taken() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PORT" 2>/dev/null
}

dovecot_bin() {
  if command -v dovecot >/dev/null 2>&1; then command -v dovecot
  elif [[ -x /usr/sbin/dovecot ]]; then echo /usr/sbin/dovecot
  fi
}

ensure_installed() {
  [[ -n "$(dovecot_bin)" && -x /usr/lib/dovecot/imap && -x /usr/lib/dovecot/lmtp ]] && return
  command -v apt-get >/dev/null 2>&1 ||
    die "Dovecot (dovecot-imapd) is missing and this is not a Debian-like system: install Dovecot's IMAP server yourself"
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "Dovecot is missing; run as root or: apt-get install dovecot-imapd dovecot-lmtpd"
    sudo="sudo"
  fi
  say "installing dovecot-imapd and dovecot-lmtpd from Debian packages"
  $sudo apt-get update -qq >/dev/null 2>&1 ||
    die "apt-get update failed; install Dovecot yourself: apt-get install dovecot-imapd dovecot-lmtpd"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=300 dovecot-imapd dovecot-lmtpd >/dev/null 2>&1 ||
    die "apt-get install dovecot-imapd dovecot-lmtpd failed; install Dovecot's IMAP and LMTP servers yourself"
  # The package starts the system's own Dovecot on 143; Fleet's instance is separate.
  [[ -n "$(dovecot_bin)" ]] || die "dovecot-imapd was installed but no dovecot binary was found"
}

write_config() {
  mkdir -p "$DIR/run" "$DIR/mail" "$DIR/log" "$DIR/users"
  local me group
  if [[ $(id -u) -eq 0 ]]; then
    # Dovecot refuses to deliver mail as root: mail belongs to the package's user.
    me=dovecot group=dovecot
    id dovecot >/dev/null 2>&1 || die "the dovecot system user is missing; reinstall dovecot-core"
    chown dovecot:dovecot "$DIR/mail"
  else
    me=$(id -un) group=$(id -gn)
  fi
  [[ -f "$DIR/users/fleet" ]] || printf 'fleet:{PLAIN}fleet::::::\n' >"$DIR/users/fleet"
  chmod 0755 "$DIR/users"
  chmod 0644 "$DIR/users/fleet"
  mkdir -p "$DIR/oauth2/keys/default/HS256" "$DIR/oauth2/keys/shared/default/HS256"
  if [[ ! -s "$DIR/oauth2/secret" ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/oauth2/secret"
  fi
  local key64
  key64=$(tr -d '\n' <"$DIR/oauth2/secret" | base64 -w0)
  printf '%s' "$key64" >"$DIR/oauth2/keys/default/HS256/default"
  printf '%s' "$key64" >"$DIR/oauth2/keys/shared/default/HS256/default"
  chmod -R a+rX "$DIR/oauth2"
  cat >"$DIR/oauth2.conf.ext" <<EOF
# Local JWT validation (HS256, key in $DIR/oauth2/secret); the user is the token's sub.
introspection_mode = local
local_validation_key_dict = fs:posix:prefix=$DIR/oauth2/keys/
username_attribute = sub
EOF
  local conf="$DIR/dovecot.conf.new.$$"
  cat >"$conf" <<EOF
# Fleet's test Dovecot (written by scripts/dovecot.sh; edits are overwritten).
base_dir = $DIR/run
state_dir = $DIR/run/state
instance_name = fleet-dovecot
protocols = imap lmtp
listen = 127.0.0.1
# TLS on the imaps port and STARTTLS on the plain one; plaintext login still allowed
# (loopback only) so the plain tests keep working.
ssl = yes
ssl_cert = <$DIR/tls/server.pem
ssl_key = <$DIR/tls/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
log_path = $DIR/log/dovecot.log
info_log_path = $DIR/log/dovecot.log
default_internal_user = $me
default_internal_group = $group
default_login_user = $me
first_valid_uid = 1
mail_uid = $me
mail_gid = $group
mail_location = maildir:$DIR/mail/%u
mail_max_userip_connections = 200
# A test server: losing mail on a power cut does not matter, speed does.
mail_fsync = never
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $TLS_PORT
    ssl = yes
  }
  chroot =
  process_min_avail = 1
}
service anvil {
  chroot =
  # No growing penalty for failed logins: every test logs in from 127.0.0.1, and one
  # test's wrong password would otherwise slow every other test's login (up to 15 s).
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
# LMTP delivery for the test SMTP server (scripts/postfix.sh).
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
}
# Dovecot SASL for the test SMTP server: it checks logins against these users.
service auth {
  unix_listener auth-smtp {
    mode = 0666
  }
}
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DIR/oauth2.conf.ext
}
passdb {
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN $DIR/users/%u
}
# The users are the passwd-files: LMTP delivery to a user without one is refused.
userdb {
  driver = passwd-file
  args = $DIR/users/%u
  default_fields = uid=$me gid=$group home=$DIR/mail/%u
}
namespace inbox {
  inbox = yes
  separator = /
  mailbox Sent {
    special_use = \\Sent
  }
  mailbox Trash {
    special_use = \\Trash
  }
}
protocol imap {
  mail_max_userip_connections = 200
  imap_max_line_length = 1M
}
protocol lmtp {
  # anna@fleet.test is delivered to the user anna.
  auth_username_format = %Ln
  postmaster_address = postmaster@fleet.test
}
EOF
  if cmp -s "$conf" "$DIR/dovecot.conf"; then rm -f "$conf"; CONFIG_CHANGED=0
  else mv -f "$conf" "$DIR/dovecot.conf"; CONFIG_CHANGED=1; fi
  mkdir -p "$DIR/run/state"
}

ensure_dovecot() {
  if imap_up; then
    ensure_cert
    if [[ -s "$DIR/run/master.pid" ]] && kill -0 "$(cat "$DIR/run/master.pid")" 2>/dev/null; then
      # Fleet's instance: bring its config up to date (TLS, OAuth2) and reload it in place.
      write_config
      if [[ "$CONFIG_CHANGED" == 1 ]]; then
        say "config changed; reloading Dovecot"
        kill -HUP "$(cat "$DIR/run/master.pid")"
        for _ in $(seq 1 100); do imaps_up && break; sleep 0.1; done
      fi
    fi
    imaps_up || say "WARNING: no TLS listener on 127.0.0.1:$TLS_PORT (not Fleet's instance?); TLS tests will fail"
    say "Dovecot is up on 127.0.0.1:$PORT (TLS: $TLS_PORT)"
    return
  fi
  port_taken && die "something that is not an IMAP server listens on 127.0.0.1:$PORT; stop it or set FLEET_DOVECOT_PORT"
  ensure_installed
  ensure_cert
  write_config
  local bin
  bin=$(dovecot_bin)
  say "starting Dovecot on 127.0.0.1:$PORT (config: $DIR/dovecot.conf, log: $DIR/log/dovecot.log)"
  "$bin" -c "$DIR/dovecot.conf" 2>>"$DIR/log/dovecot.log" ||
    die "Dovecot did not start; see $DIR/log/dovecot.log"
  for _ in $(seq 1 100); do
    if imap_up && imaps_up; then say "Dovecot is up on 127.0.0.1:$PORT (TLS: $TLS_PORT)"; return; fi
    sleep 0.1
  done
  die "Dovecot did not answer on 127.0.0.1:$PORT within 10 s; see $DIR/log/dovecot.log"
}

ensure_dovecot
