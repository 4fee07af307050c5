#!/usr/bin/env bash
# Makes sure an IMAP server is running for the communication tests: Fleet's own
# Dovecot (Debian's dovecot-imapd) with its own config, on 127.0.0.1:10143 (plain
# IMAP, plaintext login allowed on loopback only), mail under /tmp.
# Installs dovecot-imapd when it is missing, starts Fleet's instance when nothing
# answers on the port, and says plainly what is missing when it cannot. Running it
# again when the instance is up does nothing. Override the port with
# FLEET_DOVECOT_PORT (the tests read FLEET_TEST_IMAP_PORT, default 10143) and the
# folder with FLEET_DOVECOT_DIR.
#
# Users live in passwd-files, one per user ($DIR/users/<user>, one line
# `user:{PLAIN}password::::::`), so a test writes a user of its own and gets an empty
# mailbox at once (tests run in parallel; one shared file edited within the same
# second is not always re-read). `fleet` / `fleet` is always there.
set -euo pipefail

PORT="${FLEET_DOVECOT_PORT:-10143}"
DIR="${FLEET_DOVECOT_DIR:-/tmp/fleet-dovecot}"

say() { printf 'dovecot: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when an IMAP server greets on the port.
imap_up() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -n 1 <&3' _ "$PORT" 2>/dev/null) || true
  [[ "$reply" == "* OK"* ]]
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
  [[ -n "$(dovecot_bin)" && -x /usr/lib/dovecot/imap ]] && return
  command -v apt-get >/dev/null 2>&1 ||
    die "Dovecot (dovecot-imapd) is missing and this is not a Debian-like system: install Dovecot's IMAP server yourself"
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "Dovecot is missing; run as root or: apt-get install dovecot-imapd"
    sudo="sudo"
  fi
  say "installing dovecot-imapd from Debian packages"
  $sudo apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed; install Dovecot yourself: apt-get install dovecot-imapd"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dovecot-imapd >/dev/null 2>&1 ||
    die "apt-get install dovecot-imapd failed; install Dovecot's IMAP server yourself"
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
  cat >"$DIR/dovecot.conf" <<EOF
# Fleet's test Dovecot (written by scripts/dovecot.sh; edits are overwritten).
base_dir = $DIR/run
state_dir = $DIR/run/state
instance_name = fleet-dovecot
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
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
    port = 0
  }
  chroot =
  process_min_avail = 1
}
service anvil {
  chroot =
}
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $DIR/users/%u
}
userdb {
  driver = static
  args = uid=$me gid=$group home=$DIR/mail/%u
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
EOF
  mkdir -p "$DIR/run/state"
}

ensure_dovecot() {
  if imap_up; then say "Dovecot is up on 127.0.0.1:$PORT"; return; fi
  port_taken && die "something that is not an IMAP server listens on 127.0.0.1:$PORT; stop it or set FLEET_DOVECOT_PORT"
  ensure_installed
  write_config
  local bin
  bin=$(dovecot_bin)
  say "starting Dovecot on 127.0.0.1:$PORT (config: $DIR/dovecot.conf, log: $DIR/log/dovecot.log)"
  "$bin" -c "$DIR/dovecot.conf" 2>>"$DIR/log/dovecot.log" ||
    die "Dovecot did not start; see $DIR/log/dovecot.log"
  for _ in $(seq 1 100); do
    if imap_up; then say "Dovecot is up on 127.0.0.1:$PORT"; return; fi
    sleep 0.1
  done
  die "Dovecot did not answer on 127.0.0.1:$PORT within 10 s; see $DIR/log/dovecot.log"
}

ensure_dovecot
