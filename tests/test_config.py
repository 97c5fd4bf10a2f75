"""The config file and command line: the original's format and settings,
and one clear line (status 3) for every mistake."""

import json
import os
import time
import uuid

import pytest

import ctdb_etcd_lock
from conftest import HELPER, Helper, helper_env, write_config
from etcdmember import free_port, wait_for


def one_error_line(helper):
    assert helper.status() == "3"
    assert helper.wait() == 3
    assert helper.rest_of_stdout() == b""
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ctdb_etcd_lock: ")
    assert "Traceback" not in helper.stderr()
    return lines[0]


BAD_FILES = [
    # (id, file text, what the line must say)
    ("no equals sign", "port = 2379\nlock_ttl 9\n", ["etcd:2", "key = value"]),
    ("port not a number", "port = twenty\n", ["etcd:1", "port", "twenty"]),
    ("port out of range", "\n\nport = 70000\n", ["etcd:3", "port", "between 1 and 65535"]),
    ("lock_ttl a fraction", "lock_ttl = 9.5\n", ["etcd:1", "lock_ttl", "whole number"]),
    ("lock_ttl too small", "lock_ttl = 1\n", ["etcd:1", "lock_ttl"]),
    ("refresh not below lock_ttl", "lock_ttl = 9\nrefresh = 9\n", ["etcd:2", "refresh", "lock_ttl"]),
    ("refresh via alias too big", "lock_refresh = 12\n", ["etcd:1", "refresh", "lock_ttl"]),
    ("refresh zero", "refresh = 0\n", ["etcd:1", "refresh"]),
    ("refresh not a number", "refresh = soon\n", ["etcd:1", "refresh", "soon"]),
    ("read_timeout negative", "read_timeout = -1\n", ["etcd:1", "read_timeout"]),
    ("set twice", "port = 1\nport = 2\n", ["etcd:2", "port", "line 1"]),
    ("empty key", "= 3\n", ["etcd:1", "key = value"]),
    ("bad api", "api = v4\n", ["etcd:1", "api", "v4"]),
    ("bad protocol", "protocol = ftp\n", ["etcd:1", "protocol", "https"]),
    ("host with a bad port", "host = etcd1:x\n", ["etcd:1", "host", "whole number"]),
    ("host as URL", "host = http://etcd1\n", ["etcd:1", "host", "http://"]),
    ("host a broken tuple", "host = (('a', 1),\n", ["etcd:1", "host", "tuple"]),
    ("host a tuple of names", "host = ('a', 'b')\n", ["etcd:1", "host", "whole number"]),
    ("endpoints without scheme", "endpoints = etcd1:2379\n", ["etcd:1", "endpoints", "http://"]),
    ("endpoints and host", "endpoints = http://a:1\nhost = b\n",
     ["etcd:1", "endpoints", "host", "etcd:2"]),
    ("srv_domain and host", "srv_domain = example.com\nhost = b\n",
     ["srv_domain", "host"]),
    ("srv_domain not a domain", "srv_domain = a b\n", ["etcd:1", "srv_domain"]),
    ("username without password", "username = root\n", ["etcd:1", "username", "password"]),
    ("key without cert", "key = /k.pem\n", ["etcd:1", "key", "cert"]),
    ("cert tuple and key", "cert = ('/c', '/k')\nkey = /k\n", ["cert", "key"]),
    ("bad boolean", "allow_reconnect = maybe\n", ["etcd:1", "allow_reconnect", "true"]),
    ("lock_ttl too small for the default refresh", "lock_ttl = 2\n",
     ["etcd:1", "refresh (2s)", "lock_ttl (2s)"]),
    ("cluster id not hex", "expected_cluster_id = zz\n", ["etcd:1", "expected_cluster_id"]),
    ("lock_name with slash", "lock_name = a/b\n", ["etcd:1", "lock_name", "/"]),
    ("lock_name dot dot", "lock_name = ..\n", ["etcd:1", "lock_name", ".."]),
    ("lock_name empty", "lock_name =\n", ["etcd:1", "lock_name"]),
    ("locks_dir empty part", "locks_dir = a//b\n", ["etcd:1", "locks_dir"]),
    ("locks_dir dot", "locks_dir = .\n", ["etcd:1", "locks_dir"]),
    ("version_prefix without slash", "version_prefix = v2\n", ["etcd:1", "version_prefix"]),
    ("not utf-8", b"lock_name = \xff\n", ["etcd", "UTF-8"]),
]


