"""make install: exactly the files a package holds, and the helper installed
in a DESTDIR tree working as the checkout's does, on its byte code, against
real etcd; the example config and the man page as they are installed."""

import os
import re
import shutil
import signal
import subprocess

import pytest

import ctdb_etcd_lock
from conftest import HELPER, ROOT, SYSTEM_PYTHON, Helper, delete_held, helper_env, write_config

pytestmark = pytest.mark.skipif(shutil.which("make") is None,
                                reason="make is not installed (Debian: make)")

# The byte code's name: what the helper's interpreter calls its cache.
CACHE_TAG = subprocess.run(
    [SYSTEM_PYTHON, "-c", "import sys; print(sys.implementation.cache_tag)"],
    stdout=subprocess.PIPE, check=True).stdout.decode().strip()

# Where each file goes, for the variables given to make.
LAYOUTS = {
    "defaults": ({}, "usr/libexec", "usr/share/man", "usr/share/doc/ctdb-etcd-lock"),
    "PREFIX": ({"PREFIX": "/usr/local"}, "usr/local/libexec", "usr/local/share/man",
               "usr/local/share/doc/ctdb-etcd-lock"),
    "each dir": ({"PREFIX": "/opt/ctdb", "LIBEXECDIR": "/usr/lib", "MANDIR": "/opt/man",
                  "DOCDIR": "/opt/doc/etcd"}, "usr/lib", "opt/man", "opt/doc/etcd"),
    # A distribution's package, whose byte code its own tools make.
    "COMPILE=no": ({"COMPILE": "no"}, "usr/libexec", "usr/share/man",
                   "usr/share/doc/ctdb-etcd-lock"),
}


def expected_files(libexecdir, mandir, docdir, compiled=True):
    """path under DESTDIR -> mode: the package, and nothing else."""
    helper_dir = libexecdir + "/ctdb/"
    files = {
        helper_dir + "ctdb_etcd_lock": 0o755,
        helper_dir + "ctdb_etcd_lock.py": 0o644,
        mandir + "/man7/ctdb-etcd.7": 0o644,
        docdir + "/ctdb-etcd.conf.example": 0o644,
    }
    if compiled:
        files[helper_dir + "__pycache__/ctdb_etcd_lock.%s.pyc" % CACHE_TAG] = 0o644
    return files


def files_under(top):
    """Every file (not directory) below top: relative path -> permission bits."""
    found = {}
    for directory, _, names in os.walk(str(top)):
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, str(top))] = stat_mode(path)
    return found


def stat_mode(path):
    return os.lstat(path).st_mode & 0o7777


