#!/usr/bin/env bash
# Install citygw as a systemd service on a Raspberry Pi (or any Debian-like machine with systemd).
#
#   sudo scripts/install.sh [--id GATEWAY_ID] [--start]   install, or upgrade in place
#   sudo scripts/install.sh --uninstall                   remove the software and the unit; keep the
#                                                         config, the signing key and the buffered data
#   sudo scripts/install.sh --uninstall --purge           remove those too, and the citygw user
#
# What it does (each step only when needed, so running it again changes nothing):
#   - a system user citygw (no login, no home), in groups dialout (serial ports) and, where they
#     exist, plugdev (some distributions' USB serial adapters) and bluetooth (BlueZ over D-Bus);
#   - citygw in a virtualenv at /opt/citygw, /usr/local/bin/citygw pointing at it;
#   - /etc/citygw (root:citygw 0750) with a config skeleton (kept if present), the signing key
#     (citygw:citygw 0600, created once: it is the gateway's identity) and credentials/ (root 0700,
#     handed to the service by systemd's LoadCredential=);
#   - /var/lib/citygw (citygw 0700), the buffer's home;
#   - the unit /etc/systemd/system/citygw.service, enabled; usbserial and cdc_acm loaded at boot
#     (the unit's device allow-list names their device groups, which must exist when it starts).
#
# For packagers and tests:
#   --root DIR      install into the tree DIR instead of / (users via useradd --prefix, units
#                   enabled with systemctl --root, nothing started)
#   --citygw PATH   use this citygw executable (and put it in ExecStart=) instead of the virtualenv
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=""
CITYGW=""
GATEWAY_ID=""
MODE=install
PURGE=0
START=0
USER_NAME=citygw

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --citygw) CITYGW="${2:?--citygw needs a path}"; shift 2 ;;
    --id) GATEWAY_ID="${2:?--id needs a gateway id}"; shift 2 ;;
    --uninstall) MODE=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    --start) START=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
ROOT="${ROOT%/}"
if [ -n "$ROOT" ] && [ ! -d "$ROOT" ]; then echo "install.sh: --root $ROOT is not a directory" >&2; exit 2; fi
if [ "$PURGE" = 1 ] && [ "$MODE" != uninstall ]; then echo "install.sh: --purge goes with --uninstall" >&2; exit 2; fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then echo "install.sh: run as root (sudo)" >&2; exit 1; fi

say() { printf '%s\n' "$*"; }
# systemd is running here and we install into this machine (not into a tree for an image)
live_systemd() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }
prefix_opt() { if [ -n "$ROOT" ]; then printf -- '--prefix\n%s\n' "$ROOT"; fi; }
mapfile -t PREFIX < <(prefix_opt)
has_user() { grep -q "^$USER_NAME:" "$ROOT/etc/passwd" 2>/dev/null; }
has_group() { grep -q "^$1:" "$ROOT/etc/group" 2>/dev/null; }
in_group() { grep -Eq "^$1:[^:]*:[^:]*:(.*,)?$USER_NAME(,|$)" "$ROOT/etc/group"; }
uid_of() { awk -F: -v u="$USER_NAME" '$1 == u { print $3 }' "$ROOT/etc/passwd"; }
gid_of() { awk -F: -v g="$1" '$1 == g { print $3 }' "$ROOT/etc/group"; }

UNIT="$ROOT/etc/systemd/system/citygw.service"
MODULES="$ROOT/etc/modules-load.d/citygw.conf"
ETC="$ROOT/etc/citygw"
STATE="$ROOT/var/lib/citygw"
VENV=/opt/citygw
LINK="$ROOT/usr/local/bin/citygw"
SHARE="$ROOT/usr/local/share/citygw"

# --- uninstall -----------------------------------------------------------------------------------

if [ "$MODE" = uninstall ]; then
  if live_systemd; then
    systemctl disable --now citygw.service 2>/dev/null || true
  elif [ -n "$ROOT" ] && [ -f "$UNIT" ] && command -v systemctl >/dev/null; then
    systemctl --root="$ROOT" disable citygw.service >/dev/null 2>&1 || true
  fi
  for path in "$UNIT" "$MODULES"; do
    if [ -e "$path" ]; then rm -f "$path"; say "removed $path"; fi
  done
  rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/citygw.service"
  if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$VENV/bin/citygw" ]; then rm -f "$LINK"; say "removed $LINK"; fi
  if [ -d "$ROOT$VENV" ]; then rm -rf "$ROOT$VENV"; say "removed $ROOT$VENV"; fi
  if [ -d "$SHARE" ]; then rm -rf "$SHARE"; say "removed $SHARE"; fi
  if live_systemd; then systemctl daemon-reload; fi
  if [ "$PURGE" = 1 ]; then
    for path in "$ETC" "$STATE"; do
      if [ -e "$path" ]; then rm -rf "$path"; say "purged $path"; fi
    done
    if has_user; then userdel "${PREFIX[@]}" "$USER_NAME"; say "removed user $USER_NAME"; fi
    if has_group "$USER_NAME"; then groupdel "${PREFIX[@]}" "$USER_NAME"; fi
  else
    for path in "$ETC" "$STATE"; do
      if [ -e "$path" ]; then say "kept $path (--purge removes it)"; fi
    done
    if has_user; then say "kept user $USER_NAME (it owns what was kept)"; fi
  fi
  exit 0
fi

# --- install -------------------------------------------------------------------------------------

# the user
if has_user; then
  say "user $USER_NAME exists"
