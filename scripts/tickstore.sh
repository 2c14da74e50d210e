#!/bin/sh
# Day-2 operations on the tick store's database, by plain SQL through the
# sqlite3 shell: a local one if installed, otherwise the one in the running
# container. Called by the Makefile; see README.md, "Operating it".
#
#   tickstore.sh add|enable|disable|remove SYMBOL
#   tickstore.sh list
#   tickstore.sh backup [FILE]
#   tickstore.sh export SYMBOL DAY [FILE]    (DAY as YYYY-MM-DD, UTC; CSV)
set -eu

db=${DB_PATH:-./.data/ticks.db}
container_db=/app/.data/ticks.db

die() { echo "tickstore: $*" >&2; exit 2; }

# sql runs one script against the database, waiting up to 5 s for the
# store's write lock.
sql() {
	if command -v sqlite3 >/dev/null 2>&1; then
		[ -f "$db" ] || [ "$action" != list ] || die "no database at $db (start the store, or set DB_PATH)"
		sqlite3 -bail -cmd ".timeout 5000" "$@" "$db"
	else
		compose=$(docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
		$compose exec -T tick-store sqlite3 -bail -cmd ".timeout 5000" "$@" "$container_db"
	fi
}

# symbol normalises $1 as the store does (trim, ASCII upper case) and quotes
# it as an SQL string literal.
symbol() {
	s=$(printf '%s' "$1" | tr 'a-z' 'A-Z' | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
	[ -n "$s" ] || die "SYMBOL is empty"
	printf "'%s'" "$(printf '%s' "$s" | sed "s/'/''/g")"
}

# The spec's table, in case the store has not run yet.
settings_ddl='CREATE TABLE IF NOT EXISTS symbol_settings (
    symbol  TEXT PRIMARY KEY,
    enabled INTEGER DEFAULT 1
);'

action=${1:-}
case "$action" in
add)
	s=$(symbol "${2:-}")
	echo "$settings_ddl
INSERT INTO symbol_settings (symbol) SELECT $s
    WHERE NOT EXISTS (SELECT 1 FROM symbol_settings WHERE upper(trim(symbol)) = $s);
UPDATE symbol_settings SET enabled = 1 WHERE upper(trim(symbol)) = $s;" | sql
	;;
enable | disable)
	s=$(symbol "${2:-}")
	v=1; [ "$action" = disable ] && v=0
	n=$(echo "UPDATE symbol_settings SET enabled = $v WHERE upper(trim(symbol)) = $s; SELECT changes();" | sql)
	[ "$n" != 0 ] || die "no symbol $s in symbol_settings"
	;;
remove)
	s=$(symbol "${2:-}")
	n=$(echo "DELETE FROM symbol_settings WHERE upper(trim(symbol)) = $s; SELECT changes();" | sql)
	[ "$n" != 0 ] || die "no symbol $s in symbol_settings"
	;;
list)
	echo "SELECT symbol, CASE enabled WHEN 1 THEN 'enabled' ELSE 'disabled' END FROM symbol_settings ORDER BY rowid;" |
		sql -separator '  '
	;;
backup)
	# SQLite's online backup: a consistent copy while the store writes.
	out=${2:-./.data/backup-$(date -u +%Y%m%dT%H%M%SZ).db}
	command -v sqlite3 >/dev/null 2>&1 || out=/app/.data/$(basename "$out")
	echo ".backup '$(printf '%s' "$out" | sed "s/'/''/g")'" | sql
	echo "$out"
	;;
export)
	s=$(symbol "${2:-}")
	day=${3:-}
	printf '%s' "$day" | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' || die "DAY must be YYYY-MM-DD"
	table=$(printf '"prices_%s"' "$(printf '%s' "$s" | sed -e "s/^'//" -e "s/'$//" -e "s/''/'/g" -e 's/"/""/g')")
	query="SELECT id, timestamp, strftime('%Y-%m-%dT%H:%M:%fZ', timestamp / 1000.0, 'unixepoch') AS utc, price
FROM $table WHERE timestamp >= unixepoch('$day') * 1000 AND timestamp < unixepoch('$day', '+1 day') * 1000
ORDER BY timestamp;"
	if [ -n "${4:-}" ]; then
		echo "$query" | sql -csv -header >"$4"
		echo "$4"
	else
		echo "$query" | sql -csv -header
	fi
	;;
*)
	die "usage: tickstore.sh add|enable|disable|remove SYMBOL | list | backup [FILE] | export SYMBOL DAY [FILE]"
	;;
esac