@pytest.mark.parametrize("text,expected", [case[1:] for case in BAD_FILES],
                         ids=[case[0] for case in BAD_FILES])
def test_bad_config_file(spawn, tmp_path, text, expected):
    path = tmp_path / "etcd"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    line = one_error_line(spawn(config=str(path), args=()))
    for part in expected:
        assert part in line, (part, line)


def test_default_config_file_is_ctdb_base_etcd(spawn, tmp_path):
    (tmp_path / "etcd").write_text("port = 0\n")
    line = one_error_line(spawn(config="", args=()))  # no -c: $CTDB_BASE/etcd
    assert str(tmp_path / "etcd") + ":1" in line


@pytest.mark.fast
def test_missing_default_file_means_defaults(tmp_path):
    config = ctdb_etcd_lock.read_config(str(tmp_path / "etcd"), required=False)
    assert (config.host, config.port, config.lock_ttl, config.refresh, config.locks_dir,
            config.api, config.version_prefix, config.read_timeout) == (
        [("127.0.0.1", None)], 2379, 9, 2.0, "_ctdb", "auto", "/v2", 60.0)
    assert [endpoint.url for endpoint in config.endpoints] == ["http://127.0.0.1:2379"]


def test_missing_named_file_is_an_error(spawn, tmp_path):
    line = one_error_line(spawn(config=str(tmp_path / "absent"), args=()))
    assert "absent" in line and "does not exist" in line


def test_unreadable_file_is_an_error(spawn, tmp_path):
    (tmp_path / "adir").mkdir()
    line = one_error_line(spawn(config=str(tmp_path / "adir"), args=()))
    assert "not a regular file" in line and "adir" in line


@pytest.mark.parametrize("args", [("--frobnicate",), ("-c",)])
def test_bad_command_line(spawn, args):
    line = one_error_line(spawn(config="", args=args))
    assert args[0] in line and "usage" in line


@pytest.mark.parametrize("args", [("-h",), ("--help",), ("-v", "--help"), ("--version",)])
def test_help_and_version_say_so_and_exit_0(spawn, args):
    """Usage and the version go to stdout, and never begin with a status
    character: ctdb.conf naming the helper with one of them by mistake
    never reads as a lock."""
    helper = spawn(config="", args=args)
    out = helper.status()
    out += helper.rest_of_stdout().decode()
    assert helper.wait() == 0
    assert out[:1] not in "013", out
    if args[-1] == "--version":
        assert out == "ctdb_etcd_lock %s\n" % ctdb_etcd_lock.__version__
    else:
        assert out.startswith("usage: ") and "--status" in out and "--version" in out
    assert helper.stderr() == ""


def test_comments_blank_lines_and_alias(spawn, tmp_path, etcd34, key, lock_name):
    path = tmp_path / "etcd"
    path.write_text(
        "# CTDB's etcd lock\n"
        "\n"
        "; an ini-style comment\n"
        "   port = %d   # trailing comment\n"
        "lock_ttl=3\n"
        "lock_refresh = 1\n"
        "\tlock_name = %s\n"
        "api = v2 # the original's API\n" % (etcd34.port, lock_name))
    helper = spawn(config=str(path), args=())
    assert helper.status() == "0"
    assert etcd34.v2_entries(key)[0]["ttl"] <= 3
    helper.terminate()
    assert helper.stderr() == ""


def test_python_etcd_settings_not_needed_are_taken_as_written(spawn, tmp_path, etcd34,
                                                               lock_name):
    # Values as python-etcd users wrote them: True, false, numbers, quotes.
    path = write_config(str(tmp_path / "etcd"), {
        "port": etcd34.port, "lock_ttl": 3, "lock_refresh": 1, "lock_name": '"%s"' % lock_name,
        "allow_reconnect": "True", "allow_redirect": "false", "per_host_pool_size": 10,
        "use_proxies": "True"})
    helper = spawn(config=path, args=())
    assert helper.status() == "0"
    assert etcd34.v3_value("/_locks/_ctdb/" + lock_name)  # the quotes are no part of it
    helper.terminate()
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines  # only use_proxies says something
    assert "etcd:8: use_proxies is ignored" in lines[0]


def test_lock_name_from_testparm(spawn, etcd34, lock_name):
    helper = spawn(etcd34, lock_name=None, api="v2",
                   env={"STUB_NETBIOS_NAME": lock_name.upper()})
    assert helper.status() == "0"
    assert etcd34.v2_value("/_locks/_ctdb/" + lock_name.upper())
    helper.terminate()


