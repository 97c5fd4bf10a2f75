#!/usr/bin/env python3
"""Get an etcd server binary of a Debian suite without changing the system's apt state.

    python3 tests/lib/fetch_etcd.py SUITE [--cache DIR]   # SUITE: bookworm (etcd 3.4) or trixie (3.5)

prints the binary's absolute path (exit 0), or one line on stderr (exit 1). Importable as
etcd_binary(suite, cache_dir=None) -> str. Standard library only, Python 3.6+.

/usr/bin/etcd is used if it is of the suite's version line. Otherwise apt-get, given a throw-away
sources list, state and cache (mirror: the first .../debian URI in the machine's apt sources;
Release signatures checked with the system's Debian archive keyring), downloads etcd-server and
`dpkg -x` unpacks it into CACHE/etcd-SUITE (CACHE defaults to $XDG_CACHE_HOME/ctdb_etcd_lock or
~/.cache/ctdb_etcd_lock): into a temp dir first, checked, then renamed into place, so parallel
callers never see half a binary. Later calls reuse it without network.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

VERSIONS = {"bookworm": "3.4", "trixie": "3.5"}
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class FetchError(Exception):
    pass


def etcd_version(binary):
    """'major.minor' as printed by `binary --version`, or None if it does not run."""
    try:
        out = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"etcd Version: (\d+\.\d+)\.", out.decode("utf-8", "replace"))
    return m.group(1) if m else None


def debian_mirror():
    """The first http(s) URI ending in /debian named by the machine's apt sources."""
    parts = [p for p in glob.glob("/etc/apt/sources.list.d/*") if p.endswith((".list", ".sources"))]
    for path in ["/etc/apt/sources.list"] + sorted(parts):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if path.endswith(".sources"):  # deb822: "URIs: uri [uri...]"
                uris = line[5:].split() if line.lower().startswith("uris:") else []
            else:  # one-line: "deb [options] uri suite components"
                words = re.sub(r"\[[^]]*\]", " ", line).split()
                uris = words[1:2] if words[:1] == ["deb"] else []
            for uri in uris:
                if re.match(r"https?://", uri) and uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def apt(tmp, *args, cmd="apt-get"):
    """Run apt-get/apt-cache with sources, state and cache all inside tmp; return stdout."""
    opts = {"Dir::Etc::SourceList": tmp + "/sources.list", "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": "/dev/null",
            "Dir::State": tmp, "Dir::State::Lists": tmp + "/lists",
            "Dir::State::status": tmp + "/status", "Dir::Cache": tmp,
            "Dir::Cache::Archives": tmp + "/archives", "Debug::NoLocking": "1",
            "Acquire::Languages": "none"}
    argv = [cmd, "-q"] + ["-o%s=%s" % kv for kv in opts.items()] + list(args)
    p = subprocess.run(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if p.returncode:
        errs = [l for l in p.stderr.splitlines() if l.startswith(("E:", "W:"))] or [p.stderr]
        raise FetchError("%s %s failed: %s" % (cmd, args[0], errs[0].strip()))
    return p.stdout


def setup_apt(tmp, suite):
    """Make the empty dir tmp an apt root for SUITE main, and apt-get update it."""
    os.chmod(tmp, 0o755)  # apt downloads as the unprivileged user _apt
    for d in ("lists/partial", "archives/partial"):
        os.makedirs(os.path.join(tmp, d))
    open(tmp + "/status", "w").close()
    with open(tmp + "/sources.list", "w") as f:
        f.write("deb [signed-by=%s] %s %s main\n" % (KEYRING, debian_mirror(), suite))
    apt(tmp, "update", "--error-on=any")


def etcd_binary(suite, cache_dir=None):
    """Absolute path of an etcd binary of SUITE's version line; FetchError if none can be had."""
    want = VERSIONS.get(suite)
    if want is None:
        raise FetchError("unknown suite %r (known: %s)" % (suite, ", ".join(sorted(VERSIONS))))
    if etcd_version("/usr/bin/etcd") == want:
        return "/usr/bin/etcd"
    cache = os.path.abspath(cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ctdb_etcd_lock"))
    final = os.path.join(cache, "etcd-" + suite)
    binary = os.path.join(final, "usr/bin/etcd")
    if etcd_version(binary) == want:
        return binary
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="fetch-etcd-apt-")
    stage = tempfile.mkdtemp(prefix=".etcd-%s-" % suite, dir=cache)
    try:
        setup_apt(tmp, suite)
        apt(tmp, "download", "etcd-server")
        debs = glob.glob(tmp + "/etcd-server_*.deb")
        if len(debs) != 1:
            raise FetchError("apt-get download left %d etcd-server .debs" % len(debs))
        subprocess.run(["dpkg", "-x", debs[0], stage], check=True)
        got = etcd_version(os.path.join(stage, "usr/bin/etcd"))
        if got != want:
            raise FetchError("%s's etcd says version %s, expected %s" % (suite, got, want))
        os.chmod(stage, 0o755)
        if os.path.isdir(final) and etcd_version(binary) != want:
            shutil.rmtree(final, ignore_errors=True)  # a broken earlier unpack
        try:
            os.rename(stage, final)
        except OSError:  # a parallel caller got there first
            if etcd_version(binary) != want:
                raise
    except subprocess.CalledProcessError as e:
        raise FetchError("dpkg -x failed: %s" % e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
    return binary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="bookworm (etcd 3.4) or trixie (etcd 3.5)")
    ap.add_argument("--cache", help="cache directory (default ~/.cache/ctdb_etcd_lock)")
    args = ap.parse_args(argv)
    try:
        print(etcd_binary(args.suite, args.cache))
    except (FetchError, OSError) as e:
        print("fetch_etcd: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
