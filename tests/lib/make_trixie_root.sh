#!/bin/sh
# Build, once, the Debian 13 (trixie) root in which tests/lib/ctdbnodes.py runs
# ctdbd 4.22: trixie's ctdb needs a newer glibc than Debian 12 has.  The root
# is cached in ~/.cache/ctdb_etcd_lock/trixie-root and marked complete by a
# stamp file, so a half-built root (no network, an interrupted run) is built
# again next time.  Prints the root's path; exits non-zero if it cannot be
# built, and the 4.22 tests then skip.
set -eu

cache=${CTDB_ETCD_LOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ctdb_etcd_lock}
root=$cache/trixie-root
stamp=$cache/trixie-root.complete

if [ -f "$stamp" ] && [ -x "$root/usr/sbin/ctdbd" ]; then
    echo "$root"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "make_trixie_root: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null ||
    { echo "make_trixie_root: debootstrap is not installed" >&2; exit 1; }

# The Debian mirror this machine's apt already uses (deb822 or one-line sources).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\/\{0,1\}\)\([[:space:]].*\)\{0,1\}$/\1/p' \
             /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\/\{0,1\}\)[[:space:]].*/\2/p' \
                 /etc/apt/sources.list 2>/dev/null | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

rm -f "$stamp"
# A debootstrap that was interrupted may have left /proc or /sys mounted in
# the root: unmount them (deepest first) before removing what is there.
if [ -d "$root" ]; then
    awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mountpoint; do umount -l "$mountpoint" || true; done
    rm -rf --one-file-system "$root"
fi
mkdir -p "$cache"
echo "make_trixie_root: building $root from $mirror (once; about a minute)" >&2
debootstrap --variant=minbase trixie "$root" "$mirror" >"$cache/trixie-root.log" 2>&1 ||
    { echo "make_trixie_root: debootstrap failed, see $cache/trixie-root.log" >&2; exit 1; }

# Packages must not start daemons inside the root.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@" >>"$cache/trixie-root.log" 2>&1
}
# ctdb, the Python our helper runs on, and python3-etcd for the original helper.
in_root apt-get update -q &&
    in_root apt-get install -y -q --no-install-recommends ctdb python3 python3-etcd procps &&
    in_root apt-get clean ||
    { echo "make_trixie_root: installing ctdb failed, see $cache/trixie-root.log" >&2; exit 1; }
[ -x "$root/usr/sbin/ctdbd" ] || { echo "make_trixie_root: no ctdbd in the root" >&2; exit 1; }

touch "$stamp"
echo "$root"
