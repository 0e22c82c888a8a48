#!/usr/bin/env bash
# Install citygw as a systemd service on a Raspberry Pi (or any Debian-like machine with systemd).
#
#   sudo scripts/install.sh [--id GATEWAY_ID] [--start]   install, or upgrade in place
#   sudo scripts/install.sh --root DIR [--id GATEWAY_ID]  prepare a mounted SD-card image (below)
#   either, plus --operator-key FILE.pub (repeatable)     and the box takes configs signed by it
#   sudo scripts/install.sh --uninstall                   remove the software and the unit; keep the
#                                                         config, the signing key and the buffered data
#   sudo scripts/install.sh --uninstall --purge           remove those too, and the citygw user
#
# What it does (each step only when needed, so running it again changes nothing):
#   - a system user citygw (no login, no home), in groups dialout (serial ports) and, where they
#     exist, plugdev (some distributions' USB serial adapters) and bluetooth (BlueZ over D-Bus);
#   - citygw and its dependencies as wheels, citygw's built from a copy of this source (nothing is
#     written into the clone), installed into a virtualenv /opt/citygw without pip or setuptools;
#     /usr/local/bin/citygw pointing at it;
#   - /etc/citygw (root:citygw 0750) with a config skeleton (kept if present) and credentials/
#     (root 0700, handed to the service by systemd's LoadCredential=);
#   - /var/lib/citygw (citygw 0700), the buffer's home;
#   - the unit /etc/systemd/system/citygw.service, enabled; usbserial and cdc_acm loaded at boot
#     (the unit's device allow-list names their device groups, which must exist when it starts);
#   - with --operator-key (repeatable; an operator's Ed25519 public key, FILE.pub of citygw keygen):
#     the key in /etc/citygw (root:citygw 0640), named in the config skeleton's gateway.operator_keys
#     (a config already there is kept: the lines to add are printed), and the drop-in
#     /etc/systemd/system/citygw.service.d/remote-config.conf (ConfigurationDirectoryMode=0770),
#     so that the service can write a signed config document into /etc/citygw (docs/operations.md,
#     "Remote configuration"); a private key, or anything but an Ed25519 public key, is refused;
#   - last, scripts/firstboot.sh: the gateway id (--id; else the one in the config; else the board's
#     serial number; never the hostname) and the signing key (citygw 0600, made once: the box's
#     identity); it prints the key id the platform needs.
#
# An SD-card image (--root DIR, the image's root file system mounted at DIR): the same tree, but
# the software ships as wheels for the Pi and is installed by the Pi's own python3, and the id and
# key are made on each box at its first boot (citygw-firstboot.service runs firstboot.sh), never in
# the image, so every box flashed from it gets its own. docs/operations.md, "Provisioning a fleet".
#   --arch ARCH     the Pi's machine: aarch64 (default: 64-bit Raspberry Pi OS) or x86_64
#   --python X.Y    the Pi's python3 (default 3.11: Raspberry Pi OS 12 "bookworm"; 3.13 for 13)
#
# For packagers and tests:
#   --citygw PATH   use this citygw executable (and put it in ExecStart=) instead of the virtualenv
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=""
CITYGW=""
GATEWAY_ID=""
ARCH=aarch64
PY_VERSION=3.11
MODE=install
PURGE=0
START=0
USER_NAME=citygw
OPERATOR_KEYS=()

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --citygw) CITYGW="${2:?--citygw needs a path}"; shift 2 ;;
    --id) GATEWAY_ID="${2:?--id needs a gateway id}"; shift 2 ;;
    --arch) ARCH="${2:?--arch needs a machine name}"; shift 2 ;;
    --python) PY_VERSION="${2:?--python needs a version, e.g. 3.11}"; shift 2 ;;
    --operator-key) OPERATOR_KEYS+=("${2:?--operator-key needs a public key file (FILE.pub of citygw keygen)}"); shift 2 ;;
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
if [ ${#OPERATOR_KEYS[@]} -gt 0 ] && [ "$MODE" = uninstall ]; then echo "install.sh: --operator-key goes with an install, not --uninstall" >&2; exit 2; fi
if [ -n "$GATEWAY_ID" ] && ! printf '%s\n' "$GATEWAY_ID" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'; then
  echo "install.sh: --id $GATEWAY_ID: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit" >&2
  exit 2
fi

say() { printf '%s\n' "$*"; }

# --operator-key: each file an Ed25519 public key (SPKI PEM, what citygw keygen writes as FILE.pub),
# with a name that can go into /etc/citygw; all checked before anything is written
ED25519_SPKI=302a300506032b6570032100  # the DER of an Ed25519 SubjectPublicKeyInfo, before the key
spki_hex() {  # the DER of FILE's PUBLIC KEY block, in hex (empty when it has none)
  sed -n '/^-----BEGIN PUBLIC KEY-----\r\{0,1\}$/,/^-----END PUBLIC KEY-----\r\{0,1\}$/p' "$1" \
    | sed '1d;$d' | tr -d '\r\n' | base64 -d 2>/dev/null | od -An -v -tx1 | tr -d ' \n'
}
operator_key_problem() {  # why FILE cannot be an operator key on a box; nothing when it can
  local file="$1" name der
  name="$(basename -- "$file")"
  if [ ! -e "$file" ]; then echo "--operator-key $file: no such file"; return; fi
  if [ ! -f "$file" ] || [ ! -r "$file" ]; then echo "--operator-key $file: not a file this script can read"; return; fi
  if grep -q 'PRIVATE KEY-----' "$file"; then
    if [ -f "$file.pub" ]; then der="$file.pub"; else der="FILE.pub, which citygw keygen writes beside it"; fi
    echo "--operator-key $file is a private key: an operator's private key never goes on a box; give its public half, $der"
    return
  fi
  if ! grep -q '^-----BEGIN PUBLIC KEY-----' "$file"; then
    echo "--operator-key $file is not an Ed25519 public key (no -----BEGIN PUBLIC KEY----- in it): give FILE.pub of citygw keygen --out FILE"
    return
  fi
  der="$(spki_hex "$file")"
  if [ -z "$der" ]; then
    echo "--operator-key $file is not an Ed25519 public key (its PEM block does not decode: a damaged copy?)"
    return
  fi
  if [ "${#der}" != 88 ] || [ "${der:0:24}" != "$ED25519_SPKI" ]; then
    echo "--operator-key $file is not an Ed25519 public key (it is another kind): make operator keys with citygw keygen"
    return
  fi
  if [ "$name" = signing.key.pub ]; then
    echo "--operator-key $file: signing.key.pub is the box's own public key in /etc/citygw: give the operator key another name (e.g. operator.key.pub)"
  elif ! printf '%s\n' "$name" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.pub$'; then
    echo "--operator-key $file: it goes into /etc/citygw under its name, which must end in .pub and use letters, digits, '.', '_' or '-' (e.g. operator.key.pub)"
  fi
}
OP_NAMES=()
declare -A OP_SEEN_NAME=() OP_SEEN_KEY=()
for file in "${OPERATOR_KEYS[@]}"; do
  problem="$(operator_key_problem "$file")"
  if [ -n "$problem" ]; then echo "install.sh: $problem" >&2; exit 2; fi
  name="$(basename -- "$file")"
  der="$(spki_hex "$file")"
  if [ -n "${OP_SEEN_NAME[$name]:-}" ]; then
    echo "install.sh: --operator-key $file and ${OP_SEEN_NAME[$name]} would both be /etc/citygw/$name: rename one" >&2
    exit 2
  fi
  if [ -n "${OP_SEEN_KEY[$der]:-}" ]; then
    echo "install.sh: --operator-key $file is the same key as ${OP_SEEN_KEY[$der]}: a spare must be a key pair of its own (citygw keygen)" >&2
    exit 2
  fi
  OP_SEEN_NAME[$name]="$file"
  OP_SEEN_KEY[$der]="$file"
  OP_NAMES+=("$name")
done

# 32-bit ARM (32-bit Raspberry Pi OS, armhf): PyPI has no wheels of cffi and dbus-fast for it.
# Say so before anything is done (docs/technician.md, "Which Pi, which OS").
if [ "$MODE" = install ]; then
  if [ -n "$ROOT" ]; then target="$ARCH"; else target="$(uname -m)"; fi
  case "$target" in
    aarch64|x86_64) ;;
    armv6l|armv7l|armv8l|armhf|arm)
      cat >&2 <<EOF
