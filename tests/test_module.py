"""The module itself: Python 3.6, the standard library only, installable as is."""

import ast
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import HELPER, SYSTEM_PYTHON


def test_needs_no_python_newer_than_3_6():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    done = subprocess.run([vermin, "--target=3.6-", "--violations", "--no-tips",
                           "--eval-annotations", HELPER],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout.decode()


@pytest.mark.fast
def test_imports_only_the_standard_library():
    tree = ast.parse(open(HELPER).read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules - set(sys.stdlib_module_names) == set()


def test_importing_loads_only_what_every_path_needs():
    # Transport, JSON, base64 and subprocess load when a path needs them.
    code = ("import sys; before = set(sys.modules); import ctdb_etcd_lock; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    done = subprocess.run([SYSTEM_PYTHON, "-S", "-c", code], stdout=subprocess.PIPE,
                          cwd=os.path.dirname(HELPER), check=True)
    loaded = set(done.stdout.decode().split())
    assert not loaded & {"http", "http.client", "json", "base64", "subprocess", "ssl",
                         "urllib", "argparse"}, loaded


@pytest.mark.fast
def test_runs_as_installed():
    with open(HELPER) as f:
        assert f.readline() == "#!/usr/bin/python3\n"
    assert os.access(HELPER, os.X_OK)


# Runs the helper, and notes at its exit which of the modules it loaded.
NOTING = ("import atexit, runpy, sys\n"
          "out = sys.argv.pop(1)\n"
          "atexit.register(lambda: open(out, 'w').write(' '.join(sorted(sys.modules))))\n"
          "sys.argv = sys.argv[1:]\n"
          "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def test_plain_http_never_loads_ssl(etcd34, spawn, tmp_path):
    # ssl costs start-up time; only https members need it.
    noted = tmp_path / "modules"
    holder = spawn(etcd34, args=(), wrap=[SYSTEM_PYTHON, "-c", NOTING, str(noted)])
    assert holder.status() == "0", holder.stderr()
    assert holder.terminate() == 0
    modules = noted.read_text().split()
    assert "socket" in modules and "ssl" not in modules, modules


@pytest.mark.fast
def test_one_clock_and_it_counts_a_suspend():
    # Every deadline and the lock's life count on one clock, CLOCK_BOOTTIME
    # where there is one: time.monotonic() stands still while the system is
    # suspended.  It appears only as the fallback of that one definition.
    tree = ast.parse(open(HELPER).read())
    uses = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and node.attr == "monotonic" and isinstance(node.value, ast.Name)
            and node.value.id == "time"]
    choices = [node for node in tree.body if isinstance(node, ast.If)
               and "CLOCK_BOOTTIME" in ast.dump(node.test)]
    assert len(choices) == 1, "no one module-level choice of CLOCK_BOOTTIME"
    fallback = {id(node) for statement in choices[0].orelse for node in ast.walk(statement)}
    assert [node.lineno for node in uses if id(node) not in fallback] == []
    if hasattr(time, "CLOCK_BOOTTIME"):
        import ctdb_etcd_lock
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        now = ctdb_etcd_lock.clock()
        assert before <= now <= time.clock_gettime(time.CLOCK_BOOTTIME)
