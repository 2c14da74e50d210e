// Package database owns the SQLite file: its schema, every SQL statement the
// store runs, and the single connection they share.
package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// BusyTimeoutMillis is how long a statement waits for a lock held by another
// program (the sqlite3 shell, a notebook) before it fails with SQLITE_BUSY.
const BusyTimeoutMillis = 5000

// Tick is one aggregate trade as stored: Binance's aggregate trade id, the
// trade time in Unix milliseconds and the price.
type Tick struct {
	ID        int64
	Timestamp int64
	Price     float64
}

// Setting is one row of symbol_settings as the user wrote it; the symbol is
// not normalised here.
type Setting struct {
	Symbol  string
	Enabled bool
}

// DB is the store's one SQLite connection. Every method takes the mutex for
// the whole statement, so methods are safe for concurrent use and run one at
// a time. Symbols passed in must already be normalised (package symbol):
// they become table names, quoted, never pasted.
//
// Writes ignore the cancellation of the context they are given: interrupting
// a statement half-way can poison the single connection, and a write that has
// started is cheaper to finish than to undo.
type DB struct {
	path    string
	mu      sync.Mutex
	db      *sql.DB
	conn    *sql.Conn
	inserts map[string]*sql.Stmt // prepared INSERT per symbol
	chunk   int                  // ids per audit query: auditChunk, smaller in tests
}

// Open opens (creating if needed) the database at path, creating its
// directory, switching it to WAL and creating symbol_settings. It fails if the
// file is not a SQLite database or WAL cannot be enabled on it.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create database directory: %w", err)
	}
	db, err := sql.Open("sqlite", DSN(path))
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	d := &DB{path: path, db: db, conn: conn, inserts: make(map[string]*sql.Stmt), chunk: auditChunk}
	var mode string
	if err := conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		d.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		d.Close()
		return nil, fmt.Errorf("open database %s: journal_mode is %q, want wal (is the filesystem local?)", path, mode)
	}
	if err := d.createSettings(ctx); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Path is the database file's path, as given to Open.
func (d *DB) Path() string { return d.path }

// DSN is the data source name Open uses for path: every pragma is in it, so
// that it applies to the connection whatever database/sql does. Exported for
// the benchmarks, which must measure the same configuration.
//
// WAL with synchronous=NORMAL loses nothing on a crash of the process. A
// checkpoint every 10,000 pages (about 40 MB of WAL) instead of SQLite's
// 1,000 does a tenth of the checkpoints and their fsyncs (8 to 13 % less CPU
// per tick in two runs, no significant difference in a third: see
// docs/BENCHMARKS.md); journal_size_limit truncates the WAL back to 64 MB
// after a reader held it open and let it grow.
func DSN(path string) string {
	return fmt.Sprintf("%s?_pragma=busy_timeout(%d)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"+
		"&_pragma=wal_autocheckpoint(10000)&_pragma=journal_size_limit(%d)", path, BusyTimeoutMillis, 64<<20)
}

// Close finishes the statement in flight, if any, and closes the database.
func (d *DB) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for sym, st := range d.inserts {
		st.Close()
		delete(d.inserts, sym)
	}
	errConn := d.conn.Close()
	return errors.Join(errConn, d.db.Close())
}