install.sh: this is a 32-bit ARM system ($target). citygw needs 64-bit Raspberry Pi OS (aarch64):
two of its dependencies, cffi and dbus-fast, have no 32-bit ARM wheels on PyPI. Flash
"Raspberry Pi OS (64-bit)" (the Raspberry Pi 3, 4, 5 and Zero 2 W run it) and run install.sh
again; docs/technician.md, "Which Pi, which OS", says more.
EOF
      exit 1 ;;
    *) echo "install.sh: machine $target: citygw is installed on aarch64 (64-bit Raspberry Pi OS) or x86_64" >&2; exit 2 ;;
  esac
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then echo "install.sh: run as root (sudo)" >&2; exit 1; fi

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
FB_UNIT="$ROOT/etc/systemd/system/citygw-firstboot.service"
MODULES="$ROOT/etc/modules-load.d/citygw.conf"
DROPINS="$ROOT/etc/systemd/system/citygw.service.d"
DROPIN="$DROPINS/remote-config.conf"
ETC="$ROOT/etc/citygw"
STATE="$ROOT/var/lib/citygw"
VENV=/opt/citygw
LINK="$ROOT/usr/local/bin/citygw"
SHARE="$ROOT/usr/local/share/citygw"
LIB=/usr/local/lib/citygw          # firstboot, and in an image the wheels it installs
FIRSTBOOT="$LIB/firstboot"

