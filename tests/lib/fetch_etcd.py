#!/usr/bin/env python3
"""Get an etcd server binary: a Debian suite's, without changing the system's apt state, or
one built from etcd's Go modules.

    python3 tests/lib/fetch_etcd.py WHICH [--cache DIR] [--refresh]

WHICH: bookworm (etcd 3.4) or trixie (3.5.16), Debian's; or a version line 3.5, 3.6, 3.7 (the
newest release of the line that the Go module proxy serves; 3.5: at least 3.5.28), or an exact
version such as 3.6.16, built from go.etcd.io/etcd/server/v3.  Prints the binary's absolute path
(exit 0), or one line on stderr (exit 1); progress goes to stderr (a build takes minutes).
Importable as etcd_binary(which, cache_dir=None) -> str.  Standard library only, Python 3.6+.

/usr/bin/etcd is used if it is of the suite's version line. Otherwise apt-get, given a throw-away
sources list, state and cache (mirror: the first .../debian URI in the machine's apt sources;
Release signatures checked with the system's Debian archive keyring), downloads etcd-server and
`dpkg -x` unpacks it into CACHE/etcd-SUITE (CACHE defaults to $XDG_CACHE_HOME/ctdb_etcd_lock or
~/.cache/ctdb_etcd_lock): into a temp dir first, checked, then renamed into place, so parallel
callers never see half a binary. Later calls reuse it without network.

A Go build happens once, into CACHE/etcd-vVERSION/etcd: a scratch module whose main.go calls
etcdmain.Main (as etcd's own server/main.go does; `go install module@version` refuses etcd's
replace directives), built in a temp dir under CACHE and renamed into place, one build at a time
(a lock file).  Go's caches are under CACHE/go; GOTOOLCHAIN=local.  The go used is the first new
enough for the module's go directive of: `go` on PATH, /usr/local/go/bin/go, Debian's
golang-1.27 from trixie-backports (fetched as etcd-server is, into CACHE/golang-1.27).  Which
release a line means is asked of the proxy ($GOPROXY's first URL, else proxy.golang.org) once
and recorded in CACHE/etcd-lines.json; --refresh asks again.  A proxy out of reach falls back to
the newest release of the line built already.
"""
import argparse
import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

VERSIONS = {"bookworm": "3.4", "trixie": "3.5"}
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

MODULE = "go.etcd.io/etcd/server/v3"
DEFAULT_PROXY = "https://proxy.golang.org"
# The oldest release a line may mean: 3.5.28 has the fix for CVE-2026-33413 (lease grant and
# keepalive need a valid token, and a keepalive put permission on the lease's keys).
LINES = {"3.5": (3, 5, 28), "3.6": (3, 6, 0), "3.7": (3, 7, 0)}
# Debian's newest Go, for when the machine's is too old for a release's go directive.
DEBIAN_GO = ("trixie-backports", "1.27")
MAIN_GO = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
\tetcdmain.Main(os.Args)
}
"""


class FetchError(Exception):
    pass


def etcd_version(binary, exact=False):
    """'major.minor' (exact: 'major.minor.patch') as printed by `binary --version`, or None if
    it does not run."""
    try:
        out = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"etcd Version: ((\d+\.\d+)\.\d+)\b", out.decode("utf-8", "replace"))
    return m.group(1 if exact else 2) if m else None


def progress(message):
    print("fetch_etcd: %s" % message, file=sys.stderr, flush=True)


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


def cache_path(cache_dir=None):
    return os.path.abspath(cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ctdb_etcd_lock"))


def etcd_binary(which, cache_dir=None, refresh=False):
    """Absolute path of an etcd binary: of a Debian suite's version line, or of an etcd
    version (a line such as '3.6', or exact) built from Go modules; FetchError if none can
    be had."""
    if re.match(r"\d+\.\d+(\.\d+)?$", which):
        return go_etcd_binary(which, cache_path(cache_dir), refresh)
    return debian_etcd_binary(which, cache_path(cache_dir))


def debian_etcd_binary(suite, cache):
    want = VERSIONS.get(suite)
    if want is None:
        raise FetchError("unknown suite or version %r (known: %s, a line such as 3.6, or an "
                         "exact version such as 3.6.16)" % (suite, ", ".join(sorted(VERSIONS))))
    if etcd_version("/usr/bin/etcd") == want:
        return "/usr/bin/etcd"
    final = os.path.join(cache, "etcd-" + suite)
    binary = os.path.join(final, "usr/bin/etcd")
    if etcd_version(binary) != want:
        unpack_debs(suite, ["etcd-server"], cache, final,
                    lambda stage: check_version(os.path.join(stage, "usr/bin/etcd"), want,
                                                "%s's etcd" % suite))
    return binary


def check_version(binary, want, what, exact=False):
    got = etcd_version(binary, exact)
    if got != want:
        raise FetchError("%s says version %s, expected %s" % (what, got, want))


def unpack_debs(suite, packages, cache, final, check):
    """apt-get download packages of suite, `dpkg -x` them all into a temp dir under cache,
    check(that dir) (FetchError if wrong), and rename it to final."""
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="fetch-etcd-apt-")
    stage = tempfile.mkdtemp(prefix=".%s-" % os.path.basename(final), dir=cache)
    try:
        setup_apt(tmp, suite)
        apt(tmp, "download", *packages)
        for package in packages:
            debs = glob.glob("%s/%s_*.deb" % (tmp, package))
            if len(debs) != 1:
                raise FetchError("apt-get download left %d %s .debs" % (len(debs), package))
            subprocess.run(["dpkg", "-x", debs[0], stage], check=True)
        check(stage)
        os.chmod(stage, 0o755)
        if os.path.isdir(final):
            try:  # a broken earlier unpack (a good one would not be fetched again)
                check(final)
            except FetchError:
                shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(stage, final)
        except OSError:  # a parallel caller got there first
            check(final)
    except subprocess.CalledProcessError as e:
        raise FetchError("dpkg -x failed: %s" % e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------------
# etcd built from Go modules

def _key(version):
    return tuple(int(part) for part in version.split("."))


def proxy_url():
    """The first URL in $GOPROXY (entries split by ',' or '|'; 'direct' and 'off' skipped)."""
    for entry in re.split(r"[,|]", os.environ.get("GOPROXY") or DEFAULT_PROXY):
        if re.match(r"https?://", entry.strip()):
            return entry.strip().rstrip("/")
    return DEFAULT_PROXY


def ask_proxy(what):
    """GET MODULE's /@v/<what> from the proxy: text."""
    url = "%s/%s/@v/%s" % (proxy_url(), MODULE, what)
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.read().decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        raise FetchError("the Go module proxy did not answer %s: %s" % (url, e))