@pytest.mark.parametrize("netbios", ["", "A/B"], ids=["testparm fails", "name with slash"])
def test_no_lock_name_is_an_error_never_the_host_name(spawn, etcd34, netbios):
    helper = spawn(etcd34, lock_name=None, args=(), env={"STUB_NETBIOS_NAME": netbios})
    line = one_error_line(helper)
    assert "lock_name" in line
    assert os.uname().nodename not in line.split(" - ", 1)[0]


def test_value_names_the_holder(spawn, etcd34, key):
    helper = spawn(etcd34, api="v2", env={"STUB_PNN": "2"})
    assert helper.status() == "0"
    value = etcd34.v2_value(key)
    assert value.startswith("host=%s pnn=2 pid=%d id=" % (os.uname().nodename, helper.proc.pid))
    helper.terminate()


def test_pnn_unknown_when_ctdb_does_not_answer(spawn, etcd34, key):
    helper = spawn(etcd34, api="v2", env={"STUB_PNN": ""})
    assert helper.status() == "0"
    assert " pnn=? " in etcd34.v2_value(key)
    helper.terminate()


def test_unknown_setting_is_said_and_ignored(spawn, tmp_path, etcd34, lock_name):
    # The original ignored keys it did not know; a config it took still works.
    path = write_config(str(tmp_path / "etcd"), {
        "port": etcd34.port, "lock_tll": 30, "lock_name": lock_name})
    helper = spawn(config=path, args=())
    assert helper.status() == "0"
    helper.terminate()
    assert helper.stderr_lines() == [
        "ctdb_etcd_lock: %s:2: unknown setting lock_tll is ignored" % path]


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_expected_cluster_id(spawn, tmp_path, etcd34, lock_name, api):
    cluster = etcd34.cluster_id()
    right = spawn(etcd34, api=api, expected_cluster_id=cluster)
    assert right.status() == "0"
    right.terminate()
    wrong = spawn(etcd34, api=api, args=(), expected_cluster_id="abc")
    line = one_error_line(wrong)
    assert "belongs to cluster %s, not expected_cluster_id abc" % cluster in line


# ---------------------------------------------------------------------------
# Files that are no config file, a BOM, the shortest refresh, version_prefix
# as a URL path, values too long to quote whole, a testparm that hangs.

# Reading /dev/zero to its end never ends: a helper that tries would eat all
# memory, so these run with their address space capped.
CAPPED = 'ulimit -v 1048576 && exec "$@"'


def spawn_capped(started, stubs, tmp_path, config):
    helper = Helper(["sh", "-c", CAPPED, "sh", HELPER, "-c", config],
                    helper_env(stubs, tmp_path), str(tmp_path))
    started.append(helper)
    return helper


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_config_that_is_no_regular_file_is_refused_at_once(started, stubs, tmp_path, kind):
    if kind == "fifo":  # nobody ever writes to it: opening it to read would hang
        path = str(tmp_path / "etcd.fifo")
        os.mkfifo(path)
    elif kind == "directory":
        path = str(tmp_path / "etcd.d")
        os.mkdir(path)
    else:
        path = kind
    begun = time.monotonic()
    helper = spawn_capped(started, stubs, tmp_path, path)
    assert helper.status(timeout=2) == "3"
    assert time.monotonic() - begun < 2
    line = one_error_line(helper)
    assert path in line, line
    if kind != "directory":
        assert "not a regular file" in line, line


def write_padded(path, text, size):
    """text, then comment lines up to exactly size bytes."""
    data = text.encode()
    while len(data) < size:
        data += b"#" + b"x" * min(62, size - len(data) - 2) + b"\n"
    assert len(data) == size
    path.write_bytes(data)
    return str(path)


def test_config_file_over_64_kib_is_refused(spawn, tmp_path):
    path = write_padded(tmp_path / "etcd", "lock_name = big\nport = %d\n" % free_port(),
                        64 * 1024 + 1)
    line = one_error_line(spawn(config=path, args=()))
    assert path in line and "64 KiB" in line, line


def test_config_file_of_64_kib_is_read(spawn, tmp_path, etcd34, key, lock_name):
    path = write_padded(tmp_path / "etcd", "port = %d\nlock_ttl = 3\nrefresh = 0.5\n"
                        "lock_name = %s\napi = v2\n" % (etcd34.port, lock_name), 64 * 1024)
    helper = spawn(config=path, args=())
    assert helper.status() == "0", helper.stderr()
    assert "pid=%d" % helper.proc.pid in (etcd34.v2_value(key) or "")
    assert helper.terminate() == 0
    assert helper.stderr() == ""


