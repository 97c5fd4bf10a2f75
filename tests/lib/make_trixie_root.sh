#!/bin/sh
# The Debian 13 root with ctdb 4.22: make_ctdb_root.sh trixie (this name is
# kept for whoever ran it before).
exec "$(dirname "$0")/make_ctdb_root.sh" trixie