// Ping reports whether the database answers a trivial query.
func (d *DB) Ping(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var one int
	return d.conn.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

const settingsDDL = `CREATE TABLE IF NOT EXISTS symbol_settings (
    symbol  TEXT PRIMARY KEY,
    enabled INTEGER DEFAULT 1
)`

func (d *DB) createSettings(ctx context.Context) error {
	if _, err := d.conn.ExecContext(context.WithoutCancel(ctx), settingsDDL); err != nil {
		return fmt.Errorf("create symbol_settings: %w", err)
	}
	return nil
}

// Settings returns the rows of symbol_settings in insertion order. A row is
// enabled when enabled = 1. If the table is missing (dropped by hand) it is
// recreated, empty, and the error says so: the caller should keep what it
// runs until the next read.
func (d *DB) Settings(ctx context.Context) ([]Setting, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rows, err := d.conn.QueryContext(ctx,
		`SELECT coalesce(CAST(symbol AS TEXT), ''), coalesce(enabled = 1, 0) FROM symbol_settings ORDER BY rowid`)
	if isNoSuchTable(err) {
		if cerr := d.createSettings(ctx); cerr != nil {
			return nil, errors.Join(fmt.Errorf("read symbol_settings: %w", err), cerr)
		}
		return nil, fmt.Errorf("read symbol_settings: %w (recreated it empty)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("read symbol_settings: %w", err)
	}
	defer rows.Close()
	var out []Setting
	for rows.Next() {
		var s Setting
		if err := rows.Scan(&s.Symbol, &s.Enabled); err != nil {
			return nil, fmt.Errorf("read symbol_settings: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read symbol_settings: %w", err)
	}
	return out, nil
}

// CreateTable creates the prices table of sym and its timestamp index if they
// do not exist yet.
func (d *DB) CreateTable(ctx context.Context, sym string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.createTable(ctx, sym)
}

func (d *DB) createTable(ctx context.Context, sym string) error {
	table := quoteIdent(tableName(sym))
	ddl := `CREATE TABLE IF NOT EXISTS ` + table + ` (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp INTEGER NOT NULL,
    price     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ` + quoteIdent("idx_"+tableName(sym)+"_timestamp") + ` ON ` + table + `(timestamp)`
	if _, err := d.conn.ExecContext(context.WithoutCancel(ctx), ddl); err != nil {
		return fmt.Errorf("create table for %s: %w", sym, err)
	}
	return nil
}

// Insert stores t in the prices table of sym unless a row with its id is
// already there (a tick delivered twice is stored once). A table dropped by
// hand is recreated before the tick is written. Insert does not retry: on
// error the tick is not stored.
func (d *DB) Insert(ctx context.Context, sym string, t Tick) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	err := d.insert(ctx, sym, t)
	if isNoSuchTable(err) {
		d.forget(sym)
		if err = d.createTable(ctx, sym); err == nil {
			err = d.insert(ctx, sym, t)
		}
	}
	if err != nil {
		return fmt.Errorf("insert into %s: %w", tableName(sym), err)
	}
	return nil
}

func (d *DB) insert(ctx context.Context, sym string, t Tick) error {
	st, ok := d.inserts[sym]
	if !ok {
		var err error
		st, err = d.conn.PrepareContext(ctx,
			`INSERT OR IGNORE INTO `+quoteIdent(tableName(sym))+` (id, timestamp, price) VALUES (?, ?, ?)`)
		if err != nil {
			return err
		}
		d.inserts[sym] = st
	}
	_, err := st.ExecContext(ctx, t.ID, t.Timestamp, t.Price)
	return err
}

// InsertBatch stores ticks of sym in one transaction, skipping ids already
// present, and returns how many rows were added. Meant for backfill pages:
// one commit per page keeps the lock short and the writes cheap. On error
// nothing of the batch is stored.
func (d *DB) InsertBatch(ctx context.Context, sym string, ticks []Tick) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	n, err := d.insertBatch(ctx, sym, ticks)
	if isNoSuchTable(err) {
		d.forget(sym)
		if err = d.createTable(ctx, sym); err == nil {
			n, err = d.insertBatch(ctx, sym, ticks)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("insert batch into %s: %w", tableName(sym), err)
	}
	return n, nil
}

func (d *DB) insertBatch(ctx context.Context, sym string, ticks []Tick) (int, error) {
	tx, err := d.conn.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx,
		`INSERT OR IGNORE INTO `+quoteIdent(tableName(sym))+` (id, timestamp, price) VALUES (?, ?, ?)`)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	added := 0
	for _, t := range ticks {
		res, err := st.ExecContext(ctx, t.ID, t.Timestamp, t.Price)
		if err != nil {
			return 0, err
		}
		n, _ := res.RowsAffected()
		added += int(n)
	}
	return added, tx.Commit()
}

// forget drops the cached statement of sym, which refers to a table that is gone.
func (d *DB) forget(sym string) {
	if st, ok := d.inserts[sym]; ok {
		st.Close()
		delete(d.inserts, sym)
	}
}

// MaxID returns the highest stored trade id of sym, 0 if there is none or the
// table does not exist.
func (d *DB) MaxID(ctx context.Context, sym string) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var id sql.NullInt64
	err := d.conn.QueryRowContext(ctx, `SELECT MAX(id) FROM `+quoteIdent(tableName(sym))).Scan(&id)
	if isNoSuchTable(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("max id of %s: %w", tableName(sym), err)
	}
	return id.Int64, nil
}

// Range returns the trade times (Unix ms) of the first and last stored tick of
// sym; ok is false when the table is empty or missing. Each bound is one
// lookup in the timestamp index, whatever the size of the table.
func (d *DB) Range(ctx context.Context, sym string) (first, last int64, ok bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var lo, hi sql.NullInt64
	err = d.conn.QueryRowContext(ctx, rangeQuery(sym)).Scan(&lo, &hi)
	if isNoSuchTable(err) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, fmt.Errorf("range of %s: %w", tableName(sym), err)
	}
	return lo.Int64, hi.Int64, lo.Valid && hi.Valid, nil
}

