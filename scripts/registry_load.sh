#!/usr/bin/env bash
# Registry load on both backends, for BENCHMARKS.md: claim latency and metric rows written per
# second with 1, 4 and 16 concurrent workers, on a SQLite file and on a PostgreSQL server this
# script starts (Debian's postgresql: initdb + pg_ctl in a temp folder, 127.0.0.1).
#   scripts/registry_load.sh [path/to/mvlab] [workers, default 1,4,16]
set -euo pipefail
mvlab=${1:-target/release/mvlab}
workers=${2:-1,4,16}
tmp=$(mktemp -d)
chmod 755 "$tmp"
pg=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$tmp"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$pg/initdb" -D "$tmp/data" -A trust --no-sync -U mv >/dev/null
as_pg "$pg/pg_ctl" -D "$tmp/data" -w -l "$tmp/log" -o "-c listen_addresses=127.0.0.1 -p $port -k $tmp -c max_connections=300" start >/dev/null
trap 'as_pg "$pg/pg_ctl" -D "$tmp/data" -m immediate stop >/dev/null; rm -rf "$tmp"' EXIT
as_pg "$pg/createdb" -h 127.0.0.1 -p "$port" -U mv mvlab
"$mvlab" --db "$tmp/load.db" bench --registry "$workers"
"$mvlab" --db "postgres://mv@127.0.0.1:$port/mvlab" bench --registry "$workers" | tail -n +2