else
  useradd "${PREFIX[@]}" --system --user-group --home-dir /var/lib/citygw --no-create-home \
    --shell /usr/sbin/nologin --comment "citygw edge sensor gateway" "$USER_NAME"
  say "created user $USER_NAME"
fi
for group in dialout plugdev bluetooth; do
  if has_group "$group" && ! in_group "$group"; then
    usermod "${PREFIX[@]}" -aG "$group" "$USER_NAME"
    say "added $USER_NAME to group $group"
  fi
done
UID_N="$(uid_of)"
GID_N="$(gid_of "$USER_NAME")"

# the software
if [ -n "$CITYGW" ]; then
  BIN="$CITYGW"
  RUN="$CITYGW"
else
  BIN="$VENV/bin/citygw"
  RUN="$ROOT$BIN"
  if [ ! -x "$ROOT$VENV/bin/python" ]; then
    python3 -m venv "$ROOT$VENV"
    say "created virtualenv $ROOT$VENV"
  fi
  "$ROOT$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SRC"
  say "installed citygw $("$RUN" --version | cut -d' ' -f2) into $ROOT$VENV"
  install -d -m 0755 "$(dirname "$LINK")"
  ln -sfn "$BIN" "$LINK"
fi

# directories
install -d -m 0755 "$ROOT/etc"
install -d -m 0750 -o 0 -g "$GID_N" "$ETC"
install -d -m 0700 -o 0 -g 0 "$ETC/credentials"
install -d -m 0755 "$ROOT/var/lib"
install -d -m 0700 -o "$UID_N" -g "$GID_N" "$STATE"
install -d -m 0755 "$SHARE"
install -m 0644 "$SRC/config/citygw.schema.json" "$SHARE/citygw.schema.json"

# the signing key: created once, then only its owner and mode are kept right
KEY="$ETC/signing.key"
if [ -e "$KEY" ]; then
  say "kept signing key $KEY"
else
  "$RUN" keygen --out "$KEY" >/dev/null 2>&1
  say "created signing key $KEY; give the platform $KEY.pub"
fi
chown "$UID_N:$GID_N" "$KEY"
chmod 0600 "$KEY"
if [ -e "$KEY.pub" ]; then chmod 0644 "$KEY.pub"; fi

# the config: a skeleton, never overwritten
CONFIG="$ETC/config.yaml"
if [ -e "$CONFIG" ]; then
  say "kept config $CONFIG"
else
  id="${GATEWAY_ID:-$(hostname -s 2>/dev/null || echo citygw)}"
  umask 027
  cat >"$CONFIG" <<EOF
# yaml-language-server: \$schema=/usr/local/share/citygw/citygw.schema.json
# citygw config: every key is described in config/example.yaml of the source, and in the
# schema above (an editor with yaml-language-server completes and checks this file).
# After editing: citygw check -c /etc/citygw/config.yaml && systemctl restart citygw
gateway:
  id: $id
  key_file: signing.key               # relative to this directory

buffer:
  max_disk: 2GiB

# Secrets: put each in /etc/citygw/credentials/NAME (root, 0600); the service reads it as
# \${CREDENTIALS_DIRECTORY}/citygw_NAME (systemd LoadCredential=), never from this file.
uplinks: {}
#  cdp:
#    type: mqtt
#    url: mqtts://broker.example.city:8883
#    username: $id
#    password_file: \${CREDENTIALS_DIRECTORY}/citygw_cdp-password

buses: {}
devices: {}
EOF
  umask 022
  chown "0:$GID_N" "$CONFIG"
  chmod 0640 "$CONFIG"
  say "created config $CONFIG (gateway id $id): add uplinks, buses and devices"
fi

# the unit, with ExecStart= pointing at this installation
install -d -m 0755 "$ROOT/etc/systemd/system"
unit_text="$(sed "s|^ExecStart=/usr/bin/citygw |ExecStart=$BIN |" "$SRC/systemd/citygw.service")"
if [ -f "$UNIT" ] && [ "$(cat "$UNIT")" = "$unit_text" ]; then
  say "unit $UNIT is current"
else
  printf '%s\n' "$unit_text" >"$UNIT"
  chmod 0644 "$UNIT"
  say "installed unit $UNIT"
  if live_systemd; then systemctl daemon-reload; fi
fi
install -d -m 0755 "$(dirname "$MODULES")"
modules_text="# citygw: serial adapters' drivers, loaded at boot so that the unit's DeviceAllow= groups exist
usbserial
cdc_acm"
if [ ! -f "$MODULES" ] || [ "$(cat "$MODULES")" != "$modules_text" ]; then
  printf '%s\n' "$modules_text" >"$MODULES"
  say "installed $MODULES"
  if [ -z "$ROOT" ] && command -v modprobe >/dev/null; then modprobe -q usbserial 2>/dev/null || true; modprobe -q cdc_acm 2>/dev/null || true; fi
fi
if live_systemd; then
  systemctl enable citygw.service >/dev/null 2>&1 && say "enabled citygw.service"
elif command -v systemctl >/dev/null; then
  systemctl --root="${ROOT:-/}" enable citygw.service >/dev/null 2>&1 && say "enabled citygw.service" || true
fi

# a last look at the config, as the daemon will read it
if "$RUN" check -c "$CONFIG"; then
  if [ "$START" = 1 ] && live_systemd; then
    systemctl restart citygw.service
    say "started citygw.service: journalctl -u citygw -f; citygw status -c $CONFIG"
  else
    say "next: edit $CONFIG, then systemctl restart citygw"
  fi
else
  say "the config has problems (above): fix them, then systemctl restart citygw" >&2
fi
