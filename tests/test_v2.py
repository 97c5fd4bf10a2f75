"""The v2 keys API: the key's shape on the server, escaping, and an etcd
that does not serve v2."""

import pytest

from etcdmember import wait_for


def test_lock_is_an_entry_in_the_originals_layout(etcd34, spawn, key):
    helper = spawn(etcd34, api="v2", lock_ttl=3, refresh=0.5)
    assert helper.status() == "0"
    status, data = etcd34.v2("GET", key)
    assert data["node"].get("dir")  # python-etcd's lock recipe: a directory of entries
    [entry] = etcd34.v2_entries(key)
    assert "pid=%d" % helper.proc.pid in entry["value"]
    assert 0 < entry["ttl"] <= 3
    # Refreshes are compare-and-swaps on the same entry, not new entries.
    wait_for(lambda: etcd34.v2_entries(key)[0]["modifiedIndex"] > entry["modifiedIndex"],
             3, "a refresh")
    assert [e["key"] for e in etcd34.v2_entries(key)] == [entry["key"]]
    helper.terminate()
    assert etcd34.v2_entries(key) == []


@pytest.mark.parametrize("name", ["Café + 50% ?x", "a#b", "NB-1.example"])
def test_lock_names_are_escaped(etcd34, spawn, name):
    helper = spawn(etcd34, api="v2", lock_name=name)
    assert helper.status() == "0"
    status, data = etcd34.v2("GET", "/_locks/_ctdb/" + name)
    assert status == 200 and data["node"]["key"] == "/_locks/_ctdb/" + name
    assert etcd34.v2_value("/_locks/_ctdb/" + name).startswith("host=")
    helper.terminate()
    assert etcd34.v2_entries("/_locks/_ctdb/" + name) == []


def test_an_entry_put_before_ours_is_the_lock_lost(etcd34, spawn, key):
    # python-etcd re-creates an expired entry under its old, lower name.
    helper = spawn(etcd34, api="v2", args=(), refresh=0.5)
    assert helper.status() == "0"
    [ours] = etcd34.v2_entries(key)
    earlier = key + "/" + "0" * 19 + "1"
    etcd34.v2("PUT", earlier, value="an original helper", ttl=30)
    helper.wait(timeout=3)
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "no longer first" in lines[0], lines
    # It gave its own entry back, and left the other alone.
    assert [e["key"] for e in etcd34.v2_entries(key)] == [earlier]
    etcd34.v2("DELETE", earlier)


def test_nested_locks_dir(etcd34, spawn, lock_name):
    helper = spawn(etcd34, api="v2", locks_dir="site/a")
    assert helper.status() == "0"
    assert etcd34.v2_value("/_locks/site/a/" + lock_name)
    helper.terminate()


def test_v2_on_an_etcd_without_v2_says_what_to_set(etcd_members, spawn):
    etcd35 = etcd_members("etcd35")
    helper = spawn(etcd35, api="v2", args=())
    assert helper.status() == "3"
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    assert etcd35.url in lines[0]
    assert "does not serve the v2 API" in lines[0] and "api = v3" in lines[0]


def test_a_plain_key_where_the_queue_belongs_is_an_error(etcd34, spawn, key):
    # No helper, old or new, writes one: say so instead of a silent '1' for ever.
    etcd34.v2("PUT", key, value="an admin's hand-made lock")
    helper = spawn(etcd34, api="v2", args=())
    assert helper.status() == "3"
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "plain key at %s" % key in lines[0], lines
    assert etcd34.v2_value(key) == "an admin's hand-made lock"
    etcd34.v2("DELETE", key)


def test_an_entry_without_ttl_is_contention_said_once(etcd34, spawn, key):
    stuck = key + "/" + "0" * 19 + "1"
    etcd34.v2("PUT", stuck, value="left by hand")
    helper = spawn(etcd34, api="v2", args=())
    assert helper.status() == "1"
    lines = helper.stderr_lines()
    assert len(lines) == 1 and "has no TTL" in lines[0] and stuck in lines[0], lines
    assert [e["key"] for e in etcd34.v2_entries(key)] == [stuck]  # ours taken back
    etcd34.v2("DELETE", stuck)
