# Installs the CTDB mutex helper that keeps the cluster lock in etcd.
#
#   make install [DESTDIR=...] [PREFIX=/usr] [LIBEXECDIR=...] [MANDIR=...] [DOCDIR=...]
#   make uninstall (with the same variables)
#   make dist    dist/ctdb-etcd-lock-VERSION.tar.gz, the release tarball
#   make deb     dist/ctdb-etcd-lock_VERSION-N_all.deb (packaging/debian)
#   make rpm     dist/ctdb-etcd-lock-VERSION-N.noarch.rpm (packaging/rpm)
#   (DISTDIR=... for another directory; VERSION is the helper's __version__;
#   packaging/build does the work, installing the Debian packages it lacks)
#
# What goes where (with the defaults):
#   /usr/libexec/ctdb/ctdb_etcd_lock        what ctdb.conf names: a small wrapper
#   /usr/libexec/ctdb/ctdb_etcd_lock.py     the helper itself, which the wrapper runs
#   /usr/libexec/ctdb/__pycache__/ctdb_etcd_lock.cpython-*.pyc   its byte code
#   /usr/share/man/man7/ctdb-etcd.7         the man page
#   /usr/share/doc/ctdb-etcd-lock/ctdb-etcd.conf.example
#
# Why a wrapper: ctdbd starts the helper at every election and at the end of
# every recovery.  Python compiles a script at every start, but keeps the
# byte code of a module; so the helper is a module, compiled here, and the
# script ctdbd runs has three lines of code.  A distribution builds the byte
# code its own way (Debian: dh_python3 and py3compile) and sets COMPILE=no
# to leave it out of the package.

PREFIX ?= /usr
LIBEXECDIR ?= $(PREFIX)/libexec
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/ctdb-etcd-lock
# The interpreter the helper runs under (the wrapper's first line, so an
# absolute path), and so the one that compiles it: byte code is only used by
# the Python version that wrote it.  Not taken from the environment, where
# PYTHON may name some other Python; give it on make's command line.
PYTHON = /usr/bin/python3
COMPILE ?= yes

HELPERDIR = $(LIBEXECDIR)/ctdb
INSTALL ?= install

.PHONY: all install uninstall dist deb rpm

# Both files ctdbd may run go in whole or not at all (a new name, then mv):
# on a live node, ctdbd starts the helper at any moment.  install -p keeps
# the module's time: its byte code records that time (and
# the size) and is used only while the source still has them.  The byte code
# is plain (no -O: ctdbd runs python3 without it); -d puts the installed
# path, not DESTDIR's, in it.

all:
	@echo "Nothing to build; 'make install' installs the helper (see the Makefile's head)."

install:
	$(INSTALL) -d $(DESTDIR)$(HELPERDIR) $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(DOCDIR)
	$(INSTALL) -p -m 644 ctdb_etcd_lock.py $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.py.tmp
	mv -f $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.py.tmp $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.py
	printf '%s\n' \
	    '#!$(PYTHON)' \
	    '# The CTDB mutex helper that keeps the cluster lock in etcd (man 7 ctdb-etcd).' \
	    '# It is ctdb_etcd_lock.py beside this file, run as a module (as "python3' \
	    '# ctdb_etcd_lock.py" would run it) so that its byte code is used.' \
	    'import os, runpy, sys' \
	    'sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))' \
	    'runpy.run_module("ctdb_etcd_lock", run_name="__main__")' \
	    > $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.tmp
	chmod 755 $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.tmp
	mv -f $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.tmp $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock
	if [ "$(COMPILE)" = yes ]; then \
	    umask 022; $(PYTHON) -m compileall -q -f -d $(HELPERDIR) \
	        $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.py; \
	fi
	$(INSTALL) -p -m 644 ctdb-etcd.7 $(DESTDIR)$(MANDIR)/man7/ctdb-etcd.7
	$(INSTALL) -p -m 644 ctdb-etcd.conf.example $(DESTDIR)$(DOCDIR)/ctdb-etcd.conf.example

uninstall:
	rm -f $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock \
	    $(DESTDIR)$(HELPERDIR)/ctdb_etcd_lock.py \
	    $(DESTDIR)$(HELPERDIR)/__pycache__/ctdb_etcd_lock.*.pyc \
	    $(DESTDIR)$(MANDIR)/man7/ctdb-etcd.7 \
	    $(DESTDIR)$(DOCDIR)/ctdb-etcd.conf.example
	rmdir $(DESTDIR)$(HELPERDIR)/__pycache__ $(DESTDIR)$(DOCDIR) 2>/dev/null || true

DISTDIR ?= dist
# deb and rpm each make the tarball first, in the same place.
.NOTPARALLEL:

dist deb rpm:
	DISTDIR='$(DISTDIR)' packaging/build $@
