"""The v2 keys API: the key's shape on the server, escaping, and an etcd
that does not serve v2."""

import pytest

from etcdmember import wait_for


def test_key_has_the_ttl_and_keeps_its_identity(etcd34, spawn, key):
    helper = spawn(etcd34, api="v2", lock_ttl=3, refresh=0.5)
    assert helper.status() == "0"
    node = etcd34.v2("GET", key)[1]["node"]
    assert 0 < node["ttl"] <= 3 and not node.get("dir")
    created = node["createdIndex"]
    # Refreshes are compare-and-swaps on the same key, not new keys.
    wait_for(lambda: etcd34.v2("GET", key)[1]["node"]["modifiedIndex"] > node["modifiedIndex"],
             3, "a refresh")
    assert etcd34.v2("GET", key)[1]["node"]["createdIndex"] == created
    helper.terminate()


@pytest.mark.parametrize("name", ["Café + 50% ?x", "a#b", "NB-1.example"])
def test_lock_names_are_escaped(etcd34, spawn, name):
    helper = spawn(etcd34, api="v2", lock_name=name)
    assert helper.status() == "0"
    status, data = etcd34.v2("GET", "/_locks/_ctdb/" + name)
    assert status == 200 and data["node"]["key"] == "/_locks/_ctdb/" + name
    helper.terminate()
    assert etcd34.v2("GET", "/_locks/_ctdb/" + name)[0] == 404


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


def test_key_held_by_a_plain_writer_is_contention(etcd34, spawn, key):
    etcd34.v2("PUT", key, value="an admin's hand-made lock")
    helper = spawn(etcd34, api="v2", args=("-v",))
    assert helper.status() == "1"
    assert "held by an admin's hand-made lock" in helper.stderr()
    assert etcd34.v2_value(key) == "an admin's hand-made lock"
    etcd34.v2("DELETE", key)