# --- uninstall -----------------------------------------------------------------------------------

if [ "$MODE" = uninstall ]; then
  if live_systemd; then
    systemctl disable --now citygw.service 2>/dev/null || true
    systemctl disable citygw-firstboot.service 2>/dev/null || true
  elif [ -n "$ROOT" ] && [ -f "$UNIT" ] && command -v systemctl >/dev/null; then
    systemctl --root="$ROOT" disable citygw.service citygw-firstboot.service >/dev/null 2>&1 || true
  fi
  for path in "$UNIT" "$DROPIN" "$FB_UNIT" "$MODULES"; do
    if [ -e "$path" ]; then rm -f "$path"; say "removed $path"; fi
  done
  if [ -d "$DROPINS" ]; then
    rmdir "$DROPINS" 2>/dev/null || say "kept $DROPINS: drop-ins of yours are in it"
  fi
  rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/citygw.service" \
    "$ROOT/etc/systemd/system/multi-user.target.wants/citygw-firstboot.service"
  rm -rf "$ROOT/etc/systemd/system/citygw.service.requires"
  if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$VENV/bin/citygw" ]; then rm -f "$LINK"; say "removed $LINK"; fi
  for path in "$ROOT$VENV" "$ROOT$LIB" "$SHARE"; do
    if [ -d "$path" ]; then rm -rf "$path"; say "removed $path"; fi
  done
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

# an image must not carry a key: every box flashed from it would share one identity
KEY="$ETC/signing.key"
if [ -n "$ROOT" ] && [ -e "$KEY" ]; then
  cat >&2 <<EOF
install.sh: $KEY exists in the image: every box flashed from it would share one identity.
Remove it (and $KEY.pub) and run install.sh --root again; each box makes its own at first boot.
EOF
  exit 1
fi

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
GID_N="$(gid_of "$USER_NAME")"
UID_N="$(uid_of)"

# the software: wheels, installed by firstboot.sh (now, or in an image at the first boot)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/wheels"
if [ -n "$CITYGW" ]; then
  BIN="$CITYGW"