def test_utf8_bom_is_ignored(spawn, tmp_path, etcd34, key, lock_name):
    # Editors on other systems start UTF-8 files with a BOM; the first line
    # is still lock_name, not an unknown setting "\ufefflock_name".
    path = tmp_path / "etcd"
    path.write_bytes(b"\xef\xbb\xbf" + ("lock_name = %s\nport = %d\nlock_ttl = 3\n"
                                        "refresh = 0.5\napi = v2\n"
                                        % (lock_name, etcd34.port)).encode())
    helper = spawn(config=str(path), args=(),
                   env={"STUB_NETBIOS_NAME": "not-" + lock_name})
    assert helper.status() == "0", helper.stderr()
    value = etcd34.v2_value(key)
    assert value and "pid=%d" % helper.proc.pid in value, (key, value, helper.stderr())
    assert helper.terminate() == 0
    assert helper.stderr() == ""


@pytest.mark.parametrize("refresh", ["0.000001", "0.05"])
def test_refresh_below_a_tenth_of_a_second_is_refused(spawn, tmp_path, refresh):
    path = tmp_path / "etcd"
    path.write_text("refresh = %s\nlock_ttl = 3\nlock_name = x\nport = %d\n"
                    % (refresh, free_port()))
    line = one_error_line(spawn(config=str(path), args=()))
    assert "config error" in line and str(path) + ":1" in line, line
    said = line.replace(str(path), "FILE")
    assert "refresh" in said and "0.1" in said, line


def test_refresh_of_a_tenth_of_a_second_is_accepted(spawn, etcd34, key):
    helper = spawn(etcd34, args=(), api="v3", lock_ttl=3, refresh=0.1)
    assert helper.status() == "0", helper.stderr()
    first = etcd34.v3_kv(key)
    assert first and "pid=%d" % helper.proc.pid in etcd34.v3_value(key)
    assert helper.running()
    assert helper.terminate() == 0
    assert helper.stderr() == ""


VERSION_PREFIXES = [("space", "/v2 x"), ("question mark", "/v2?x"), ("hash", "/v2#x"),
                    ("percent", "/v2%x"), ("control char", "/v2\x01x"), ("DEL", "/v2\x7fx")]


@pytest.mark.parametrize("prefix", [case[1] for case in VERSION_PREFIXES],
                         ids=[case[0] for case in VERSION_PREFIXES])
def test_version_prefix_must_be_a_url_path(spawn, tmp_path, prefix):
    # A config error, found before etcd is asked (nothing listens on the port).
    path = tmp_path / "etcd"
    path.write_text("lock_name = x\nport = %d\nversion_prefix = %s\n" % (free_port(), prefix))
    line = one_error_line(spawn(config=str(path), args=()))
    assert "config error" in line and str(path) + ":3" in line and "version_prefix" in line, line


def assert_short_lines(helper, limit=500):
    lines = helper.stderr_lines()
    assert lines, "nothing on stderr"
    for line in lines:
        assert len(line) < limit, "a line of %d characters: %s..." % (len(line), line[:200])
    return lines


LONG_VALUES = [
    ("lock_name", "lock_name = %s/%s\n" % ("n" * 30000, "m" * 29999)),
    ("port", "port = %s\n" % ("9" * 50000)),
]


@pytest.mark.parametrize("setting,text", LONG_VALUES, ids=[case[0] for case in LONG_VALUES])
def test_long_values_are_cut_in_messages(spawn, tmp_path, setting, text):
    path = tmp_path / "etcd"
    path.write_text(text)
    helper = spawn(config=str(path), args=())
    assert helper.status() == "3"
    assert helper.wait() == 3
    [line] = assert_short_lines(helper)
    assert str(path) + ":1" in line and setting in line, line


def test_long_unknown_setting_is_cut_in_its_warning(spawn, tmp_path, etcd34, lock_name):
    path = write_config(str(tmp_path / "etcd"), {
        "port": etcd34.port, "lock_ttl": 3, "refresh": 0.5, "lock_name": lock_name,
        "k" * 50000: 1})
    helper = spawn(config=path, args=())
    assert helper.status() == "0", helper.stderr()[:1000]
    assert helper.terminate() == 0
    [line] = assert_short_lines(helper)
    assert path + ":5" in line and "unknown setting" in line, line


