"""Packages: make dist (the release tarball), make deb (the Debian package,
with no lintian error) and make rpm, each built from this checkout; and the
Debian package at work in a Debian 13 root with Debian's ctdb 4.22 (an
overlay on the cached root of tests/lib/make_ctdb_root.sh, which stays as
it was): it takes over ctdb's helper and man page with dpkg-divert, the real
ctdbd takes the lock through it, ctdb installed or reinstalled leaves it in
place, and removing it gives ctdb's files back byte for byte."""

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile

import pytest

import ctdb_etcd_lock
from conftest import ROOT
from ctdbnodes import CLEAN_PATH, CtdbCluster, processes, trixie_root

pytestmark = pytest.mark.skipif(shutil.which("make") is None,
                                reason="make is not installed (Debian: make)")

NAME = "ctdb-etcd-lock"
VERSION = ctdb_etcd_lock.__version__
DEB = "%s_%s-1_all.deb" % (NAME, VERSION)
RPM = "%s-%s-1.noarch.rpm" % (NAME, VERSION)
PREFIX = "%s-%s/" % (NAME, VERSION)

# ctdb's files that the package takes over, and where dpkg-divert keeps them.
HELPER_PATH = "/usr/libexec/ctdb/ctdb_etcd_lock"
MAN_PATH = "/usr/share/man/man7/ctdb-etcd.7.gz"
DIVERTED = {HELPER_PATH: "/usr/libexec/ctdb/ctdb_etcd_lock.distrib",
            MAN_PATH: "/usr/share/man/man7/ctdb-etcd.distrib.7.gz"}


def make(*args):
    """make in the checkout (without SOURCE_DATE_EPOCH, which would make
    compileall write hash-checked byte code); returns its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "MAKEFLAGS")}
    done = subprocess.run(["make", "-s", "-C", ROOT] + list(args), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout.decode()
    return done.stdout.decode()


def output(argv):
    return subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout.decode()


def installed_files(destdir, compile_):
    """make install's files (path under / -> mode) with the defaults."""
    make("install", "DESTDIR=%s" % destdir, "COMPILE=%s" % compile_)
    found = {}
    for directory, _, names in os.walk(str(destdir)):
        for name in names:
            path = os.path.join(directory, name)
            found["/" + os.path.relpath(path, str(destdir))] = os.lstat(path).st_mode & 0o7777
    return found


@pytest.fixture(scope="session")
def distdir(tmp_path_factory):
    """make dist, deb and rpm write here; each is built once a session.
    They pack what git tracks, so an unpacked release tarball skips them."""
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout: make dist, deb and rpm pack the files git tracks")
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="session")
def deb(distdir):
    make("deb", "DISTDIR=%s" % distdir)
    return distdir / DEB


@pytest.fixture(scope="session")
def rpm(distdir):
    make("rpm", "DISTDIR=%s" % distdir)
    return distdir / RPM


# ---------------------------------------------------------------------------
# One version everywhere

@pytest.mark.fast
def test_every_packaging_names_the_helpers_version():
    with open(os.path.join(ROOT, "packaging/debian/changelog")) as f:
        assert re.match(r"%s \(%s-\d+\) " % (NAME, re.escape(VERSION)), f.readline())
    with open(os.path.join(ROOT, "packaging/rpm/%s.spec" % NAME)) as f:
        assert re.findall(r"^Version:\s*(\S+)$", f.read(), re.M) == [VERSION]
    with open(os.path.join(ROOT, "NEWS")) as f:
        versions = re.findall(r"^Version (\S+)", f.read(), re.M)
    assert versions[0] == VERSION, "NEWS starts with the newest version"


# ---------------------------------------------------------------------------
# make dist