else
  BIN="$VENV/bin/citygw"
  # citygw is built from a copy of the source: a build in the clone leaves root-owned build/ and
  # citygw.egg-info/ in it (sudo), which break the next `scripts/dev` of the clone's owner
  mkdir "$WORK/src"
  tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./state --exclude=.pytest_cache --exclude=.mypy_cache \
    --exclude=.ruff_cache -cf - . | tar -C "$WORK/src" -xf -
  "${CITYGW_PYTHON:-/usr/bin/python3}" -m venv "$WORK/pip" || {
    echo "install.sh: cannot make a virtualenv: sudo apt-get install python3-venv" >&2; exit 1; }
  pip=("$WORK/pip/bin/python" -m pip --disable-pip-version-check --no-input)
  "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$WORK/wheels" "$WORK/src"
  wheel="$(ls "$WORK"/wheels/citygw-*.whl)"
  host_py="$("$WORK/pip/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ -z "$ROOT" ] || { [ "$ARCH" = "$(uname -m)" ] && [ "$PY_VERSION" = "$host_py" ]; }; then
    # for this machine's platform and python (a dependency without a wheel is built here)
    "${pip[@]}" wheel --quiet --wheel-dir "$WORK/wheels" "$wheel" pip
    for_what="this machine ($(uname -m), python $host_py)"
  else
    # for the Pi: its platform's wheels only (manylinux, glibc 2.17 up to Debian 12's 2.36)
    platforms=(--platform "manylinux2014_$ARCH")
    for v in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${v}_$ARCH"); done
    "${pip[@]}" download --quiet --only-binary=:all: "${platforms[@]}" --python-version "$PY_VERSION" \
      --implementation cp --dest "$WORK/wheels" "$wheel" pip
    for_what="$ARCH, python $PY_VERSION"
  fi
  say "built $(find "$WORK/wheels" -name '*.whl' | wc -l) wheels ($(du -sh "$WORK/wheels" | cut -f1)) for $for_what"
  install -d -m 0755 "$(dirname "$LINK")"
  ln -sfn "$BIN" "$LINK"
fi
install -d -m 0755 "$ROOT$LIB"
install -m 0755 "$SRC/scripts/firstboot.sh" "$ROOT$FIRSTBOOT"
if [ -n "$ROOT" ] && [ -z "$CITYGW" ]; then
  rm -rf "$ROOT$LIB/wheels"
  cp -r "$WORK/wheels" "$ROOT$LIB/wheels"
  chmod -R a+rX "$ROOT$LIB/wheels"
  say "wheels for the first boot in $ROOT$LIB/wheels"
fi

