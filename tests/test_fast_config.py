"""Fast tier: the config file, in process (read_config on files in tmp_path):
what each line becomes, which line a mistake names, the password never
shown, and the one timing rule."""

import os

import pytest

import ctdb_etcd_lock
from ctdb_etcd_lock import ConfigError, read_config, timing_problem

pytestmark = pytest.mark.fast

SECRET = "S3cr3t-never-shown"


def read(tmp_path, text, mode=0o600):
    path = tmp_path / "etcd"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    path.chmod(mode)
    return read_config(str(path), required=True)


def refused(tmp_path, text):
    """The ConfigError's message for a file of this text."""
    with pytest.raises(ConfigError) as error:
        read(tmp_path, text)
    return str(error.value)


# ---------------------------------------------------------------------------
# Good files

def test_comments_blank_lines_spaces_and_crlf(tmp_path):
    config = read(tmp_path, "\ufeff# a comment\r\n; another\r\n\r\n  lock_ttl\t=  12  \r\n"
                            "refresh = 3 # why: a comment after white space\r\n"
                            "lock_name = samba#1\r\n")
    assert (config.lock_ttl, config.refresh, config.lock_name) == (12, 3.0, "samba#1")
    assert config.lines == {"lock_ttl": 4, "refresh": 5, "lock_name": 6}
    assert config.where("refresh") == "%s:5" % (tmp_path / "etcd")
    assert config.where("port") == "%s (default port)" % (tmp_path / "etcd")


def test_the_original_alias_lock_refresh(tmp_path):
    config = read(tmp_path, "lock_refresh = 1.5\n")
    assert config.refresh == 1.5 and config.lines == {"refresh": 1}


def test_alias_and_name_together_is_a_setting_given_twice(tmp_path):
    message = refused(tmp_path, "refresh = 1\nlock_refresh = 2\n")
    assert message.endswith("etcd:2: lock_refresh is set again (first at line 1); keep one")


@pytest.mark.parametrize("text, expected", [
    ("lock_name = 'quoted'", "quoted"),
    ('lock_name = "double"', "double"),
    ("lock_name = 'half", "'half"),  # no quotes around it: taken as written
])
def test_quotes_python_etcd_users_wrote(tmp_path, text, expected):
    assert read(tmp_path, text + "\n").lock_name == expected


def test_host_as_python_etcds_tuple_of_pairs(tmp_path):
    config = read(tmp_path, "host = (('10.0.0.1', 2379), ('10.0.0.2', 2380))\n")
    assert [endpoint.url for endpoint in config.endpoints] == [
        "http://10.0.0.1:2379", "http://10.0.0.2:2380"]


def test_host_one_pair_and_the_default_port(tmp_path):
    config = read(tmp_path, "host = ('etcd1', 2381)\n")
    assert [endpoint.url for endpoint in config.endpoints] == ["http://etcd1:2381"]
    config = read(tmp_path, "host = etcd1, [::1], etcd1:2379\nport = 4001\n"
                            "protocol = https\n")
    # The same member twice (etcd1:2379 is not etcd1 on the port given) counts once.
    assert [endpoint.url for endpoint in config.endpoints] == [
        "https://etcd1:4001", "https://[::1]:4001", "https://etcd1:2379"]


def test_endpoints_as_etcdctl_writes_them(tmp_path):
    config = read(tmp_path, "endpoints = http://a:1, https://[::1]/\n")
    assert [endpoint.url for endpoint in config.endpoints] == ["http://a:1",
                                                               "https://[::1]:2379"]


def test_cert_as_a_tuple_names_the_key(tmp_path):
    config = read(tmp_path, "cert = ('/c.pem', '/k.pem')\n")
    assert config.cert == ("/c.pem", "/k.pem")
    assert read(tmp_path, "cert = /both.pem\n").cert == ("/both.pem", None)


def test_lock_key_fence_margin_and_cluster_id(tmp_path):
    config = read(tmp_path, "locks_dir = a/b\nlock_name = n\nlock_ttl = 20\n"
                            "expected_cluster_id = 00ABC\n")
    assert config.lock_key == "/_locks/a/b/n"
    assert config.fence_margin == 20 * ctdb_etcd_lock.FENCE_SHARE == 2.0
    assert config.expected_cluster_id == "abc"  # as etcd's header gives it


def test_unknown_setting_is_a_warning_naming_its_line(tmp_path):
    config = read(tmp_path, "lock_ttl = 9\nlock_tll = 5\n")
    assert config.ignored == ["%s:2: unknown setting lock_tll is ignored" % (tmp_path / "etcd")]
    assert config.lock_ttl == 9


@pytest.mark.parametrize("text, wait", [
    ("", 9.0), ("lock_ttl = 4", 4.0), ("lock_ttl = 3600", 100.0),
    ("lock_ttl = 3600\nhandover_wait = 0", 0.0), ("handover_wait = 2.5", 2.5),
])
def test_handover_wait_is_lock_ttl_unless_set(tmp_path, text, wait):
    """Unset, the wait covers all a dead holder's lock can have left, within
    the 120 s ctdbd's recovery daemon gives its helper."""
    assert read(tmp_path, text + "\n").handover_wait == wait


def test_missing_file(tmp_path):
    assert read_config(str(tmp_path / "absent"), required=False).lock_ttl == 9
    with pytest.raises(ConfigError, match="does not exist; create it or fix -c"):
        read_config(str(tmp_path / "absent"), required=True)


# ---------------------------------------------------------------------------
# Bad files: the file and line, and what to do

