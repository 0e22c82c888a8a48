#!/usr/bin/env bash
# citygw's provisioning step: give this box its software, its gateway id and its own signing key.
#
# On a box made from an image prepared with `scripts/install.sh --root DIR`, systemd runs it once
# at first boot (citygw-firstboot.service, before citygw.service), as /usr/local/lib/citygw/firstboot.
# `sudo scripts/install.sh` on a box runs it too, as its last step. It:
#   1. picks the gateway id, first found of: --id; the provisioning file citygw/id on the boot
#      partition (/boot/firmware/citygw/id, written on the card after flashing); the id the image was
#      prepared with (install.sh --root --id); the one already in the config, but not at first
#      boot (a config in an image is every box's); the board's serial number (rpi-<serial>). Never
#      the hostname: every stock image has the same one. The id goes into /etc/citygw/config.yaml;
#   2. installs citygw into the virtualenv /opt/citygw from the wheels given (offline, with this
#      box's own /usr/bin/python3, so every path in the virtualenv is this box's; no pip, no
#      setuptools in it: the service never uses them);
#   3. makes the signing key once (/etc/citygw/signing.key, citygw 0600: the box's identity) and
#      prints its key id; at first boot it also copies the public key to the boot partition as
#      citygw/keys/<gateway id>/<key id>.pub, where an installer collects it into the receiver's
#      keys DIR (`cp -r /media/.../bootfs/citygw/keys/* DIR/`);
#   4. at first boot, removes /etc/citygw/firstboot.pending and the wheels, so it never runs again.
#
#   firstboot [--id GATEWAY_ID] [--wheels DIR] [--citygw PATH]
set -euo pipefail

ID_ARG=""
WHEELS=/usr/local/lib/citygw/wheels
CITYGW=""
while [ $# -gt 0 ]; do
  case "$1" in
    --id) ID_ARG="${2:?--id needs a gateway id}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
    --citygw) CITYGW="${2:?--citygw needs a path}"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "firstboot: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { printf 'citygw firstboot: %s\n' "$*"; }
fail() { printf 'citygw firstboot: %s\n' "$*" >&2; exit 1; }

PYTHON="${CITYGW_PYTHON:-/usr/bin/python3}"
VENV=/opt/citygw
ETC=/etc/citygw
CONFIG="$ETC/config.yaml"
KEY="$ETC/signing.key"
PENDING="$ETC/firstboot.pending"
PLACEHOLDER=set-at-first-boot
ID_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
if [ -d /boot/firmware ]; then BOOT=/boot/firmware; else BOOT=/boot; fi

# 32-bit ARM: cffi and dbus-fast have no wheels for it on PyPI (docs/technician.md)
machine="$(uname -m)"
case "$machine" in
  armv6l|armv7l|armv8l)
    fail "this is a 32-bit system ($machine): citygw needs 64-bit Raspberry Pi OS (aarch64); see docs/technician.md, \"Which Pi, which OS\"" ;;
esac

# 1. the gateway id (first: a box without one fails before the long install)
pending_id() { if [ -f "$PENDING" ]; then sed -n 's/^id=//p' "$PENDING" | head -n 1; fi; }
serial_id() {
  local serial=""
  if [ -r /sys/firmware/devicetree/base/serial-number ]; then
    serial="$(tr -d '\0' </sys/firmware/devicetree/base/serial-number)"
  fi
  if [ -z "$serial" ] && [ -r /proc/cpuinfo ]; then
    serial="$(sed -n 's/^Serial[[:space:]]*:[[:space:]]*\([0-9A-Fa-f]*\).*/\1/p' /proc/cpuinfo | head -n 1)"
  fi
  serial="$(printf '%s' "$serial" | tr 'A-F' 'a-f')"
  case "$serial" in ''|*[!0-9a-f]*|0000000000000000) return 0 ;; esac
  printf 'rpi-%s\n' "$serial"
}
config_id() {  # the value of gateway.id in the config, when it is written the skeleton's way
  awk '/^gateway:/ { g = 1; next } g && /^[^[:space:]#]/ { g = 0 } g && /^[[:space:]]+id:/ { print $2; exit }' "$CONFIG" 2>/dev/null | tr -d "\"'"
}
ID="" ; FROM=""
if [ -n "$ID_ARG" ]; then ID="$ID_ARG"; FROM="--id"
elif [ -s "$BOOT/citygw/id" ]; then ID="$(tr -d ' \r\n\t' <"$BOOT/citygw/id")"; FROM="$BOOT/citygw/id"
elif [ -n "$(pending_id)" ]; then ID="$(pending_id)"; FROM="the image (install.sh --id)"
elif [ ! -f "$PENDING" ] && [ -n "$(config_id)" ] && [ "$(config_id)" != "$PLACEHOLDER" ]; then
  ID="$(config_id)"; FROM="$CONFIG"  # not at first boot: an image's config is every box's
else ID="$(serial_id)"; FROM="the board's serial number"
fi
if [ -z "$ID" ]; then
  fail "no gateway id: write one (e.g. bkk-pathumwan-0042) into citygw/id on the boot partition ($BOOT/citygw/id), or run install.sh --id ID; this board has no serial number to derive one from"
fi
printf '%s\n' "$ID" | grep -Eq "$ID_RE" || fail "gateway id '$ID' (from $FROM): use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"

