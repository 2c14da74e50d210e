package database

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
)

// The benchmarks below measure one live tick's write against the limit of
// the design: a bare loop through database/sql and modernc.org/sqlite with
// the DSN pragmas and DDL of Open and createTable, one row per commit. Run
// them side by side (the machine is shared, only ratios within one run
// mean much):
//
//	go test -run '^$' -bench . -benchtime 2s ./internal/database/

// benchTick is the i-th tick of a busy symbol: ids and times ascending, as
// the stream delivers them, and a price with cents so that it is stored as an
// 8-byte REAL, not as a small integer.
func benchTick(i int) Tick {
	return Tick{
		ID:        3_400_000_000 + int64(i),
		Timestamp: 1_780_000_000_000 + int64(i)*7,
		Price:     83_000 + float64(i%10_000)/100 + 0.01,
	}
}

// bareOpen opens a fresh file with Open's DSN (or a variant of it) on a
// single connection, and creates one prices table with the given primary
// key clause.
func bareOpen(b *testing.B, pk string, variant func(dsn string) string) (*sql.DB, *sql.Conn) {
	b.Helper()
	dsn := DSN(filepath.Join(b.TempDir(), "bare.db"))
	if variant != nil {
		dsn = variant(dsn)
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	b.Cleanup(func() { db.Close() })
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	ddl := `CREATE TABLE "prices_BTCUSDT" (
    id        INTEGER PRIMARY KEY` + pk + `,
    timestamp INTEGER NOT NULL,
    price     REAL NOT NULL
);
CREATE INDEX "idx_prices_BTCUSDT_timestamp" ON "prices_BTCUSDT"(timestamp)`
	if _, err := conn.ExecContext(ctx, ddl); err != nil {
		b.Fatal(err)
	}
	return db, conn
}

// benchBare inserts one row per commit (autocommit) with a prepared
// statement, the fastest way to store ticks one commit each.
func benchBare(b *testing.B, pk, verb string, variant func(string) string) {
	_, conn := bareOpen(b, pk, variant)
	ctx := context.Background()
	st, err := conn.PrepareContext(ctx, verb+` INTO "prices_BTCUSDT" (id, timestamp, price) VALUES (?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		t := benchTick(i)
		if _, err := st.ExecContext(ctx, t.ID, t.Timestamp, t.Price); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkBareInsert is the limit: plain INSERT, spec DDL (AUTOINCREMENT),
// one row per commit.
func BenchmarkBareInsert(b *testing.B) { benchBare(b, " AUTOINCREMENT", "INSERT", nil) }

// BenchmarkBareInsertOrIgnore is the limit with the verb the store uses.
func BenchmarkBareInsertOrIgnore(b *testing.B) {
	benchBare(b, " AUTOINCREMENT", "INSERT OR IGNORE", nil)
}

// BenchmarkBareInsertNoAutoincrement shows what AUTOINCREMENT costs: the same
// loop on a plain INTEGER PRIMARY KEY (no sqlite_sequence update per row).
func BenchmarkBareInsertNoAutoincrement(b *testing.B) { benchBare(b, "", "INSERT", nil) }

// BenchmarkBareInsertCheckpoint1k is the limit with SQLite's default WAL
// checkpoint every 1,000 pages instead of Open's 10,000: a live tick
// rewrites the same few pages, so a longer WAL copies fewer distinct pages
// (and fsyncs less) per row. It shows what that choice of Open buys.
func BenchmarkBareInsertCheckpoint1k(b *testing.B) {
	benchBare(b, " AUTOINCREMENT", "INSERT", func(dsn string) string {
		return strings.Replace(dsn, "wal_autocheckpoint(10000)", "wal_autocheckpoint(1000)", 1)
	})
}

func openBench(b *testing.B) *DB {
	b.Helper()
	db, err := Open(context.Background(), filepath.Join(b.TempDir(), "ticks.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if err := db.CreateTable(context.Background(), "BTCUSDT"); err != nil {
		b.Fatal(err)
	}
	return db
}

// BenchmarkInsert is the store's live write: (*DB).Insert, one commit per tick.
func BenchmarkInsert(b *testing.B) {
	db := openBench(b)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := db.Insert(ctx, "BTCUSDT", benchTick(i)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkInsertBatch is the backfill write: pages of 1000 ticks, one
// transaction each. The figure is per row (ns/row), not per page.
func BenchmarkInsertBatch(b *testing.B) {
	const page = 1000
	db := openBench(b)
	ctx := context.Background()
	ticks := make([]Tick, page)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		for k := range ticks {
			ticks[k] = benchTick(i*page + k)
		}
		n, err := db.InsertBatch(ctx, "BTCUSDT", ticks)
		if err != nil || n != page {
			b.Fatalf("InsertBatch = %d, %v; want %d", n, err, page)
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(i*page), "ns/row")
}
