"""A rolling upgrade: the original helper (Samba's, on python-etcd) and this
one side by side on the same etcd (3.4 with v2), never both holding, never
deleting a lock that is held."""

import time

import pytest

from etcdmember import wait_for

NEW_APIS = ["v2", "auto"]


@pytest.mark.parametrize("api", NEW_APIS)
def test_original_holds_new_contends(etcd34, spawn, spawn_original, api):
    original = spawn_original(etcd34)
    assert original.status() == "0"
    new = spawn(etcd34, api=api, args=())
    assert new.status() == "1"
    assert new.stderr() == ""
    assert original.running()
    original.terminate()
    # The original leaves its directory behind; the new helper takes the lock in it.
    again = spawn(etcd34, api=api)
    assert again.status() == "0"
    again.terminate()


@pytest.mark.parametrize("api", NEW_APIS)
def test_new_holds_original_never_takes(etcd34, spawn, spawn_original, api, key):
    new = spawn(etcd34, api=api, args=())
    assert new.status() == "0"
    # '1', not '3': at the end of every recovery each node's ctdbd runs the
    # helper expecting '1', and '3' would fail the recovery.
    original = spawn_original(etcd34)
    assert original.status() == "1"
    original.wait()
    assert new.running()
    assert "pid=%d" % new.proc.pid in etcd34.v2_value(key)
    new.terminate()
    assert new.stderr() == ""


@pytest.mark.parametrize("api", NEW_APIS)
def test_new_takes_lock_in_the_originals_directory(etcd34, spawn, spawn_original, api, key):
    original = spawn_original(etcd34)
    assert original.status() == "0"
    original.terminate()
    status, data = etcd34.v2("GET", key)
    assert data["node"].get("dir") and not data["node"].get("nodes")  # left empty
    new = spawn(etcd34, api=api, args=())
    assert new.status() == "0"
    # While the new helper holds its child, the original contends.
    late = spawn_original(etcd34)
    assert late.status() == "1"
    late.wait()
    assert new.running()
    new.terminate()
    assert new.stderr() == ""
    # Nothing of ours is left in the directory.
    children = etcd34.v2("GET", key)[1]["node"].get("nodes") or []
    ours = [child for child in children if child["value"].startswith("host=")]
    assert ours == []


def test_originals_queued_child_blocks_until_its_ttl(etcd34, spawn, spawn_original, key):
    holder = spawn_original(etcd34)
    assert holder.status() == "0"
    loser = spawn_original(etcd34)
    assert loser.status() == "1"  # it leaves its child behind, for its TTL
    holder.terminate()
    # The loser's child still stands in the queue: nobody may hold yet.
    assert spawn(etcd34, api="v2", args=()).status() == "1"
    wait_for(lambda: not etcd34.v2("GET", key)[1]["node"].get("nodes"), 10,
             "the loser's child to expire")
    new = spawn(etcd34, api="v2", args=())
    assert new.status() == "0"
    new.terminate()


def test_new_contender_in_directory_leaves_no_child(etcd34, spawn, spawn_original, key):
    original = spawn_original(etcd34)
    assert original.status() == "0"
    new = spawn(etcd34, api="v2", args=())
    assert new.status() == "1"
    new.wait()
    children = etcd34.v2("GET", key)[1]["node"].get("nodes") or []
    assert [child["value"].split("_")[-1] for child in children] == ["7"]  # only the original's
    original.terminate()


@pytest.mark.parametrize("round_", range(3))
def test_mixed_crowd_never_two_holders(etcd34, spawn, spawn_original, key, round_):
    # Old and new helpers started at once, on a fresh key or on the
    # original's directory: at most one says 0, and its lock survives the others.
    if round_ == 2:
        first = spawn_original(etcd34)
        assert first.status() == "0"
        first.terminate()
    crowd = []
    for i in range(4):
        crowd.append(spawn_original(etcd34))
        crowd.append(spawn(etcd34, api=["v2", "auto"][i % 2], args=()))
    statuses = [helper.status() for helper in crowd]
    holders = [helper for helper, status in zip(crowd, statuses) if status == "0"]
    assert len(holders) <= 1, statuses
    assert "" not in statuses
    if holders:
        holder = holders[0]
        time.sleep(1.5)  # the others' cleanup, and a refresh or two
        assert holder.running(), holder.stderr()
        assert not [h for h in crowd if h is not holder and h.running()]
        # And it still holds: a newcomer of either kind contends.
        assert spawn(etcd34, api="v2", args=()).status() == "1"
        holder.terminate()