def test_long_netbios_name_is_cut_in_the_message(spawn, stubs, etcd34):
    # 2 MB of netbios name, with a '/' that makes it no lock name.
    with open(os.path.join(stubs, "testparm"), "w") as f:
        f.write("#!/bin/sh\nprintf 'NB/'\nhead -c 2000000 /dev/zero | tr '\\0' N\necho\n")
    helper = spawn(etcd34, lock_name=None, args=())
    assert helper.status() == "3"
    assert helper.wait() == 3
    [line] = assert_short_lines(helper)
    assert line.startswith("ctdb_etcd_lock: ") and "lock_name" in line, line


def processes_with(marker):
    """Pids of live processes whose environment holds marker."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


# The stub is the sleeping process itself, or a shell waiting on its child
# (which holds the stdout pipe): neither may be left behind.
HANGING_TESTPARM = {"stub sleeps": "#!/bin/sh\nexec sleep 30\n",
                    "stub's child sleeps": "#!/bin/sh\nsleep 30\necho late\n"}


@pytest.mark.parametrize("stub", sorted(HANGING_TESTPARM))
def test_hanging_testparm_is_cut_short_and_killed(spawn, stubs, etcd34, stub):
    # A testparm stuck on a dead winbind or a locked tdb: ctdbd waits for
    # the status, so the helper must not, and leaves nothing behind.
    mark = "STUB_MARK=%s" % uuid.uuid4().hex
    with open(os.path.join(stubs, "testparm"), "w") as f:
        f.write(HANGING_TESTPARM[stub])
    try:
        begun = time.monotonic()
        helper = spawn(etcd34, lock_name=None, args=(), env=dict([mark.split("=", 1)]))
        assert helper.status(timeout=8) == "3"
        took = time.monotonic() - begun
        assert took < 4.5, "status 3 after %.1fs" % took
        line = one_error_line(helper)
        assert "lock_name" in line and "testparm" in line, line
        try:
            wait_for(lambda: not processes_with(mark.encode()), 2, "the testparm stub to go")
        except AssertionError:
            raise AssertionError("the testparm stub is still running 2s after the helper "
                                 "exited: pids %r" % processes_with(mark.encode())) from None
    finally:
        for pid in processes_with(mark.encode()):
            try:
                os.kill(pid, 9)
            except OSError:
                pass


@pytest.mark.fast
def test_hosts_as_admins_write_them():
    members = ctdb_etcd_lock._members
    assert members("[::1]:2379, 127.0.0.1") == [("::1", 2379), ("127.0.0.1", None)]
    assert members("[('10.0.0.1', 2379)]") == [("10.0.0.1", 2379)]
    assert members("bücher.example") == [("xn--bcher-kva.example", None)]  # IDNA
    with pytest.raises(ValueError):
        members(", ".join(["etcd"] * 101))


def test_a_bad_password_is_never_shown(spawn, tmp_path):
    path = tmp_path / "etcd"
    path.write_text("username = root\npassword = 'it's-S3cret'\n")
    path.chmod(0o600)
    line = one_error_line(spawn(config=str(path), args=()))
    assert "password" in line and "S3cret" not in line, line


# A line that is no 'key = value' may hold a password: it is never quoted,
# whatever shape it has (only a known setting's name and the line number).
SECRET = "s3cret-Zq81"
LEAKY_LINES = [
    ("colon", "password: %s" % SECRET, "password"),
    ("space", "password %s" % SECRET, "password"),
    ("tab", "password\t%s" % SECRET, "password"),
    ("colon, no space", "password:%s" % SECRET, None),
    ("colon, with '=' in the value", "password: %s=x" % SECRET, "password"),
    ("value alone", SECRET, None),
    ("no key", "= %s" % SECRET, None),
    ("misspelt", "pasword %s" % SECRET, None),
]


@pytest.mark.parametrize("line,named", [case[1:] for case in LEAKY_LINES],
                         ids=[case[0] for case in LEAKY_LINES])
def test_a_malformed_line_never_shows_a_password(spawn, tmp_path, line, named):
    path = tmp_path / "etcd"
    path.write_text("username = root\n%s\nport = 2379\n" % line)
    path.chmod(0o600)
    said = one_error_line(spawn(config=str(path), args=("-vvv",)))
    assert SECRET not in said and "s3cret" not in said, said
    assert "%s:2:" % path in said and "config error" in said, said
    if named:
        assert named in said, said
    for mode in ("--check", "--status"):
        admin = spawn(config=str(path), args=(mode, "--json"))
        assert admin.wait() == 3
        out = admin.proc.stdout.read().decode()
        error = json.loads(out)["error"]
        assert "%s:2:" % path in error and SECRET not in error, error
        assert "s3cret" not in out + admin.stderr(), (out, admin.stderr())
