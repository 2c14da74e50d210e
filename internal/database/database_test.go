package database

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openTest(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sub", "dir", "ticks.db")
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

// rawOpen opens a second, independent connection to the file, as another
// program (the sqlite3 shell) would.
func rawOpen(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestOpenPragmas(t *testing.T) {
	db, _ := openTest(t)
	ctx := context.Background()
	for pragma, want := range map[string]string{"journal_mode": "wal", "synchronous": "1", "busy_timeout": "5000"} {
		var got string
		if err := db.conn.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %q, want %q", pragma, got, want)
		}
	}
}

func TestOpenRejectsGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ticks.db")
	garbage := []byte(strings.Repeat("this is not a database ", 500))
	if err := os.WriteFile(path, garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	if db, err := Open(context.Background(), path); err == nil {
		db.Close()
		t.Fatal("Open(garbage) succeeded, want an error")
	}
	after, err := os.ReadFile(path)
	if err != nil || string(after) != string(garbage) {
		t.Errorf("Open(garbage) changed the file (err %v)", err)
	}
}

func TestSchemaIsTheSpecs(t *testing.T) {
	db, _ := openTest(t)
	ctx := context.Background()
	if err := db.CreateTable(ctx, "BTCUSDT"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"symbol_settings": "CREATE TABLE symbol_settings (\n    symbol  TEXT PRIMARY KEY,\n    enabled INTEGER DEFAULT 1\n)",
		"prices_BTCUSDT": "CREATE TABLE \"prices_BTCUSDT\" (\n    id        INTEGER PRIMARY KEY AUTOINCREMENT,\n" +
			"    timestamp INTEGER NOT NULL,\n    price     REAL NOT NULL\n)",
		"idx_prices_BTCUSDT_timestamp": "CREATE INDEX \"idx_prices_BTCUSDT_timestamp\" ON \"prices_BTCUSDT\"(timestamp)",
	}
	for name, ddl := range want {
		var got string
		err := db.conn.QueryRowContext(ctx, "SELECT sql FROM sqlite_schema WHERE name = ?", name).Scan(&got)
		if err != nil || got != ddl {
			t.Errorf("schema of %s = %q, %v\nwant %q", name, got, err, ddl)
		}
	}
}

func TestInsertIsIdempotent(t *testing.T) {
	db, _ := openTest(t)
	ctx := context.Background()
	ticks := []Tick{{3477868380, 1791382990569, 83084.3}, {3477868381, 1791382990794, 83084.4}, {3477868382, 1791382990860, 83084.3}}
	for range 2 {
		for _, tk := range ticks {
			if err := db.Insert(ctx, "BTCUSDT", tk); err != nil {
				t.Fatalf("Insert(%+v): %v", tk, err)
			}
		}
	}
	// A redelivery with another price does not overwrite the first.
	if err := db.Insert(ctx, "BTCUSDT", Tick{3477868380, 1, 1}); err != nil {
		t.Fatal(err)
	}
	got, _ := db.Ticks(ctx, "BTCUSDT", 0)
	if len(got) != len(ticks) {
		t.Fatalf("stored %d rows, want %d: %+v", len(got), len(ticks), got)
	}
	for i := range ticks {
		if got[i] != ticks[i] {
			t.Errorf("row %d = %+v, want %+v", i, got[i], ticks[i])
		}
	}
	if id, err := db.MaxID(ctx, "BTCUSDT"); err != nil || id != 3477868382 {
		t.Errorf("MaxID = %d, %v; want 3477868382", id, err)
	}
	if id, err := db.MaxID(ctx, "NOTABLE"); err != nil || id != 0 {
		t.Errorf("MaxID(no table) = %d, %v; want 0, nil", id, err)
	}
}

func TestInsertRecreatesDroppedTable(t *testing.T) {
	db, path := openTest(t)
	ctx := context.Background()
	if err := db.Insert(ctx, "ETHUSDT", Tick{1, 10, 2000}); err != nil {
		t.Fatal(err)
	}
	if _, err := rawOpen(t, path).Exec(`DROP TABLE prices_ETHUSDT`); err != nil {
		t.Fatal(err)
	}
	if err := db.Insert(ctx, "ETHUSDT", Tick{2, 20, 2001}); err != nil {
		t.Fatalf("Insert after DROP TABLE: %v", err)
	}
	if got, _ := db.Ticks(ctx, "ETHUSDT", 0); len(got) != 1 || got[0] != (Tick{2, 20, 2001}) {
		t.Errorf("after recreation the table holds %+v, want the one new tick", got)
	}
	var n int
	db.conn.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE name = 'idx_prices_ETHUSDT_timestamp'`).Scan(&n)
	if n != 1 {
		t.Error("the timestamp index was not recreated")
	}
}

func TestHostileSymbolsStayIdentifiers(t *testing.T) {
	// The symbol package refuses these long before; the quoting must hold anyway.
	db, _ := openTest(t)
	ctx := context.Background()
	hostile := `X"; DROP TABLE symbol_settings;--`
	if err := db.Insert(ctx, hostile, Tick{1, 2, 3}); err != nil {
		t.Fatalf("Insert(%q): %v", hostile, err)
	}
	if _, err := db.Settings(ctx); err != nil {
		t.Errorf("symbol_settings damaged: %v", err)
	}
	if got, _ := db.Ticks(ctx, hostile, 0); len(got) != 1 {
		t.Errorf("table %q holds %d rows, want 1", tableName(hostile), len(got))
	}
}

func TestSettings(t *testing.T) {
	db, path := openTest(t)
	ctx := context.Background()
	other := rawOpen(t, path)
	_, err := other.Exec(`INSERT INTO symbol_settings (symbol) VALUES ('ethusdt');
		INSERT INTO symbol_settings (symbol, enabled) VALUES ('BTCUSDT', 0);
		INSERT INTO symbol_settings (symbol, enabled) VALUES ('SOLUSDT', '1');
		INSERT INTO symbol_settings (symbol, enabled) VALUES ('ADAUSDT', NULL);
		INSERT INTO symbol_settings (symbol, enabled) VALUES (NULL, 1);
		INSERT INTO symbol_settings (symbol, enabled) VALUES ('XRPUSDT', 'yes');`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := db.Settings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []Setting{{Symbol: "ethusdt", Enabled: true}, {Symbol: "BTCUSDT"}, {Symbol: "SOLUSDT", Enabled: true}, {Symbol: "ADAUSDT"}, {Symbol: "", Enabled: true}, {Symbol: "XRPUSDT"}}
	if len(got) != len(want) {
		t.Fatalf("Settings() = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Settings()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}

	if _, err := other.Exec(`DROP TABLE symbol_settings`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Settings(ctx); err == nil || !strings.Contains(err.Error(), "recreated") {
		t.Errorf("Settings() after DROP = %v, want an error saying it was recreated", err)
	}
	if got, err := db.Settings(ctx); err != nil || len(got) != 0 {
		t.Errorf("Settings() after recreation = %+v, %v; want empty", got, err)
	}
}

func TestRangeAndTables(t *testing.T) {
	db, _ := openTest(t)
	ctx := context.Background()
	if _, _, ok, err := db.Range(ctx, "BTCUSDT"); ok || err != nil {
		t.Errorf("Range(no table) = ok %v, %v; want false, nil", ok, err)
	}
	db.CreateTable(ctx, "BTCUSDT")
	if _, _, ok, err := db.Range(ctx, "BTCUSDT"); ok || err != nil {
		t.Errorf("Range(empty) = ok %v, %v; want false, nil", ok, err)
	}
	for _, tk := range []Tick{{5, 500, 1}, {3, 300, 1}, {9, 900, 1}} {
		db.Insert(ctx, "BTCUSDT", tk)
	}
	db.CreateTable(ctx, "币安人生USDT")
	first, last, ok, err := db.Range(ctx, "BTCUSDT")
	if first != 300 || last != 900 || !ok || err != nil {
		t.Errorf("Range = %d, %d, %v, %v; want 300, 900, true, nil", first, last, ok, err)
	}
	syms, err := db.TableSymbols(ctx)
	if err != nil || strings.Join(syms, ",") != "BTCUSDT,币安人生USDT" {
		t.Errorf("TableSymbols() = %q, %v", syms, err)
	}
}

// TestRangeUsesIndex guards the status page's speed on big tables: both
// bounds must be index seeks, never a scan of the table.
func TestRangeUsesIndex(t *testing.T) {
	db, _ := openTest(t)
	ctx := context.Background()
	db.CreateTable(ctx, "BTCUSDT")
	plan := queryPlan(t, db, rangeQuery("BTCUSDT"))
	if strings.Contains(plan, "SCAN prices_") || strings.Count(plan, "SEARCH prices_BTCUSDT USING COVERING INDEX idx_prices_BTCUSDT_timestamp") != 2 {
		t.Errorf("query plan of the range query:\n%s\nwant two searches of the timestamp index and no table scan", plan)
	}
	// The obvious query is the trap this guards against.
	if naive := queryPlan(t, db, `SELECT MIN(timestamp), MAX(timestamp) FROM prices_BTCUSDT`); !strings.Contains(naive, "SCAN prices_BTCUSDT") {
		t.Errorf("query plan of MIN and MAX in one SELECT:\n%s\nexpected a scan; has SQLite learned a new trick?", naive)
	}
}

func queryPlan(t *testing.T, db *DB, query string) string {
	t.Helper()
	rows, err := db.conn.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	return strings.Join(plan, "\n")
}
func TestInsertFailsWhileLockedAndRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 5 s busy timeout")
	}
	db, path := openTest(t)
	ctx := context.Background()
	db.CreateTable(ctx, "BTCUSDT")
	other := rawOpen(t, path)
	other.SetMaxOpenConns(1)
	tx, err := other.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO symbol_settings (symbol) VALUES ('LOCK')`); err != nil {
		t.Fatal(err)
	}
	err = db.Insert(ctx, "BTCUSDT", Tick{1, 2, 3})
	if !IsBusy(err) {
		t.Errorf("Insert while another program holds the write lock = %v, want SQLITE_BUSY", err)
	}
	tx.Rollback()
	if err := db.Insert(ctx, "BTCUSDT", Tick{2, 3, 4}); err != nil {
		t.Errorf("Insert after the lock is released: %v", err)
	}
}

func TestInsertBatch(t *testing.T) {
	db, path := openTest(t)
	ctx := context.Background()
	db.Insert(ctx, "BTCUSDT", Tick{2, 20, 2})
	n, err := db.InsertBatch(ctx, "BTCUSDT", []Tick{{1, 10, 1}, {2, 99, 99}, {3, 30, 3}})
	if n != 2 || err != nil {
		t.Errorf("InsertBatch = %d, %v; want 2 new rows", n, err)
	}
	got, _ := db.Ticks(ctx, "BTCUSDT", 0)
	if want := []Tick{{1, 10, 1}, {2, 20, 2}, {3, 30, 3}}; !slices.Equal(got, want) {
		t.Errorf("rows = %+v, want %+v", got, want)
	}
	if _, err := rawOpen(t, path).Exec(`DROP TABLE prices_BTCUSDT`); err != nil {
		t.Fatal(err)
	}
	if n, err := db.InsertBatch(ctx, "BTCUSDT", []Tick{{4, 40, 4}}); n != 1 || err != nil {
		t.Errorf("InsertBatch after DROP TABLE = %d, %v; want 1, nil", n, err)
	}
}

func TestHoles(t *testing.T) {
	db, _ := openTest(t)
	db.chunk = 500
	ctx := context.Background()
	var ticks []Tick
	// ids 1..2000 at 1 ms each, except 3 holes, one across a chunk boundary.
	missing := func(id int64) bool {
		return id >= 10 && id <= 12 || id >= 500 && id <= 502 || id == 1500
	}
	for id := int64(1); id <= 2000; id++ {
		if !missing(id) {
			ticks = append(ticks, Tick{id, 1000 + id, 1})
		}
	}
	if _, err := db.InsertBatch(ctx, "BTCUSDT", ticks); err != nil {
		t.Fatal(err)
	}
	got, err := db.Holes(ctx, "BTCUSDT", 0, 2000)
	want := []Hole{{10, 12, 1009, 1013}, {500, 502, 1499, 1503}, {1500, 1500, 2499, 2501}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("Holes(all) = %+v, %v\nwant %+v", got, err, want)
	}
	// Only ticks from the trade time 1000+1000 on, and ids up to 1500.
	got, err = db.Holes(ctx, "BTCUSDT", 1000+1000, 1500)
	if err != nil || len(got) != 0 {
		t.Errorf("Holes(since 1000, to 1500) = %+v, %v; want none (1501 is beyond maxID)", got, err)
	}
	got, err = db.Holes(ctx, "BTCUSDT", 1000+1000, 1501)
	if err != nil || !slices.Equal(got, want[2:]) {
		t.Errorf("Holes(since 1000) = %+v, %v; want %+v", got, err, want[2:])
	}
	if got, err := db.Holes(ctx, "NOTABLE", 0, 10); got != nil || err != nil {
		t.Errorf("Holes(no table) = %+v, %v", got, err)
	}
}