@pytest.mark.parametrize("text, line, expected", [
    ("lock_ttl 9", 1, "found lock_ttl without '=' right after it; write 'lock_ttl = ...'"),
    ("port = 2379\n= 5", 2, "found nothing before '='"),
    ("lock_ttl = 1", 1, "bad lock_ttl: 1 is not between 2 and 3600"),
    ("lock_ttl = 9.5", 1, "bad lock_ttl: '9.5' is not a whole number from 2 to 3600"),
    ("port = 0", 1, "bad port: 0 is not between 1 and 65535"),
    ("api = v4", 1, "bad api: 'v4' is not one of auto, v2, v3"),
    ("refresh = 0.05", 1, "bad refresh: '0.05' must be at least 0.1 seconds"),
    ("refresh = inf", 1, "bad refresh: 'inf' must be at least 0.1 seconds"),
    ("handover_wait = 101", 1, "bad handover_wait: '101' must be at most 100 seconds"),
    ("host = http://etcd", 1, "no http:// (URLs go in endpoints)"),
    ("host = ((1, 2, 3),)", 1, "is not a tuple of (host, port) pairs"),
    ("version_prefix = v2", 1, "must be a URL path such as /v2"),
    ("lock_name = a/b", 1, "must not contain '/'"),
    ("lock_name = 'it's'", 1, "bad lock_name: \"'it's'\" is not a quoted string"),
    ("locks_dir = a//b", 1, "is not a usable locks_dir"),
    ("expected_cluster_id = xyz", 1, "is not a cluster id in hex"),
])
def test_bad_line_names_file_and_line(tmp_path, text, line, expected):
    message = refused(tmp_path, text + "\n")
    assert message.startswith("%s:%d: " % (tmp_path / "etcd", line)), message
    assert expected in message, message


@pytest.mark.parametrize("text, expected", [
    ("endpoints = http://a:1\nport = 2", "etcd:1: endpoints and port (%s:2) do not go "
                                         "together"),
    ("srv_domain = example.com\nhost = a", "etcd:1: srv_domain and host (%s:2) do not go "
                                           "together"),
    ("cert = ('c', 'k')\nkey = k2", "etcd:1: cert and key (%s:2) do not go together"),
    ("key = /k.pem", "etcd:1: key without cert; give cert as well"),
    ("username = root", "etcd:1: username without password; give both or neither"),
])
def test_settings_that_do_not_go_together(tmp_path, text, expected):
    message = refused(tmp_path, text + "\n")
    assert expected.replace("%s", str(tmp_path / "etcd")) in message, message


@pytest.mark.parametrize("text", [
    "username = u\npassword = 'it's-%s'" % SECRET,  # no Python string
    "password = '%s" % SECRET,  # taken as written: no username then
    "password: %s" % SECRET,
    "password %s" % SECRET,
    "%s" % SECRET,
    "username = root\npassword = %s\npassword = %s" % (SECRET, SECRET),
])
def test_the_password_is_never_shown(tmp_path, text):
    message = refused(tmp_path, text + "\n")
    assert SECRET not in message and SECRET[:6] not in message, message
    assert str(tmp_path / "etcd") in message


def test_a_password_others_may_read_is_a_warning_without_it(tmp_path):
    config = read(tmp_path, "username = root\npassword = %s\n" % SECRET, mode=0o644)
    assert config.password == SECRET
    assert config.ignored == ["%s holds a password that other users can read; chmod 600 it"
                              % (tmp_path / "etcd")]
    assert read(tmp_path, "username = root\npassword = %s\n" % SECRET).ignored == []


def test_refresh_too_long_for_the_ttl_names_refresh_and_suggests_one(tmp_path):
    message = refused(tmp_path, "lock_ttl = 10\nrefresh = 9\n")
    assert message == ("%s:2: refresh (9s) must be less than 90%% of lock_ttl (10s), or the "
                       "lock could not be refreshed in time; e.g. refresh = 2.5"
                       % (tmp_path / "etcd"))
    # Only lock_ttl given: its line is named.
    assert refused(tmp_path, "lock_ttl = 2\n").startswith("%s:1: " % (tmp_path / "etcd"))


def test_not_a_regular_file_nor_utf8_nor_small(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_config(fifo, required=True)  # never waits for a writer
    assert "make it readable UTF-8 text" in refused(tmp_path, b"lock_name = \xff\n")
    assert "bigger than 64 KiB" in refused(tmp_path, "#" * (64 << 10) + "\n")


# ---------------------------------------------------------------------------
# The one timing rule

@pytest.mark.parametrize("lock_ttl, refresh, shortest, level", [
    (9, 2, None, "ok"),
    (9, 3, None, "ok"),  # a third of lock_ttl: still fine
    (9, 3.1, None, "warning"),
    (9, 8, None, "warning"),  # 8 < 8.1: refreshed in time, barely
    (9, 8.1, None, "error"),  # no refresh before the fence
    (10, 9, None, "error"),
    (9, 2, 7, "warning"),  # 6.1 s of margin: less than etcd's shortest lease
    (9, 2, 6, "ok"),
    (9, 2, 15, "warning"),  # every lease stretched past lock_ttl
])
def test_timing_problem_levels(lock_ttl, refresh, shortest, level):
    found, why = timing_problem(lock_ttl, refresh, shortest)
    assert found == level, why
    assert (why == "") == (level == "ok")


def test_config_and_timing_problem_agree(tmp_path):
    # One rule: what timing_problem calls an error is what the config refuses.
    for refresh in (7.9, 8.0, 8.1, 8.2):
        level = timing_problem(9, refresh)[0]
        try:
            read(tmp_path, "lock_ttl = 9\nrefresh = %s\n" % refresh)
            accepted = True
        except ConfigError:
            accepted = False
        assert accepted == (level != "error"), refresh