def make(*args):
    """make in the checkout, without what would change the byte code's kind
    (SOURCE_DATE_EPOCH asks compileall for hash-checked byte code)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "MAKEFLAGS")}
    done = subprocess.run(["make", "-s", "-C", ROOT] + list(args), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout.decode()
    return done.stdout.decode()


def variables(destdir, settings):
    return ["DESTDIR=%s" % destdir] + ["%s=%s" % item for item in sorted(settings.items())]


@pytest.fixture(scope="module")
def destdir(tmp_path_factory):
    """A DESTDIR tree that make install filled with the defaults."""
    top = tmp_path_factory.mktemp("destdir")
    make("install", "DESTDIR=%s" % top)
    return top


@pytest.fixture
def installed(destdir):
    """The helper as ctdbd would run it, from the DESTDIR tree."""
    return str(destdir / "usr/libexec/ctdb/ctdb_etcd_lock")


def python_env(env):
    """An environment in which Python writes byte code it had to compile,
    where it normally would (so that a write shows)."""
    return {k: v for k, v in env.items()
            if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}


@pytest.fixture
def run(tmp_path, stubs, lock_name, started):
    """run(helper, etcd=None, args=(), config=None, **settings) starts a helper
    (the checkout's or an installed one) as ctdbd does, with a config file of
    lock_ttl 3, refresh 0.5 and the test's lock name unless given."""
    def start(helper, etcd=None, args=(), config=None, argv_before=(), **settings):
        if config is None:
            values = {"lock_ttl": 3, "refresh": 0.5, "lock_name": lock_name}
            if etcd is not None:
                values["port"] = etcd.port
            values.update(settings)
            config = write_config(str(tmp_path / ("etcd-%d" % len(started))), values)
        argv = list(argv_before) + [helper] + list(args) + ["-c", str(config)]
        helper = Helper(argv, python_env(helper_env(stubs, tmp_path)), str(tmp_path))
        started.append(helper)
        return helper
    return start


# ---------------------------------------------------------------------------
# What make install puts where

@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_installs_exactly_the_package_and_uninstalls_it(layout, tmp_path):
    settings, libexecdir, mandir, docdir = LAYOUTS[layout]
    top = tmp_path / "destdir"
    make("install", *variables(top, settings))
    assert files_under(top) == expected_files(libexecdir, mandir, docdir,
                                              compiled=settings.get("COMPILE") != "no")

    helper_dir = top / libexecdir / "ctdb"
    for name, source in (("ctdb_etcd_lock.py", HELPER),
                         (mandir + "/man7/ctdb-etcd.7", os.path.join(ROOT, "ctdb-etcd.7")),
                         (docdir + "/ctdb-etcd.conf.example",
                          os.path.join(ROOT, "ctdb-etcd.conf.example"))):
        path = helper_dir / name if "/" not in name else top / name
        with open(str(path), "rb") as installed, open(source, "rb") as original:
            assert installed.read() == original.read(), name
    with open(str(helper_dir / "ctdb_etcd_lock")) as f:
        assert f.readline() == "#!/usr/bin/python3\n"

    # The wrapper finds its module wherever it was installed: a config
    # error proves the helper ran (status '3', its one line).
    done = subprocess.run([str(helper_dir / "ctdb_etcd_lock"), "-c", str(tmp_path / "none")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert (done.stdout, done.returncode) == (b"3", 3)
    assert done.stderr.decode().startswith("ctdb_etcd_lock: config error - config file ")

    make("uninstall", *variables(top, settings))
    assert files_under(top) == {}


def test_installing_twice_changes_nothing(tmp_path):
    top = tmp_path / "destdir"
    make("install", "DESTDIR=%s" % top)
    first = {path: os.stat(str(top / path)).st_mtime_ns for path in files_under(top)}
    make("install", "DESTDIR=%s" % top)
    assert files_under(top) == expected_files(*LAYOUTS["defaults"][1:])
    # install -p: the module keeps the checkout's time, so its byte code is
    # compiled against the same time again.
    module = "usr/libexec/ctdb/ctdb_etcd_lock.py"
    assert os.stat(str(top / module)).st_mtime_ns == first[module]
    assert os.stat(str(top / module)).st_mtime_ns == os.stat(HELPER).st_mtime_ns


# ---------------------------------------------------------------------------
# The byte code: compiled at install, plain, and what the helper runs

BYTE_CODE_HEADER = """
import importlib.util, marshal, os, sys
source, cache = sys.argv[1], sys.argv[2]
data = open(cache, "rb").read()
st = os.stat(source)
print(data[:4] == importlib.util.MAGIC_NUMBER,
      int.from_bytes(data[4:8], "little"),
      int.from_bytes(data[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF,
      int.from_bytes(data[12:16], "little") == st.st_size & 0xFFFFFFFF,
      marshal.loads(data[16:]).co_filename)
"""


def test_byte_code_is_plain_and_matches_the_module(destdir):
    helper_dir = destdir / "usr/libexec/ctdb"
    cache = helper_dir / "__pycache__" / ("ctdb_etcd_lock.%s.pyc" % CACHE_TAG)
    done = subprocess.run([SYSTEM_PYTHON, "-c", BYTE_CODE_HEADER,
                           str(helper_dir / "ctdb_etcd_lock.py"), str(cache)],
                          stdout=subprocess.PIPE, check=True)
    # This Python's, checked by the source's time and size (flags 0), and
    # naming the installed path, not DESTDIR's.
    assert done.stdout.decode().split() == [
        "True", "0", "True", "True", "/usr/libexec/ctdb/ctdb_etcd_lock.py"]


def test_first_run_writes_no_byte_code(destdir, tmp_path):
    # A copy as a package manager makes it (times kept), then run once.
    top = tmp_path / "copy"
    shutil.copytree(str(destdir), str(top))
    cache_dir = top / "usr/libexec/ctdb/__pycache__"

    def cache():
        return {entry.name: (entry.stat().st_ino, entry.stat().st_mtime_ns)
                for entry in os.scandir(str(cache_dir))}
    before = cache()
    done = subprocess.run([str(top / "usr/libexec/ctdb/ctdb_etcd_lock"), "-c",
                           str(tmp_path / "none")], env=python_env(os.environ),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert (done.stdout, done.returncode) == (b"3", 3), done.stderr
    assert cache() == before


def test_runs_on_the_byte_code_not_the_source(destdir, tmp_path):
    # Python trusts byte code whose recorded time and size match the
    # source's, and then never reads the source.  So a source replaced by
    # one of the same size and time that would fail at once, but the helper
    # still answering, proves that it runs on its byte code.
    top = tmp_path / "copy"
    shutil.copytree(str(destdir), str(top))
    module = top / "usr/libexec/ctdb/ctdb_etcd_lock.py"
    st = os.stat(str(module))
    stand_in = b'raise SystemExit("the source was compiled")\n'
    module.write_bytes(stand_in + b"#" * (st.st_size - len(stand_in) - 1) + b"\n")
    os.utime(str(module), ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(str(module)).st_size == st.st_size

    done = subprocess.run([str(top / "usr/libexec/ctdb/ctdb_etcd_lock"), "-c",
                           str(tmp_path / "none")], env=python_env(os.environ),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.stderr.decode().startswith("ctdb_etcd_lock: config error"), done.stderr
    assert (done.stdout, done.returncode) == (b"3", 3)


def test_wrapper_found_through_a_symlink(installed, tmp_path):
    # The module is looked up beside the wrapper's real file.
    link = tmp_path / "ctdb_etcd_lock"
    link.symlink_to(installed)
    done = subprocess.run([str(link), "-c", str(tmp_path / "none")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert (done.stdout, done.returncode) == (b"3", 3), done.stderr


# ---------------------------------------------------------------------------
# The installed helper against real etcd: the same as the checkout's

def test_takes_contends_and_releases(etcd, installed, run, key):
    holder = run(installed, etcd)
    assert holder.status() == "0", holder.stderr()
    assert "pid=%d" % holder.proc.pid in etcd.value("v3", key)
    contender = run(installed, etcd)
    assert contender.status() == "1"
    assert contender.wait() == 1
    assert holder.terminate() == 0
    assert holder.rest_of_stdout() == b""
    assert etcd.value("v3", key) is None
    if etcd.serves_v2:
        assert etcd.value("v2", key) is None
    assert holder.stderr() == contender.stderr() == ""


def outcome(helper):
    """Status, what followed it, exit code and stderr (numbers masked: they
    are revisions and times of one run)."""
    status = helper.status()
    code = helper.wait()
    return (status, helper.rest_of_stdout(), code,
            [re.sub(r"\d+(\.\d+)?", "N", line) for line in helper.stderr_lines()])


# Each way out of the helper, as a test drives it: (start, drive) -> outcome.
def held_then_terminated(run, helper, etcd, key):
    holder = run(helper, etcd)
    assert holder.status() == "0", holder.stderr()
    holder.proc.send_signal(signal.SIGTERM)
    return outcome(holder)


def contended(run, helper, etcd, key):
    holder = run(HELPER, etcd)
    assert holder.status() == "0", holder.stderr()
    try:
        return outcome(run(helper, etcd))
    finally:
        holder.terminate()


def lock_lost(run, helper, etcd, key):
    holder = run(helper, etcd, api="v3")
    assert holder.status() == "0", holder.stderr()
    delete_held(etcd, "v3", key)
    assert holder.eof(10)
    return outcome(holder)


def config_error(run, helper, etcd, key):
    return outcome(run(helper, etcd, lock_ttl=2, refresh=2))


def bad_command_line(run, helper, etcd, key):
    return outcome(run(helper, etcd, args=("--bogus",)))


def stdout_closed(run, helper, etcd, key):
    return outcome(run(helper, etcd, argv_before=("/bin/sh", "-c", 'exec "$0" "$@" >&-')))


WAYS_OUT = [held_then_terminated, contended, lock_lost, config_error, bad_command_line,
            stdout_closed]


@pytest.mark.parametrize("way_out", WAYS_OUT, ids=[way.__name__ for way in WAYS_OUT])
def test_ways_out_match_the_checkout(etcd, installed, run, key, way_out):
    checkout = way_out(run, HELPER, etcd, key)
    assert way_out(run, installed, etcd, key) == checkout


# ---------------------------------------------------------------------------
# The example config

SHOWN = re.compile(r"#(\w+) = (.*)$")  # a setting shown commented out


def shown_settings():
    with open(os.path.join(ROOT, "ctdb-etcd.conf.example")) as f:
        return dict(SHOWN.match(line.rstrip("\n")).groups() for line in f if SHOWN.match(line))


@pytest.mark.fast
def test_example_shows_every_setting():
    assert set(ctdb_etcd_lock.SETTINGS) - set(shown_settings()) == set()


@pytest.mark.fast
def test_example_is_accepted_as_it_is(tmp_path):
    path = str(tmp_path / "etcd")
    shutil.copy(os.path.join(ROOT, "ctdb-etcd.conf.example"), path)
    config = ctdb_etcd_lock.read_config(path, required=True)
    assert config.lines == {} and config.ignored == []


# A setting that needs another one to be given with it.
PARTNERS = {"key": "cert", "username": "password", "password": "username"}


@pytest.mark.fast
@pytest.mark.parametrize("name", sorted(ctdb_etcd_lock.SETTINGS))
def test_each_shown_line_sets_its_default(name, tmp_path):
    # Uncommented, each line is accepted, and gives the default where there is one.
    shown = shown_settings()
    lines = ["%s = %s" % (name, shown[name])]
    if name in PARTNERS:
        lines.append("%s = %s" % (PARTNERS[name], shown[PARTNERS[name]]))
    path = tmp_path / "etcd"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    config = ctdb_etcd_lock.read_config(str(path), required=True)
    assert config.ignored == []
    default = ctdb_etcd_lock.SETTINGS[name].default
    if default is not None:
        assert getattr(config, name) == default


def test_installed_helper_runs_with_the_example(etcd, destdir, installed, run, tmp_path,
                                                 lock_name):
    # The example, with only where etcd is and the lock's name added.
    config = tmp_path / "etcd"
    example = destdir / "usr/share/doc/ctdb-etcd-lock/ctdb-etcd.conf.example"
    config.write_text(example.read_text() + "port = %d\nlock_name = %s\n"
                      % (etcd.port, lock_name))
    holder = run(installed, config=config)
    assert holder.status() == "0", holder.stderr()
    assert run(installed, config=config).status() == "1"
    assert holder.terminate() == 0
    assert holder.stderr() == ""


# ---------------------------------------------------------------------------
# The man page

def test_man_page_is_warning_free(destdir):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (Debian: groff-base)")
    page = destdir / "usr/share/man/man7/ctdb-etcd.7"
    done = subprocess.run(["groff", "-man", "-ww", "-z", str(page)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert (done.returncode, done.stdout.decode()) == (0, "")


def test_man_page_renders(destdir):
    if shutil.which("man") is None:
        pytest.skip("man is not installed (Debian: man-db)")
    page = destdir / "usr/share/man/man7/ctdb-etcd.7"
    done = subprocess.run(["man", "-l", str(page)], env=dict(os.environ, MANWIDTH="80"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert (done.returncode, done.stderr.decode()) == (0, "")
    text = done.stdout.decode()
    for heading in ("NAME", "SYNOPSIS", "WHAT CTDBD SEES", "STATUS AND CHECK", "FAILURES",
                    "ROLLING UPGRADE"):
        assert "\n" + heading + "\n" in text, heading


@pytest.mark.fast
def test_man_page_names_every_setting():
    with open(os.path.join(ROOT, "ctdb-etcd.7")) as f:
        lines = f.read().splitlines()
    # Each setting heads a .TP paragraph.
    headings = " ".join(lines[i + 1] for i, line in enumerate(lines) if line == ".TP")
    assert {name for name in ctdb_etcd_lock.SETTINGS
            if not re.search(r"\b%s\b" % name, headings)} == set()
    assert "lock_refresh" in " ".join(lines)
