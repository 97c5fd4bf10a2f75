"""--status and --check, the commands an admin runs: on real etcd of both
flavours, with the lock held by this helper, by the original, and by nobody.
Their output goes to stdout (lines for humans, or one JSON object)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import HELPER, ROOT, helper_env, the_case_member, write_config
from etcdmember import free_port


etcd = pytest.fixture(name="etcd")(the_case_member)


@pytest.fixture
def admin(tmp_path, stubs, lock_name):
    """admin(mode, etcd, **settings) -> (exit code, stdout, stderr)."""
    def run(*args, etcd=None, config=None, env=None, **settings):
        if config is None:
            values = {"lock_name": lock_name, "lock_ttl": 6, "refresh": 1}
            if etcd is not None:
                values["port"] = etcd.port
            values.update(settings)
            config = write_config(str(tmp_path / "admin-etcd"),
                                  {k: v for k, v in values.items() if v is not None})
        done = subprocess.run([sys.executable, HELPER] + list(args) + ["-c", config],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60,
                              env=helper_env(stubs, tmp_path, **(env or {})))
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    return run


def lines(text, what):
    return [line for line in text.splitlines() if line.split()[:1] == [what]]


def revision(etcd):
    return etcd.v3("/kv/range", {"key": "AA=="})["header"]["revision"]


# --status

def test_status_free(etcd, api, admin):
    code, out, err = admin("--status", etcd=etcd, api=api)
    assert code == 1, err
    assert err == ""
    served = ["v3", "v2"] if api == "auto" else [api]
    for where in served:
        if where == "v2" and not etcd.serves_v2:
            assert lines(out, "v2") == ["v2  not served by this etcd"]
        else:
            assert lines(out, where) == ["%s  free" % where]
    code, out, _ = admin("--status", "--json", etcd=etcd, api=api)
    report = json.loads(out)
    assert code == 1 and report["held"] is False
    assert report["lock"].endswith("/_ctdb/" + report["lock"].rsplit("/", 1)[1])


def test_status_held_by_us_changes_nothing(etcd, api, admin, spawn):
    holder = spawn(etcd, api=api, lock_ttl=6, refresh=1)
    assert holder.status() == "0"
    before = revision(etcd)
    code, out, err = admin("--status", etcd=etcd, api=api)
    assert code == 0, err
    where = "v2" if api == "v2" else "v3"
    held = lines(out, where)[0]
    assert "held by host" in held and "pid %d" % holder.proc.pid in held, out
    assert " s left" in held
    code, out, _ = admin("--status", "--json", etcd=etcd, api=api)
    report = json.loads(out)
    assert code == 0 and report["held"] is True
    about = report["apis"][where]
    assert about["holder"]["helper"] == "ctdb_etcd_lock"
    assert about["holder"]["pid"] == str(holder.proc.pid)
    assert 0 <= about["ttl_left"] <= 6
    assert revision(etcd) == before  # --status wrote nothing
    assert holder.running()


def test_status_held_by_the_original_with_a_queue(etcd34, admin, spawn_original):
    original = spawn_original(etcd34, lock_ttl=6, lock_refresh=1)
    assert original.status() == "0"
    contender = spawn_original(etcd34, lock_ttl=6, lock_refresh=1)
    assert contender.status() == "1"  # and it leaves its entry queued
    code, out, err = admin("--status", etcd=etcd34, api="auto")
    assert code == 0, err
    assert lines(out, "v3") == ["v3  free"]  # the original knows no v3
    held, queued = lines(out, "v2")
    assert "held by the original helper, pnn 7" in held
    assert "queued: the original helper, pnn 7" in queued
    report = json.loads(admin("--status", "--json", etcd=etcd34, api="v2")[1])
    assert report["apis"]["v2"]["holder"]["helper"] == "original"
    assert len(report["apis"]["v2"]["queue"]) == 1


def test_status_errors(admin, etcd34):
    code, out, err = admin("--status", port=free_port())
    assert code == 3 and out.startswith("lock ") and len(out.splitlines()) == 1
    assert len(err.splitlines()) == 1 and "cannot ask etcd" in err
    code, out, err = admin("--status", "--json", port=free_port())
    assert code == 3 and "error" in json.loads(out)
    code, out, err = admin("--status", etcd=etcd34, lock_ttl="nine")
    assert code == 3 and "config error" in err and "lock_ttl" in err


# --check

def test_check_good_config(etcd, api, admin):
    code, out, err = admin("--check", etcd=etcd, api=api)
    assert code == 0, out + err
    assert err == ""
    member, = lines(out, "member")
    assert member.split()[1] == "ok" and "etcd 3." in member
    assert "v3 served" in member
    assert ("v2 served" if etcd.serves_v2 else "v2 not served") in member
    assert lines(out, "result")[0].split()[1] == "ok"
    report = json.loads(admin("--check", "--json", etcd=etcd, api=api)[1])
    assert report["ok"] is True
    assert {check["what"] for check in report["checks"]} >= {"config", "member", "api",
                                                               "result"}


def test_check_v2_on_an_etcd_without_v2(etcd_members, admin):
    code, out, _ = admin("--check", etcd=etcd_members("etcd35"), api="v2")
    assert code == 3
    assert "no member serves v2" in lines(out, "api")[0]


def test_check_v3_while_the_original_runs(etcd34, admin, spawn_original):
    assert spawn_original(etcd34, lock_ttl=6, lock_refresh=1).status() == "0"
    code, out, _ = admin("--check", etcd=etcd34, api="v3")
    assert code == 3
    assert "original helper's entries" in lines(out, "api")[0]
    assert admin("--check", etcd=etcd34, api="auto")[0] == 0


def test_check_members_down(etcd34, admin):
    hosts = "127.0.0.1:%d, 127.0.0.1:%d" % (etcd34.port, free_port())
    # Without expected_cluster_id the helper wants a majority of the listed
    # members to confirm the cluster: one of two is not.
    code, out, _ = admin("--check", host=hosts)
    assert code == 3, out
    assert [line.split()[1] for line in lines(out, "member")] == ["ok", "warning"]
    assert lines(out, "cluster")[0].split()[1] == "error", out
    assert "1 of 2 members answered" in lines(out, "cluster")[0]
    assert "expected_cluster_id = %s" % etcd34.cluster_id() in lines(out, "cluster")[1]
    code, out, _ = admin("--check", host=hosts, expected_cluster_id=etcd34.cluster_id())
    assert code == 0, out  # the helper fails over: a warning, not a problem
    assert [line.split()[1] for line in lines(out, "member")] == ["ok", "warning"]
    assert lines(out, "cluster") == [
        "cluster  warning 1 of 2 members answered, all in cluster %s" % etcd34.cluster_id()]
    code, out, _ = admin("--check", port=free_port())
    assert code == 3 and "no member answered" in lines(out, "members")[0]


def test_check_timing_and_lock_name(etcd34, admin):
    code, out, err = admin("--check", etcd=etcd34, lock_ttl=9, refresh=8.5)
    assert code == 3 and out == "" and "config error" in err and "refresh" in err
    code, out, _ = admin("--check", etcd=etcd34, lock_ttl=9, refresh=4)
    assert code == 0 and lines(out, "timing")[0].split()[1] == "warning"
    code, out, _ = admin("--check", etcd=etcd34, lock_name=None,
                         env={"STUB_NETBIOS_NAME": "CLUSTER1"})
    assert code == 0
    assert "CLUSTER1 comes from testparm" in lines(out, "lock")[0]


# The command line

def test_help_and_json_only_with_a_mode(admin, etcd34):
    code, out, _ = admin("--status", "--help", etcd=etcd34)
    assert code == 0 and "--check" in out and "usage:" in out
    code, out, err = admin("--json", etcd=etcd34)
    assert code == 3 and out == "3"  # a helper run by ctdbd: a status byte
    assert "goes with --status or --check only" in err
    code, _, err = admin("--status", "--check", etcd=etcd34)
    assert code == 3 and "one at a time" in err


def test_the_readme_demo_runs():
    """scripts/demo, the README's one command, against Debian's etcd."""
    done = subprocess.run([os.path.join(ROOT, "scripts", "demo")], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert [line for line in out.splitlines() if line.startswith("status:")] == [
        "status: 0", "status: 1", "status: 0"], out
    assert "result   ok" in out and "v3  held by host" in out, out
    assert "Traceback" not in out


def test_check_v2_required_by_version_prefix(etcd_members, admin):
    """api = auto with version_prefix set by hand wants v2 (as the helper
    does): on an etcd without it, that is a problem."""
    code, out, _ = admin("--check", etcd=etcd_members("etcd35"), version_prefix="/v2")
    assert code == 3
    assert "with version_prefix set" in lines(out, "api")[0]


def test_status_shows_no_escapes_from_a_value(etcd34, admin, key):
    etcd34.v3_put(key, "\x1b[2J\x9b31m evil")
    code, out, _ = admin("--status", etcd=etcd34, api="v3")
    assert code == 0
    assert "\x1b" not in out and "\x9b" not in out and "evil" in out


def test_dash_c_takes_a_file_named_like_a_mode(etcd34, tmp_path, stubs):
    done = subprocess.run([sys.executable, HELPER, "-c", "--status"], cwd=str(tmp_path),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30, env=helper_env(stubs, tmp_path))
    assert done.returncode == 3 and done.stdout == b"3"  # the helper, not --status
    assert "--status" in done.stderr.decode()


def test_status_into_a_closed_pipe(etcd34, tmp_path, stubs, lock_name):
    config = write_config(str(tmp_path / "etcd"), {"port": etcd34.port, "lock_name": lock_name})
    read, write = os.pipe()
    os.close(read)  # | head -0
    try:
        done = subprocess.run([sys.executable, HELPER, "--status", "-c", config],
                              stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE,
                              timeout=30, env=helper_env(stubs, tmp_path))
    finally:
        os.close(write)
    assert done.returncode == 3
    assert done.stderr == b""  # no traceback, no 'internal error'


def test_status_names_a_holder_with_a_900_kb_value(etcd34, admin, key):
    # Legal in etcd (requests up to 1.5 MiB): named, and cut, in both forms.
    etcd34.v3_put(key, "host=big pnn=1 pid=42 id=00 " + "x" * 900000)
    try:
        code, out, err = admin("--status", etcd=etcd34, api="v3")
        assert code == 0, err[:2000]
        assert "held by host big, pnn 1, pid 42" in lines(out, "v3")[0], out[:2000]
        assert len(out) < 2000
        code, out, err = admin("--status", "--json", etcd=etcd34, api="v3")
        assert code == 0, err[:2000]
        holder = json.loads(out)["apis"]["v3"]["holder"]
        assert holder["pid"] == "42" and holder["value"].startswith("host=big"), holder
        assert len(out) < 5000, out[:2000]
    finally:
        etcd34.v3_delete(key)


# The module run with one of its functions replaced by one that fails as a
# bug of ours would (or as a signal would): --json still prints one object.
INJECTED = ("import sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import ctdb_etcd_lock as m\n"
            "def broken(*args):\n"
            "    if sys.argv[3] == 'terminated':\n"
            "        raise m.Terminated(15)\n"
            "    return {}['a bug']\n"
            "setattr(m, sys.argv[2], broken)\n"
            "sys.exit(m.main(sys.argv[4:]))\n")


@pytest.mark.parametrize("how", ["bug", "terminated"])
@pytest.mark.parametrize("mode", ["status", "check"])
def test_json_is_one_object_whatever_fails(etcd34, tmp_path, stubs, lock_name, mode, how):
    config = write_config(str(tmp_path / "etcd"), {"port": etcd34.port,
                                                   "lock_name": lock_name})
    done = subprocess.run([sys.executable, "-c", INJECTED, ROOT, mode, how, "--" + mode,
                           "--json", "-c", config], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                          env=helper_env(stubs, tmp_path))
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout.decode())  # exactly one object, nothing else
    assert list(report) == ["error"], report
    if how == "bug":
        assert "internal error" in report["error"] and "KeyError" in report["error"]
        assert len(done.stderr.decode().splitlines()) == 1, done.stderr
    else:
        assert "terminated" in report["error"] and done.stderr == b"", done.stderr
    assert b"Traceback" not in done.stderr
