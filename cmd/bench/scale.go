package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// generate writes a store file at path: symbol_settings with the symbols
// enabled, and rows ticks spread over their prices tables, with the store's
// DDL. Ids, times and prices look like a busy market's: ids near 3.4e9,
// times 37 ms apart ending more than 48 hours ago (so the store's start-up
// audit has nothing to walk), prices with cents. Rows go in id order, as
// live ticks do, in one transaction per table; the index is built after.
func generate(ctx context.Context, path string, syms []string, rows int64) error {
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS symbol_settings (
    symbol  TEXT PRIMARY KEY,
    enabled INTEGER DEFAULT 1
)`); err != nil {
		return err
	}
	per := rows / int64(len(syms))
	base := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	for _, s := range syms {
		if _, err := db.ExecContext(ctx, `INSERT INTO symbol_settings (symbol) VALUES (?)`, s); err != nil {
			return err
		}
		q := fmt.Sprintf(`BEGIN;
CREATE TABLE "prices_%[1]s" (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp INTEGER NOT NULL,
    price     REAL NOT NULL
);
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < %[2]d)
INSERT INTO "prices_%[1]s" (id, timestamp, price)
SELECT 3400000000 + i, %[3]d + i * 37, 60000 + (abs(random()) %% 4000000) / 100.0 FROM c;
CREATE INDEX "idx_prices_%[1]s_timestamp" ON "prices_%[1]s"(timestamp);
COMMIT`, s, per-1, base)
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("generate %s: %w", s, err)
		}
	}
	_, err = db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`)
	return err
}

// diskUse reports the bytes per stored tick of the file at path, from
// SQLite's dbstat table: pages of the prices tables and of their indexes.
func (b *bench) diskUse(ctx context.Context, prefix, path string, syms []string) error {
	db, err := openDB(path)
	if err != nil {
		return err
	}
	defer db.Close()
	var table, index, rows int64
	err = db.QueryRowContext(ctx, `SELECT
    coalesce(SUM(CASE WHEN name LIKE 'prices\_%' ESCAPE '\' THEN pgsize END), 0),
    coalesce(SUM(CASE WHEN name LIKE 'idx\_prices\_%' ESCAPE '\' THEN pgsize END), 0)
FROM dbstat`).Scan(&table, &index)
	if err != nil {
		return fmt.Errorf("dbstat: %w", err)
	}
	for _, s := range syms {
		var n int64
		if err := db.QueryRowContext(ctx, fmt.Sprintf(`SELECT count(*) FROM "prices_%s"`, s)).Scan(&n); err != nil {
			return err
		}
		rows += n
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	b.report(prefix+"_rows", rows, "ticks")
	b.report(prefix+"_table_bytes_per_tick", float64(table)/float64(rows), "B")
	b.report(prefix+"_index_bytes_per_tick", float64(index)/float64(rows), "B")
	b.report(prefix+"_bytes_per_tick", float64(table+index)/float64(rows), "B")
	b.report(prefix+"_file_bytes_per_tick", float64(fi.Size())/float64(rows), "B")
	return nil
}

func runDisk(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("disk", flag.ContinueOnError)
	fs.SetOutput(b.out)
	n := fs.Int("symbols", 100, "tables")
	rows := fs.Int64("rows", 10_000_000, "ticks in all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b.note("disk: %d ticks generated over %d tables", *rows, *n)
	syms := symbols(*n)
	path := tempPath(b, "disk")
	if err := generate(ctx, path, syms, *rows); err != nil {
		return err
	}
	return b.diskUse(ctx, "disk", path, syms)
}

// runStatus times GET /status on a server whose file holds 20 k rows, then
// on one with 20 M rows, 100 symbols each, all connected.
func runStatus(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(b.out)
	n := fs.Int("symbols", 100, "symbols")
	small := fs.Int64("small", 20_000, "rows of the small case")
	big := fs.Int64("big", 20_000_000, "rows of the big case")
	reqs := fs.Int("requests", 200, "requests per case")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b.note("status: %d symbols, %d requests at %d rows and at %d rows", *n, *reqs, *small, *big)
	syms := symbols(*n)
	var medians [2]time.Duration
	for i, rows := range []int64{*small, *big} {
		path := tempPath(b, fmt.Sprintf("status%d", i))
		t0 := time.Now()
		if err := generate(ctx, path, syms, rows); err != nil {
			return err
		}
		b.note("generated %d rows in %v", rows, time.Since(t0).Round(time.Second))
		name := fmt.Sprintf("status_%s", []string{"small", "big"}[i])
		m, err := b.timeStatus(ctx, name, path, syms, *reqs)
		if err != nil {
			return err
		}
		medians[i] = m
		if i == 1 {
			if err := b.diskUse(ctx, "disk", path, syms); err != nil {
				return err
			}
		}
		os.RemoveAll(filepath.Dir(path)) // 20 M rows are over 800 MB
	}
	b.report("status_ratio_big_to_small", float64(medians[1])/float64(medians[0]), "x")
	return nil
}

// timeStatus starts the server on path, waits until every symbol is
// connected and times reqs sequential requests.
func (b *bench) timeStatus(ctx context.Context, name, path string, syms []string, reqs int) (time.Duration, error) {
	x := startExchange(syms)
	defer x.close()
	s, err := b.startServer(ctx, x, path)
	if err != nil {
		return 0, err
	}
	defer s.stop()
	if err := x.waitSubscribed(ctx, syms, 1, 2*time.Minute); err != nil {
		return 0, err
	}
	url := "http://127.0.0.1:" + s.port + "/status"
	client := &http.Client{Timeout: 10 * time.Second}
	get := func() (string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GET /status: %s", resp.Status)
		}
		return string(body), err
	}
	page, err := get() // warm: page cache, statement cache
	if err != nil {
		return 0, err
	}
	if on := strings.Count(page, " on "); on != len(syms) {
		return 0, fmt.Errorf("status page shows %d symbols on, want %d:\n%s", on, len(syms), page)
	}
	lat := make([]time.Duration, 0, reqs)
	for range reqs {
		t0 := time.Now()
		if _, err := get(); err != nil {
			return 0, err
		}
		lat = append(lat, time.Since(t0))
	}
	b.report(name+"_p50", percentile(lat, 50), "ms")
	b.report(name+"_p90", percentile(lat, 90), "ms")
	b.report(name+"_max", percentile(lat, 100), "ms")
	return percentile(lat, 50), nil
}