def test_dist_holds_every_tracked_file_as_it_is(distdir, tmp_path):
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout: make dist packs the files git tracks")
    make("dist", "DISTDIR=%s" % distdir)
    tarball = distdir / ("%s-%s.tar.gz" % (NAME, VERSION))
    tracked = output(["git", "-C", ROOT, "ls-files"]).splitlines()
    with tarfile.open(str(tarball)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(PREFIX + path for path in tracked)
        for member in members:
            path = os.path.join(ROOT, member.name[len(PREFIX):])
            with open(path, "rb") as f:
                assert tar.extractfile(member).read() == f.read(), member.name
            assert member.mode & 0o111 == os.stat(path).st_mode & 0o111, member.name
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert len({m.mtime for m in members}) == 1
    names = {m.name[len(PREFIX):] for m in members}
    for needed in ("ctdb_etcd_lock.py", "ctdb-etcd.7", "ctdb-etcd.conf.example", "Makefile",
                   "LICENSE", "README.md", "NEWS", "tests/run", "tests/conftest.py",
                   "tests/lib/etcdmember.py", "tests/lib/make_ctdb_root.sh",
                   "packaging/build", "packaging/debian/control", "packaging/debian/rules",
                   "packaging/rpm/%s.spec" % NAME):
        assert needed in names, needed

    # The same tree gives the same bytes.
    first = tarball.read_bytes()
    make("dist", "DISTDIR=%s" % distdir)
    assert tarball.read_bytes() == first


# ---------------------------------------------------------------------------
# make deb

def deb_field(deb, field):
    return output(["dpkg-deb", "-f", str(deb), field]).strip()


def test_deb_is_what_make_install_puts_in_place(deb, tmp_path):
    assert deb_field(deb, "Package") == NAME
    assert deb_field(deb, "Version") == VERSION + "-1"
    assert deb_field(deb, "Architecture") == "all"
    assert deb_field(deb, "Enhances") == "ctdb"
    depends = [d.strip() for d in deb_field(deb, "Depends").split(",")]
    assert {d.split()[0].split(":")[0] for d in depends} == {"python3"}, depends

    listed = {}
    for line in output(["dpkg-deb", "-c", str(deb)]).splitlines():
        mode, path = line.split()[0], line.split()[-1]
        if not mode.startswith("d"):
            listed[path[1:]] = mode
    wanted = installed_files(tmp_path / "destdir", "no")
    # Man pages are compressed, and Debian adds its own documents.
    wanted = {path + ".gz" if "/man/" in path else path: mode for path, mode in wanted.items()}
    assert {path for path in listed if not path.startswith(
        ("/usr/share/doc/", "/usr/share/lintian/", "/usr/share/python3/runtime.d/"))} \
        == {path for path in wanted if not path.startswith("/usr/share/doc/")}
    assert set(wanted) <= set(listed)
    assert listed[HELPER_PATH] == "-rwxr-xr-x"
    assert listed["/usr/libexec/ctdb/ctdb_etcd_lock.py"] == "-rw-r--r--"

    lintian = (deb.parent / ("%s_%s-1.lintian" % (NAME, VERSION))).read_text()
    assert not [line for line in lintian.splitlines() if line.startswith("E:")], lintian


# ---------------------------------------------------------------------------
# make rpm

def test_rpm_holds_what_make_install_puts_in_place(rpm, tmp_path):
    query = output(["rpm", "-qp", "--qf", "[%{FILEMODES:octal} %{FILENAMES}\n]", str(rpm)])
    listed = {path: int(mode, 8) for mode, path in (line.split(" ", 1)
                                                     for line in query.splitlines())}
    files = {path: mode & 0o7777 for path, mode in listed.items() if mode & 0o170000 == 0o100000}
    wanted = installed_files(tmp_path / "destdir", "yes")
    docs = {"/usr/share/doc/%s/%s" % (NAME, doc): 0o644 for doc in ("README.md", "NEWS")}
    docs["/usr/share/licenses/%s/LICENSE" % NAME] = 0o644
    # rpm's brp-compress may compress the man page (Fedora's does; Debian's
    # rpm leaves it as it is).
    files = {re.sub(r"(/man7/.*\.7)\.gz$", r"\1", path): mode for path, mode in files.items()}
    assert files == dict(wanted, **docs)
    assert {path for path, mode in listed.items() if mode & 0o170000 == 0o040000} == {
        "/usr/libexec/ctdb", "/usr/libexec/ctdb/__pycache__",
        "/usr/share/doc/%s" % NAME, "/usr/share/licenses/%s" % NAME}
    requires = output(["rpm", "-qp", "--requires", str(rpm)]).split()
    assert "python3" in requires
    assert output(["rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}", str(rpm)]) \
        == "%s %s 1 noarch" % (NAME, VERSION)


# ---------------------------------------------------------------------------
# The Debian package in Debian 13, with Debian's ctdb

class Debian13:
    """An overlay on the cached Debian 13 root: what is done in it lands in
    an upper directory of its own, removed at the end."""

    def __init__(self, top):
        root, why_not = trixie_root()
        if root is None:
            pytest.skip(why_not)
        self.top = top
        for sub in ("upper", "work", "root"):
            os.makedirs(os.path.join(top, sub))
        self.root = os.path.join(top, "root")
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s"
             % (root, os.path.join(top, "upper"), os.path.join(top, "work")), self.root],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            pytest.skip("cannot mount an overlay on the Debian 13 root: %s"
                        % done.stdout.decode().strip())

    def close(self):
        subprocess.run(["umount", "-l", self.root])

    def run(self, *argv, check=True):
        """argv in the root (as make_ctdb_root.sh runs apt there); output."""
        done = subprocess.run(
            ["chroot", self.root, "/usr/bin/env", "-i", "PATH=" + CLEAN_PATH, "HOME=/root",
             "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"] + list(argv),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=600)
        text = done.stdout.decode("utf-8", "replace")
        if check:
            assert done.returncode == 0, "%s:\n%s" % (" ".join(argv), text)
        return text

    def apt_get(self, *args):
        return self.run("apt-get", "-q", "-y", "--no-install-recommends", *args)

    def path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def sha256(self, path):
        """The file's sha256, or None if there is none."""
        try:
            with open(self.path(path), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            return None

    def install_ours(self, deb):
        shutil.copy(str(deb), self.path("/tmp"))
        return self.run("dpkg", "-i", "/tmp/" + deb.name)

    def diversions(self):
        return sorted(line for line in self.run("dpkg-divert", "--list").splitlines()
                      if NAME in line)

    def helper_version(self):
        return self.run(HELPER_PATH, "--version").strip()

    def ctdb_originals(self):
        """{path: sha256} of ctdb's helper and man page, from the ctdb .deb
        apt fetched for the ctdb now installed."""
        version = self.run("dpkg-query", "-W", "-f", "${Version}", "ctdb")
        deb = self.path("/var/cache/apt/archives/ctdb_%s_amd64.deb"
                        % version.replace(":", "%3a"))
        tar = tarfile.open(fileobj=io.BytesIO(output_bytes(["dpkg-deb", "--fsys-tarfile", deb])))
        return {path: hashlib.sha256(tar.extractfile("." + path).read()).hexdigest()
                for path in DIVERTED}


def output_bytes(argv):
    return subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout


@pytest.fixture
def debian13(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the Debian 13 root is used through chroot and an overlay mount: needs root")
    top = str(tmp_path / "debian13")
    root = Debian13(top)
    try:
        # The package lists as they are now, so that apt fetches what the
        # mirror has.
        root.apt_get("update")
        yield root
    finally:
        root.close()
        shutil.rmtree(top, ignore_errors=True)


def ours_in_place(root, originals):
    """Our helper answers at ctdb's path, both diversions stand, and ctdb's
    files are kept under their diverted names as they came."""
    assert root.helper_version() == "ctdb_etcd_lock %s" % VERSION
    assert root.diversions() == sorted(
        "diversion of %s to %s by %s" % (path, DIVERTED[path], NAME) for path in DIVERTED)
    for path, sha in originals.items():
        assert root.sha256(DIVERTED[path]) == sha, DIVERTED[path]


def originals_back(root, originals):
    """Our files are gone, and ctdb's are back at their paths as they came."""
    assert root.diversions() == []
    for path, sha in originals.items():
        assert root.sha256(path) == sha, path
        assert root.sha256(DIVERTED[path]) is None, DIVERTED[path]
    helper_dir = root.path("/usr/libexec/ctdb")
    assert not os.path.exists(os.path.join(helper_dir, "ctdb_etcd_lock.py"))
    assert not [name for name in os.listdir(helper_dir) if name == "__pycache__"]


def test_deb_takes_ctdbs_path_over_and_gives_it_back(deb, debian13, etcd34, tmp_path):
    root = debian13
    # Debian's ctdb, as make_ctdb_root.sh installed it.
    before = {path: root.sha256(path) for path in DIVERTED}
    assert None not in before.values()

    out = root.install_ours(deb)
    assert "diversion of %s" % HELPER_PATH in out
    ours_in_place(root, before)
    # Installed again (preinst upgrade), the diversions stand as they were.
    root.install_ours(deb)
    ours_in_place(root, before)
    # py3compile compiled the module at installation.
    assert [name for name in os.listdir(root.path("/usr/libexec/ctdb/__pycache__"))
            if name.startswith("ctdb_etcd_lock.cpython-")]

    # The real ctdbd (4.22) takes the lock through the path its ctdb.conf names.
    nodes = CtdbCluster(str(tmp_path), etcd34, {"lock_ttl": 4, "refresh": 1},
                        root=root.root, helper="original", size=2)
    nodes.helper = "ours"  # the original's path, our helper: look in both keyspaces
    try:
        nodes.setup()
        assert nodes.lock_line == "!%s -v" % HELPER_PATH
        nodes.start(timeout=45)
        _, helper, _ = nodes.wait_leader(15)
        assert processes()[helper][2][:2] == ["/usr/bin/python3", HELPER_PATH]
        assert etcd34.v3_value(nodes.key).startswith("host=")  # ours: the original knows no v3
        assert nodes.log_problems() == []
    finally:
        nodes.teardown()

    # Reinstalling ctdb leaves ours in place; ctdb's helper goes to the diverted name.
    wrapper = root.sha256(HELPER_PATH)
    root.apt_get("install", "--reinstall", "ctdb")
    # (The mirror may have a newer ctdb than the root: then this upgraded it.)
    originals = root.ctdb_originals()
    assert root.sha256(HELPER_PATH) == wrapper
    ours_in_place(root, originals)

    # Removed, ctdb's files are back; purged, nothing changes.
    root.run("dpkg", "--remove", NAME)
    originals_back(root, originals)
    root.run("dpkg", "--purge", NAME)
    originals_back(root, originals)
    assert "ii" not in root.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", NAME,
                                check=False)


def test_ctdb_installed_after_ours_leaves_ours(deb, debian13):
    root = debian13
    root.run("dpkg", "--remove", "ctdb")
    assert root.sha256(HELPER_PATH) is None
    root.install_ours(deb)
    root.apt_get("install", "ctdb")
    originals = root.ctdb_originals()
    ours_in_place(root, originals)

    root.run("dpkg", "--purge", NAME)
    originals_back(root, originals)