def releases(line):
    """The releases of a line ('3.6') that the proxy lists, oldest first."""
    found = []
    for word in ask_proxy("list").split():
        m = re.match(r"v(\d+\.\d+\.\d+)$", word)  # no pre-releases
        if m and m.group(1).startswith(line + ".") and _key(m.group(1)) >= LINES[line]:
            found.append(m.group(1))
    return sorted(found, key=_key)


def built(cache, line):
    """The releases of a line built already in cache, oldest first."""
    found = []
    for final in glob.glob(os.path.join(cache, "etcd-v%s.*" % line)):
        version = os.path.basename(final)[len("etcd-v"):]
        if re.match(r"\d+\.\d+\.\d+$", version) and \
                etcd_version(os.path.join(final, "etcd"), exact=True) == version:
            found.append(version)
    return sorted(found, key=_key)


def resolve(line, cache, refresh=False):
    """The release a line means: as recorded in cache/etcd-lines.json, else (or when
    refresh) the newest the proxy serves, recorded; the newest built already if the proxy
    cannot be reached."""
    if line not in LINES:
        raise FetchError("no etcd line %s to build (known: %s)" % (line, ", ".join(LINES)))
    record = os.path.join(cache, "etcd-lines.json")
    try:
        with open(record) as f:
            lines = json.load(f)
    except (OSError, ValueError):
        lines = {}
    if lines.get(line) and not refresh:
        return lines[line]
    try:
        found = releases(line)
        if not found:
            raise FetchError("the Go module proxy serves no %s release of %s at or after %s"
                             % (line, MODULE, ".".join(map(str, LINES[line]))))
    except FetchError as e:
        done = built(cache, line)
        if not done:
            raise
        progress("%s; using etcd %s, built already" % (e, done[-1]))
        return done[-1]
    lines[line] = found[-1]
    os.makedirs(cache, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=cache, prefix=".etcd-lines-",
                                     delete=False) as f:
        json.dump(lines, f, indent=1, sort_keys=True)
    os.replace(f.name, record)
    return found[-1]


def go_version(go):
    """(major, minor, patch) of a go command, or None if it does not run."""
    try:
        out = subprocess.run([go, "version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=60,
                             env=dict(os.environ, GOTOOLCHAIN="local")).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"go version go(\d+)\.(\d+)(?:\.(\d+))?", out.decode("utf-8", "replace"))
    return tuple(int(part or 0) for part in m.groups()) if m else None


