"""The config file and command line: the original's format and settings,
and one clear line (status 3) for every mistake."""

import os

import pytest

import ctdb_etcd_lock
from conftest import write_config


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
    ("https not yet", "protocol = https\n", ["etcd:1", "protocol", "https", "TLS"]),
    ("host with port", "host = 127.0.0.1:2379\n", ["etcd:1", "host", "port = N"]),
    ("host as URL", "host = http://etcd1\n", ["etcd:1", "host", "http://"]),
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


def test_missing_default_file_means_defaults(tmp_path):
    config = ctdb_etcd_lock.read_config(str(tmp_path / "etcd"), required=False)
    assert (config.host, config.port, config.lock_ttl, config.refresh, config.locks_dir,
            config.api, config.version_prefix, config.read_timeout) == (
        "127.0.0.1", 2379, 9, 2.0, "_ctdb", "auto", "/v2", 60.0)
    assert config.endpoint == "http://127.0.0.1:2379"


def test_missing_named_file_is_an_error(spawn, tmp_path):
    line = one_error_line(spawn(config=str(tmp_path / "absent"), args=()))
    assert "absent" in line and "does not exist" in line


def test_unreadable_file_is_an_error(spawn, tmp_path):
    (tmp_path / "adir").mkdir()
    line = one_error_line(spawn(config=str(tmp_path / "adir"), args=()))
    assert "cannot read config file" in line and "adir" in line


@pytest.mark.parametrize("args", [("--frobnicate",), ("-h",), ("-c",)])
def test_bad_command_line(spawn, args):
    # Not even --help: usage on stdout would read as a status to ctdbd.
    line = one_error_line(spawn(config="", args=args))
    assert args[0] in line and "usage" in line


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


def test_not_yet_implemented_settings_say_so_once(spawn, tmp_path, etcd34, lock_name):
    path = write_config(str(tmp_path / "etcd"), {
        "port": etcd34.port, "lock_ttl": 3, "lock_refresh": 1, "lock_name": lock_name,
        "allow_reconnect": "True", "per_host_pool_size": 10})
    helper = spawn(config=path, args=())
    assert helper.status() == "0"
    helper.terminate()
    lines = helper.stderr_lines()
    assert len(lines) == 2, lines
    assert "etcd:5: setting allow_reconnect is not implemented yet" in lines[0]
    assert "etcd:6: setting per_host_pool_size is not implemented yet" in lines[1]


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
