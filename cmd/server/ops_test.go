package main

import (
	"database/sql"
	"encoding/csv"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"binance-symbol-tick-store/internal/testutil"
)

// makeOps runs a Makefile target of the operator's toolbox against the
// fixture's database, the way a user would, and returns its output.
func (f *fixture) makeOps(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-s", "-C", "../.."}, args...)...)
	cmd.Env = append(os.Environ(), "DB_PATH="+f.dbPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestOperatorTargets manages symbols, takes a backup and exports a day with
// the make targets while the store runs, and checks each against the data.
func TestOperatorTargets(t *testing.T) {
	for _, tool := range []string{"make", "sqlite3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (.ci/run installs it)", tool)
		}
	}
	f := newFixture(t, "BTCUSDT", "ETHUSDT")
	port := f.runInProcess(t)
	statusLine := func(sym string) string {
		return regexp.MustCompile(`(?m)^` + sym + ` +(on|off) +.*$`).FindString(getStatus(t, port))
	}

	f.makeOps(t, "symbol-add", "SYMBOL= btcusdt ")
	f.makeOps(t, "symbol-add", "SYMBOL=ETHUSDT")
	f.makeOps(t, "symbol-add", "SYMBOL=BTCUSDT") // again: no second row
	if got, want := f.makeOps(t, "symbols"), "BTCUSDT  enabled\nETHUSDT  enabled\n"; got != want {
		t.Errorf("make symbols = %q, want %q", got, want)
	}
	testutil.WaitFor(t, "both streams", func() bool { return f.x.Subscribers("BTCUSDT") == 1 && f.x.Subscribers("ETHUSDT") == 1 })
	testutil.WaitFor(t, "status on", func() bool { return strings.Contains(statusLine("ETHUSDT"), " on ") })

	f.makeOps(t, "symbol-disable", "SYMBOL=ethusdt")
	testutil.WaitFor(t, "ETHUSDT to stop", func() bool { return f.x.Subscribers("ETHUSDT") == 0 })
	testutil.WaitFor(t, "status off", func() bool { return strings.Contains(statusLine("ETHUSDT"), " off ") })
	f.makeOps(t, "symbol-enable", "SYMBOL=ETHUSDT")
	testutil.WaitFor(t, "ETHUSDT to resume", func() bool { return f.x.Subscribers("ETHUSDT") == 1 })
	f.makeOps(t, "symbol-remove", "SYMBOL=ETHUSDT")
	testutil.WaitFor(t, "ETHUSDT to stop again", func() bool { return f.x.Subscribers("ETHUSDT") == 0 })

	// Trades over two UTC days, then a backup and an export of one day.
	f.x.Publish("BTCUSDT", 300)
	db := f.sqlite(t)
	testutil.WaitFor(t, "ticks stored", func() bool { return len(stored(t, db, "BTCUSDT")) == 300 })
	backup := filepath.Join(t.TempDir(), "backup.db")
	f.makeOps(t, "backup", "OUT="+backup)
	copyDB, err := sql.Open("sqlite", backup+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer copyDB.Close()
	if err := sameTrades(stored(t, copyDB, "BTCUSDT"), f.x.Trades("BTCUSDT")); err != nil {
		t.Errorf("backup: %v", err)
	}
	var check string
	copyDB.QueryRow(`PRAGMA integrity_check`).Scan(&check)
	if check != "ok" {
		t.Errorf("backup integrity_check = %q", check)
	}

	day := time.UnixMilli(f.x.Trades("BTCUSDT")[0].Time).UTC().Format(time.DateOnly)
	out := filepath.Join(t.TempDir(), "day.csv")
	f.makeOps(t, "export", "SYMBOL=btcusdt", "DAY="+day, "OUT="+out)
	b, _ := os.ReadFile(out)
	rows, err := csv.NewReader(strings.NewReader(string(b))).ReadAll()
	if err != nil || len(rows) < 2 || strings.Join(rows[0], ",") != "id,timestamp,utc,price" {
		t.Fatalf("export: %v\n%s", err, b)
	}
	n := 0
	for _, tr := range f.x.Trades("BTCUSDT") {
		if time.UnixMilli(tr.Time).UTC().Format(time.DateOnly) == day {
			n++
			if row := rows[n]; row[0] != strconv.FormatInt(tr.ID, 10) || row[1] != strconv.FormatInt(tr.Time, 10) {
				t.Errorf("export row %d = %v, want id %d time %d", n, row, tr.ID, tr.Time)
			}
		}
	}
	if len(rows)-1 != n {
		t.Errorf("export has %d rows, want the %d trades of %s", len(rows)-1, n, day)
	}
}
