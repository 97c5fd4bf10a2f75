"""The module itself: Python 3.6, the standard library only, installable as is."""

import ast
import os
import shutil
import subprocess
import sys

from conftest import HELPER, SYSTEM_PYTHON


def test_needs_no_python_newer_than_3_6():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    done = subprocess.run([vermin, "--target=3.6-", "--violations", "--no-tips",
                           "--eval-annotations", HELPER],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout.decode()


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