# directories
install -d -m 0755 "$ROOT/etc"
# /etc/citygw: 0770 where the service takes remote configuration (it writes the new config there;
# systemd sets ConfigurationDirectoryMode= at each start, but does not chown the directory)
etc_mode=0750
if [ ${#OP_NAMES[@]} -gt 0 ]; then
  etc_mode=0770
elif [ -d "$DROPINS" ]; then  # a drop-in made before (--operator-key, or systemctl edit): kept
  mode="$(sed -n 's/^ConfigurationDirectoryMode=\(0\{0,1\}[0-7]\{3\}\)[[:space:]]*$/\1/p' "$DROPINS"/*.conf 2>/dev/null | tail -n 1 || true)"
  if [ -n "$mode" ]; then etc_mode="$mode"; fi
fi
install -d -m "$etc_mode" -o 0 -g "$GID_N" "$ETC"
install -d -m 0700 -o 0 -g 0 "$ETC/credentials"
install -d -m 0755 "$ROOT/var/lib"
install -d -m 0700 -o "$UID_N" -g "$GID_N" "$STATE"
install -d -m 0755 "$SHARE"
install -m 0644 "$SRC/config/citygw.schema.json" "$SHARE/citygw.schema.json"

# the operator keys: public halves, readable by the service
for file in "${OPERATOR_KEYS[@]}"; do
  target="$ETC/$(basename -- "$file")"
  if [ -f "$target" ] && cmp -s "$file" "$target" \
    && [ "$(stat -c '%u:%g %a' "$target")" = "0:$GID_N 640" ]; then
    say "operator key $target is current"
  else
    if [ -f "$target" ] && ! cmp -s "$file" "$target"; then what=replaced; else what=installed; fi
    install -m 0640 -o 0 -g "$GID_N" "$file" "$target"
    say "$what operator key $target"
  fi
done

# the config: a skeleton, never overwritten; firstboot.sh puts the gateway id in
CONFIG="$ETC/config.yaml"
# the entries of gateway.operator_keys in CONFIG, one a line, as names relative to /etc/citygw where
# they are in it (a block list or a one-line [flow] list, as people write it); "-" when it has none
config_operator_keys() {
  awk '
    function entry(v) {
      sub(/[[:space:]]+#.*$/, "", v); gsub(/^[[:space:]"\047]+|[[:space:]"\047]+$/, "", v)
      sub(/^\/etc\/citygw\//, "", v); if (v != "") print v
    }
    /^gateway:/ { g = 1; next }
    g && /^[^[:space:]#]/ { g = 0 }
    g && list && /^[[:space:]]+-[[:space:]]/ { v = $0; sub(/^[[:space:]]+-[[:space:]]+/, "", v); entry(v); next }
    g && list && !/^[[:space:]]*(#.*)?$/ { list = 0 }
    g && /^[[:space:]]+operator_keys:/ {
      found = 1; v = $0; sub(/^[[:space:]]+operator_keys:[[:space:]]*/, "", v); sub(/[[:space:]]*#.*$/, "", v)
      if (v ~ /^\[/) { gsub(/^\[|\].*$/, "", v); n = split(v, parts, ","); for (i = 1; i <= n; i++) entry(parts[i]) }
      else if (v == "") list = 1
    }
    END { if (!found) print "-" }
  ' "$1"
}
if [ -e "$CONFIG" ]; then
  if [ ${#OP_NAMES[@]} -eq 0 ]; then
    say "kept config $CONFIG"
  else
    op_named=0
    mapfile -t named < <(config_operator_keys "$CONFIG")
    missing=()
    for name in "${OP_NAMES[@]}"; do
      if ! printf '%s\n' "${named[@]}" | grep -qxF -- "$name"; then missing+=("$name"); fi
    done
    if [ "${named[*]}" = - ]; then
      say "kept config $CONFIG: it names no operator keys, so the box takes no remote configuration;"
      say "  add these lines under gateway: (beside key_file:):"
      say "  operator_keys:"
      for name in "${OP_NAMES[@]}"; do say "    - $name"; done
    elif [ ${#missing[@]} -eq 0 ]; then
      op_named=1
      say "kept config $CONFIG: its gateway.operator_keys names ${OP_NAMES[*]}"
    elif grep -Eq '^[[:space:]]+operator_keys:[[:space:]]*\[' "$CONFIG"; then
      say "kept config $CONFIG: its gateway.operator_keys does not name ${missing[*]}: add it to the list [...] (a name relative to /etc/citygw, or /etc/citygw/NAME)"
    else
      say "kept config $CONFIG: its gateway.operator_keys does not name ${missing[*]}; add to its list:"
      for name in "${missing[@]}"; do say "    - $name"; done
    fi
  fi
else
  id=set-at-first-boot
  operator_keys=""
  op_named=1
  if [ ${#OP_NAMES[@]} -gt 0 ]; then
    operator_keys=$'\n'"  operator_keys:                      # signed config documents: docs/operations.md"
    for name in "${OP_NAMES[@]}"; do operator_keys+=$'\n'"    - $name"; done
  fi
  umask 027
  cat >"$CONFIG" <<EOF
# yaml-language-server: \$schema=/usr/local/share/citygw/citygw.schema.json
# citygw config: every key is described in config/example.yaml of the source, and in the
# schema above (an editor with yaml-language-server completes and checks this file).
# After editing: sudo citygw check -c /etc/citygw/config.yaml && sudo systemctl restart citygw
gateway:
  id: $id
  key_file: signing.key               # relative to this directory${operator_keys}

buffer:
  max_disk: 2GiB

# Secrets: put each in /etc/citygw/credentials/NAME (root, 0600) and name it
# \${CREDENTIALS_DIRECTORY}/NAME: the service gets it from systemd (LoadCredential=), and
# sudo citygw check, status, probe and resend read it in /etc/citygw/credentials.
uplinks: {}
#  cdp:
#    type: mqtt
#    url: mqtts://broker.example.city:8883
#    username: $id
#    password_file: \${CREDENTIALS_DIRECTORY}/cdp-password

buses: {}
devices: {}
EOF
  umask 022
  chown "0:$GID_N" "$CONFIG"
  chmod 0640 "$CONFIG"
  say "created config $CONFIG: add uplinks, buses and devices"
fi

# the units, with ExecStart= pointing at this installation
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
# remote configuration: the service may write its config directory
if [ ${#OP_NAMES[@]} -gt 0 ]; then
  dropin_text="# citygw takes signed config documents (install.sh --operator-key): it writes the new config
# (and config.yaml.previous) into /etc/citygw, so the directory is root:citygw 0770, not 0750.
# docs/operations.md, \"Remote configuration\". install.sh --uninstall removes this file.
[Service]
ConfigurationDirectoryMode=0770"
  if [ -f "$DROPIN" ] && [ "$(cat "$DROPIN")" = "$dropin_text" ]; then
    say "drop-in $DROPIN is current"
  else
    install -d -m 0755 "$DROPINS"
    printf '%s\n' "$dropin_text" >"$DROPIN"
    chmod 0644 "$DROPIN"
    say "installed drop-in $DROPIN (ConfigurationDirectoryMode=0770)"
    if live_systemd; then systemctl daemon-reload; fi
  fi
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
# enable UNIT in the tree: what `systemctl --root enable` does, by hand where it cannot run (a
# build machine without systemd must not yield an image whose units never start)
enable_in_tree() {
  local unit="$1" kind targets target suffix
  if command -v systemctl >/dev/null && systemctl --root="${ROOT:-/}" enable "$unit" >/dev/null 2>&1; then
    say "enabled $unit"
    return 0
  fi
  while IFS='=' read -r kind targets; do
    case "$kind" in WantedBy) suffix=wants ;; RequiredBy) suffix=requires ;; *) continue ;; esac
    for target in $targets; do
      install -d -m 0755 "$ROOT/etc/systemd/system/$target.$suffix"
      ln -sfn "/etc/systemd/system/$unit" "$ROOT/etc/systemd/system/$target.$suffix/$unit"
    done
  done <"$ROOT/etc/systemd/system/$unit"
  say "enabled $unit (links made by hand)"
}
if live_systemd; then
  systemctl enable citygw.service >/dev/null 2>&1 && say "enabled citygw.service"
else
  enable_in_tree citygw.service
fi

operator_summary=""
if [ ${#OP_NAMES[@]} -gt 0 ]; then
  joined="$(printf ', %s' "${OP_NAMES[@]}")"
  if [ "$op_named" = 1 ]; then
    operator_summary="operator keys: ${joined:2} in $ETC: signed config documents are taken (docs/operations.md, \"Remote configuration\")"
  else
    operator_summary="operator keys: ${joined:2} in $ETC, but the config does not name them all yet (above): until it does, the box takes no config document signed by them"
  fi
fi

# an image: each box makes its id and key at its first boot
if [ -n "$ROOT" ]; then
  fb_text="$(sed "s|^ExecStart=/usr/local/lib/citygw/firstboot\$|ExecStart=$FIRSTBOOT${CITYGW:+ --citygw $CITYGW}|" \
    "$SRC/systemd/citygw-firstboot.service")"
  printf '%s\n' "$fb_text" >"$FB_UNIT"
  chmod 0644 "$FB_UNIT"
  enable_in_tree citygw-firstboot.service
  umask 027
  {
    printf '# while this file exists, citygw-firstboot.service runs %s at boot\n' "$FIRSTBOOT"
    if [ -n "$GATEWAY_ID" ]; then printf 'id=%s\n' "$GATEWAY_ID"; fi
  } >"$ETC/firstboot.pending"
  umask 022
  say "image ready: each box makes its gateway id and signing key at its first boot"
  say "  gateway id: citygw/id on the boot partition, else ${GATEWAY_ID:+$GATEWAY_ID, else }the board's serial number (rpi-<serial>)"
  say "  public key: left on the boot partition as citygw/keys/<gateway id>/<key id>.pub for the receiver's keys DIR"
  if [ ${#OP_NAMES[@]} -gt 0 ]; then say "  $operator_summary"; fi
  exit 0
fi

# this machine: now
firstboot=("$ROOT$FIRSTBOOT" --wheels "$WORK/wheels")
if [ -n "$CITYGW" ]; then firstboot+=(--citygw "$CITYGW"); fi
if [ -n "$GATEWAY_ID" ]; then firstboot+=(--id "$GATEWAY_ID"); fi
"${firstboot[@]}"
if [ -n "$operator_summary" ]; then say "$operator_summary"; fi
if [ "$START" = 1 ] && live_systemd; then
  systemctl restart citygw.service
  say "started citygw.service: journalctl -u citygw -f; sudo citygw status -c $CONFIG"
else
  say "next: edit $CONFIG, then sudo systemctl restart citygw"
fi