// rangeQuery asks for MIN and MAX as two subqueries: each is a single index
// seek, while MIN and MAX in one SELECT scan the whole table.
func rangeQuery(sym string) string {
	t := quoteIdent(tableName(sym))
	return `SELECT (SELECT MIN(timestamp) FROM ` + t + `), (SELECT MAX(timestamp) FROM ` + t + `)`
}

// auditChunk is how many ids Holes reads under one hold of the lock, so
// that live writes wait milliseconds, not seconds.
const auditChunk = 50_000

// Hole is a range of ids missing between two stored ones, both ends
// included, with the trade times of the stored ticks around it.
type Hole struct {
	From, To      int64
	After, Before int64 // Unix ms
}

// Holes walks the ids of sym stored at or after the trade time since (Unix
// ms), up to maxID, and returns the ranges missing between them. It reads in
// chunks, releasing the lock between them.
func (d *DB) Holes(ctx context.Context, sym string, since, maxID int64) ([]Hole, error) {
	t := quoteIdent(tableName(sym))
	var from sql.NullInt64
	err := d.scanRow(ctx, `SELECT id FROM `+t+` WHERE timestamp >= ? ORDER BY timestamp LIMIT 1`, []any{since}, &from)
	if isNoSuchTable(err) || errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit %s: %w", tableName(sym), err)
	}
	// Each chunk ends with the first id of the next, so holes across the
	// boundary are seen.
	q := `SELECT id, timestamp, nid, nts FROM (
	    SELECT id, timestamp, LEAD(id) OVER w AS nid, LEAD(timestamp) OVER w AS nts
	    FROM (SELECT id, timestamp FROM ` + t + ` WHERE id >= ? AND id <= ? ORDER BY id LIMIT ?)
	    WINDOW w AS (ORDER BY id))
	WHERE nid > id + 1 OR nid IS NULL`
	var holes []Hole
	for start := from.Int64; ; {
		found, last, err := d.holeChunk(ctx, q, start, maxID)
		if err != nil {
			return nil, fmt.Errorf("audit %s: %w", tableName(sym), err)
		}
		holes = append(holes, found...)
		if last == start || last >= maxID {
			return holes, nil
		}
		start = last
	}
}

// holeChunk reads one chunk from start and returns its holes and its last id.
func (d *DB) holeChunk(ctx context.Context, q string, start, maxID int64) ([]Hole, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rows, err := d.conn.QueryContext(ctx, q, start, maxID, d.chunk+1)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var holes []Hole
	last := start
	for rows.Next() {
		var id, ts int64
		var nid, nts sql.NullInt64
		if err := rows.Scan(&id, &ts, &nid, &nts); err != nil {
			return nil, 0, err
		}
		if !nid.Valid {
			last = id
			continue
		}
		holes = append(holes, Hole{From: id + 1, To: nid.Int64 - 1, After: ts, Before: nts.Int64})
	}
	return holes, last, rows.Err()
}

func (d *DB) scanRow(ctx context.Context, q string, args []any, dest ...any) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn.QueryRowContext(ctx, q, args...).Scan(dest...)
}

// TableSymbols returns the symbols that have a prices table, sorted by name,
// whether or not they are still in symbol_settings.
func (d *DB) TableSymbols(ctx context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rows, err := d.conn.QueryContext(ctx,
		`SELECT substr(name, 8) FROM sqlite_schema WHERE type = 'table' AND name LIKE 'prices\_%' ESCAPE '\' ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list prices tables: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("list prices tables: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list prices tables: %w", err)
	}
	return out, nil
}

func tableName(sym string) string { return "prices_" + sym }

// quoteIdent is the only way an identifier enters SQL: as a double-quoted
// identifier with embedded quotes doubled.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func isNoSuchTable(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_ERROR &&
		strings.Contains(se.Error(), "no such table")
}

// IsBusy reports whether err is SQLite's "database is locked" (another
// program held a lock for longer than the busy timeout).
func IsBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// Ticks returns the stored ticks of sym with id >= fromID, in id order; none
// if the table does not exist. It reads the whole range at once: meant for
// checks and tools, not for big exports.
func (d *DB) Ticks(ctx context.Context, sym string, fromID int64) ([]Tick, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rows, err := d.conn.QueryContext(ctx,
		`SELECT id, timestamp, price FROM `+quoteIdent(tableName(sym))+` WHERE id >= ? ORDER BY id`, fromID)
	if isNoSuchTable(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", tableName(sym), err)
	}
	defer rows.Close()
	var out []Tick
	for rows.Next() {
		var t Tick
		if err := rows.Scan(&t.ID, &t.Timestamp, &t.Price); err != nil {
			return nil, fmt.Errorf("read %s: %w", tableName(sym), err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
