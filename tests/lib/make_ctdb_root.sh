#!/bin/sh
# Build, once, a Debian root in which tests/lib/ctdbnodes.py runs a newer
# ctdbd than this host's: newer ctdb needs a newer glibc than Debian 12 has.
#
#     make_ctdb_root.sh [SUITE]      SUITE: trixie (default), trixie-backports, sid
#
#     trixie            Debian 13's ctdb (4.22)
#     trixie-backports  a copy of the trixie root with ctdb from Debian 13's
#                       backports (4.24 when this was written)
#     sid               Debian unstable's ctdb (4.25 when this was written)
#
# Which version a suite serves moves on: the tests read it from the root.
# The root is cached in ~/.cache/ctdb_etcd_lock/SUITE-root and marked
# complete by a stamp file, so a half-built root (no network, an interrupted
# run) is built again next time.  Prints the root's path; exits non-zero if it
# cannot be built, and the tests of that version then skip.
set -eu

suite=${1:-trixie}
case $suite in
    trixie|trixie-backports|sid) ;;
    *) echo "make_ctdb_root: unknown suite $suite (trixie, trixie-backports or sid)" >&2; exit 2 ;;
esac
cache=${CTDB_ETCD_LOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ctdb_etcd_lock}
root=$cache/$suite-root
stamp=$cache/$suite-root.complete
log=$cache/$suite-root.log

if [ -f "$stamp" ] && [ -x "$root/usr/sbin/ctdbd" ]; then
    echo "$root"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "make_ctdb_root: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null ||
    { echo "make_ctdb_root: debootstrap is not installed" >&2; exit 1; }

# The Debian mirror this machine's apt already uses (deb822 or one-line sources).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\/\{0,1\}\)\([[:space:]].*\)\{0,1\}$/\1/p' \
             /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\/\{0,1\}\)[[:space:]].*/\2/p' \
                 /etc/apt/sources.list 2>/dev/null | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

# The backports root starts as a copy of the trixie root: build that first.
if [ "$suite" = trixie-backports ]; then
    base=$("$0" trixie) || { echo "make_ctdb_root: no trixie root to start from" >&2; exit 1; }
fi

rm -f "$stamp"
# A debootstrap that was interrupted may have left /proc or /sys mounted in
# the root: unmount them (deepest first) before removing what is there.
if [ -d "$root" ]; then
    awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mountpoint; do umount -l "$mountpoint" || true; done
    rm -rf --one-file-system "$root"
fi
mkdir -p "$cache"
: >"$log"
if [ "$suite" = trixie-backports ]; then
    echo "make_ctdb_root: building $root from $base and $mirror (once; about a minute)" >&2
    # All but ctdb-tests/, where tests may be running nodes right now.
    mkdir "$root"
    for entry in "$base"/* "$base"/.[!.]*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        [ "${entry##*/}" = ctdb-tests ] && continue
        cp -a --reflink=auto "$entry" "$root/" ||
            { echo "make_ctdb_root: cannot copy $base" >&2; exit 1; }
    done
    echo "deb $mirror trixie-backports main" >"$root/etc/apt/sources.list.d/backports.list"
else
    echo "make_ctdb_root: building $root from $mirror (once; about a minute)" >&2
    # sid's Release is signed with keys newer than a Debian 12 host may know:
    # take the newest keyring at hand (the trixie root's, once built).
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    newer=$cache/trixie-root/usr/share/keyrings/debian-archive-keyring.gpg
    if [ "$suite" = sid ] && [ -f "$cache/trixie-root.complete" ] && [ -f "$newer" ]; then
        keyring=$newer
    fi
    debootstrap --variant=minbase --keyring="$keyring" "$suite" "$root" "$mirror" >>"$log" 2>&1 ||
        { echo "make_ctdb_root: debootstrap failed, see $log" >&2; exit 1; }
    # Packages must not start daemons inside the root.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
fi

# sid's Release is valid for a week only: a mirror that is a snapshot
# (some are) serves it expired, and apt refuses it without this.
apt_options=
[ "$suite" = sid ] && apt_options="-o Acquire::Check-Valid-Until=false"
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@" >>"$log" 2>&1
}
target=
[ "$suite" = trixie-backports ] && target="-t trixie-backports"
# ctdb, the Python our helper runs on, and python3-etcd for the original helper.
# shellcheck disable=SC2086
in_root apt-get $apt_options update -q &&
    in_root apt-get $apt_options install -y -q --no-install-recommends $target ctdb python3 python3-etcd procps &&
    in_root apt-get clean ||
    { echo "make_ctdb_root: installing ctdb failed, see $log" >&2; exit 1; }
[ -x "$root/usr/sbin/ctdbd" ] || { echo "make_ctdb_root: no ctdbd in the root" >&2; exit 1; }

touch "$stamp"
echo "$root"