def needed_go(version):
    """The go directive of the release's go.mod (what it needs of the toolchain)."""
    m = re.search(r"(?m)^go (\d+)\.(\d+)(?:\.(\d+))?\s*$", ask_proxy("v%s.mod" % version))
    if not m:
        raise FetchError("%s v%s's go.mod has no go directive" % (MODULE, version))
    return tuple(int(part or 0) for part in m.groups())


def debian_go(cache):
    """Debian's golang-X (both packages: -go links its src into -src's), unpacked into
    cache/golang-X; its go command."""
    suite, release = DEBIAN_GO
    final = os.path.join(cache, "golang-" + release)
    go = os.path.join(final, "usr/lib/go-%s/bin/go" % release)

    def check(root):
        got = go_version(os.path.join(root, "usr/lib/go-%s/bin/go" % release))
        if got is None or got[:2] != _key(release):
            raise FetchError("Debian's golang-%s says version %s" % (release, got))
    try:
        check(final)
    except FetchError:
        progress("fetching Debian's golang-%s from %s" % (release, suite))
        unpack_debs(suite, ["golang-%s-go" % release, "golang-%s-src" % release], cache,
                    final, check)
    return go


def pick_go(need, cache):
    """A go command at least `need`: the machine's, else Debian's newest."""
    candidates = [shutil.which("go"), "/usr/local/go/bin/go"]
    for go in candidates:
        if go and (go_version(go) or ()) >= need:
            return go
    go = debian_go(cache)
    if (go_version(go) or ()) < need:
        raise FetchError("no go at least %s: not %s" % (
            ".".join(map(str, need)), ", ".join(c for c in candidates + [go] if c)))
    return go


def go_etcd_binary(which, cache, refresh=False):
    """etcd `which` (a line or an exact version) built from Go modules, once."""
    exact = re.match(r"\d+\.\d+\.\d+$", which)
    version = which if exact else resolve(which, cache, refresh)
    final = os.path.join(cache, "etcd-v" + version)
    binary = os.path.join(final, "etcd")
    if etcd_version(binary, exact=True) == version:
        return binary
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".etcd-build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the next may find it done
        if etcd_version(binary, exact=True) != version:
            build(version, cache, final)
    return binary


def build(version, cache, final):
    go = pick_go(needed_go(version), cache)
    gocache = os.path.join(cache, "go")
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-modcacherw", CGO_ENABLED="0",
               GOMODCACHE=os.path.join(gocache, "mod"), GOCACHE=os.path.join(gocache, "build"),
               GOPATH=os.path.join(gocache, "path"))
    stage = tempfile.mkdtemp(prefix=".etcd-v%s-" % version, dir=cache)
    src = os.path.join(stage, "src")
    os.mkdir(src)
    with open(os.path.join(src, "main.go"), "w") as f:
        f.write(MAIN_GO)
    started = time.monotonic()
    progress("building etcd %s with %s (go %s); this takes minutes the first time" % (
        version, go, ".".join(map(str, go_version(go)))))
    try:
        for step in (["mod", "init", "etcd-server"],
                     ["get", "%s@v%s" % (MODULE, version)],
                     ["mod", "tidy"],
                     ["build", "-trimpath", "-o", os.path.join(stage, "etcd"), "."]):
            p = subprocess.run([go] + step, cwd=src, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True)
            if p.returncode:
                tail = [l for l in p.stdout.splitlines() if l.strip()][-3:]
                raise FetchError("go %s failed: %s" % (" ".join(step), " | ".join(tail)))
        shutil.rmtree(src)
        check_version(os.path.join(stage, "etcd"), version, "the etcd built", exact=True)
        os.chmod(stage, 0o755)
        shutil.rmtree(final, ignore_errors=True)  # a broken earlier build
        os.rename(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    progress("built etcd %s in %.0f s: %s" % (version, time.monotonic() - started, final))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", help="bookworm (etcd 3.4), trixie (etcd 3.5.16), a line such as "
                    "3.6 (its newest release, built), or an exact version such as 3.6.16")
    ap.add_argument("--cache", help="cache directory (default ~/.cache/ctdb_etcd_lock)")
    ap.add_argument("--refresh", action="store_true",
                    help="ask the Go module proxy again which release a line means")
    args = ap.parse_args(argv)
    try:
        print(etcd_binary(args.which, args.cache, args.refresh))
    except (FetchError, OSError) as e:
        print("fetch_etcd: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