current="$(config_id)"
if [ ! -f "$CONFIG" ]; then
  fail "$CONFIG is missing (install.sh writes it)"
elif [ "$current" = "$ID" ]; then
  say "gateway id $ID"
elif [ -n "$current" ]; then
  sed -i "0,/^\([[:space:]]\+id:[[:space:]]*\)[\"']\{0,1\}$current[\"']\{0,1\}/s//\1$ID/" "$CONFIG"
  sed -i "s/\b$PLACEHOLDER\b/$ID/g" "$CONFIG"
  [ "$(config_id)" = "$ID" ] || fail "could not set gateway.id in $CONFIG: set it to $ID yourself"
  if [ "$current" = "$PLACEHOLDER" ]; then say "gateway id $ID (from $FROM)"; else say "changed gateway id from $current to $ID in $CONFIG"; fi
else
  fail "$CONFIG has no 'gateway: id:' line this script can set: set gateway.id to $ID yourself"
fi

# 2. the software
if [ -n "$CITYGW" ]; then
  RUN="$CITYGW"
else
  RUN="$VENV/bin/citygw"
  shopt -s nullglob
  pips=("$WHEELS"/pip-*.whl)
  citygws=("$WHEELS"/citygw-*.whl)
  shopt -u nullglob
  if [ ${#citygws[@]} -gt 0 ]; then
    [ ${#pips[@]} -gt 0 ] || fail "no pip wheel in $WHEELS"
    # wheels made for another python (an image for Raspberry Pi OS 12 on a card with 13): say so
    made_for="$(find "$WHEELS" -name '*-cp3*-cp3*-*.whl' | sed -n 's/.*-cp\(3[0-9]*\)-cp3.*/\1/p' | head -n 1)"
    this_one="$("$PYTHON" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
    if [ -n "$made_for" ] && [ "$made_for" != "$this_one" ]; then
      fail "the wheels in $WHEELS are for python ${made_for:0:1}.${made_for:1}, this box has $("$PYTHON" --version 2>&1): prepare the image again with install.sh --root DIR --python ${this_one:0:1}.${this_one:1}"
    fi
    pip=("$VENV/bin/python" "${pips[-1]}/pip" --disable-pip-version-check --no-input)
    if [ ! -x "$VENV/bin/python" ]; then
      "$PYTHON" -m venv --without-pip "$VENV"
      say "created virtualenv $VENV ($("$PYTHON" --version))"
    fi
    # pip runs from its wheel, so it is never installed into the virtualenv
    "${pip[@]}" install --quiet --no-index --find-links "$WHEELS" "${citygws[-1]}"
    "${pip[@]}" install --quiet --no-index --no-deps --force-reinstall "${citygws[-1]}"
    for stale in pip setuptools wheel; do  # left by an older install.sh
      if "$VENV/bin/python" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$stale" 2>/dev/null; then
        "${pip[@]}" uninstall --quiet --yes "$stale"
        say "removed $stale from $VENV (the service never uses it)"
      fi
    done
    say "installed citygw $("$RUN" --version | cut -d' ' -f2) into $VENV"
  fi
  [ -x "$RUN" ] || fail "$RUN is missing and there are no wheels in $WHEELS to install it from"
fi

# 3. the signing key: made on this box, once
kid_of() {  # RFC 7638 thumbprint of an Ed25519 public key (SPKI PEM): the kid of the box's batches
  local x digest
  x="$(sed '1d;$d' "$1" | tr -d '\n' | base64 -d | tail -c 32 | base64 | tr '+/' '-_' | tr -d '=\n')"
  digest="$(printf '{"crv":"Ed25519","kty":"OKP","x":"%s"}' "$x" | sha256sum | cut -c1-64)"
  # shellcheck disable=SC2059  # the digest's hex digits become \x escapes on purpose
  printf "$(printf '%s' "$digest" | sed 's/../\\x&/g')" | base64 | tr '+/' '-_' | tr -d '=\n'
}
if [ -e "$KEY" ]; then
  say "kept signing key $KEY"
else
  "$RUN" keygen --out "$KEY" >/dev/null 2>&1 || fail "citygw keygen --out $KEY failed"
  say "created signing key $KEY"
fi
chown citygw:citygw "$KEY"
chmod 0600 "$KEY"
chmod 0644 "$KEY.pub"
KID="$(kid_of "$KEY.pub")"
say "gateway $ID, key id $KID: the platform's keys DIR needs $KEY.pub as DIR/$ID/$KID.pub"

if [ -f "$PENDING" ]; then
  collect="$BOOT/citygw/keys/$ID"
  if mkdir -p "$collect" 2>/dev/null && cp "$KEY.pub" "$collect/$KID.pub"; then
    say "public key copied to $collect/$KID.pub: collect $BOOT/citygw/keys/* into the receiver's keys DIR"
  else
    say "could not write $collect (boot partition not mounted?): take $KEY.pub from the box" >&2
  fi
fi

# 4. done: a last look at the config, as the daemon will read it
"$RUN" check -c "$CONFIG" || say "the config has problems (above): fix them, then systemctl restart citygw" >&2
if [ -f "$PENDING" ]; then
  rm -f "$PENDING"
  if [ -z "$CITYGW" ] && [ -d "$WHEELS" ]; then rm -rf "$WHEELS"; fi
  say "first boot done"
fi
