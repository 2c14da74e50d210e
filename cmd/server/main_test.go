package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"binance-symbol-tick-store/internal/fakebinance"
	"binance-symbol-tick-store/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var addrRE = regexp.MustCompile(`http_addr=\S*:(\d+)`)

// fixture is a fake exchange and the environment that points the store at it.
type fixture struct {
	x      *fakebinance.Exchange
	dbPath string
	env    map[string]string
}

func newFixture(t *testing.T, symbols ...string) *fixture {
	t.Helper()
	x := fakebinance.New(fakebinance.Options{})
	x.List(symbols...)
	srv := httptest.NewServer(x)
	t.Cleanup(func() { x.Close(); srv.Close() })
	dbPath := filepath.Join(t.TempDir(), "data", "ticks.db")
	return &fixture{x: x, dbPath: dbPath, env: map[string]string{
		"DB_PATH":                dbPath,
		"HTTP_PORT":              "0",
		"BINANCE_WS_URL":         "ws" + strings.TrimPrefix(srv.URL, "http") + "/market/ws",
		"BINANCE_REST_URL":       srv.URL,
		"SETTINGS_POLL_INTERVAL": "200ms",
		"LOG_LEVEL":              "debug",
	}}
}

// runInProcess starts the store in this process with the fixture's
// environment and returns the port it serves on. It stops with the test.
func (f *fixture) runInProcess(t *testing.T) (port string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var logs testutil.SyncBuffer
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, func(k string) string { return f.env[k] }, &logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("run returned %v", err)
		}
	})
	testutil.WaitFor(t, "the store to listen", func() bool {
		m := addrRE.FindStringSubmatch(logs.String())
		if m != nil {
			port = m[1]
		}
		return m != nil
	})
	return port
}

// sqlite opens the store's file the way a user's sqlite3 shell would.
func (f *fixture) sqlite(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", f.dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func exec1(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// stored returns the rows of one prices table, or nil if it does not exist.
func stored(t *testing.T, db *sql.DB, sym string) []fakebinance.Trade {
	t.Helper()
	rows, err := db.Query(fmt.Sprintf(`SELECT id, timestamp, price FROM "prices_%s" ORDER BY id`, sym))
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []fakebinance.Trade
	for rows.Next() {
		var tr fakebinance.Trade
		var price float64
		if err := rows.Scan(&tr.ID, &tr.Time, &price); err != nil {
			t.Fatal(err)
		}
		tr.Price = strconv.FormatFloat(price, 'f', -1, 64)
		out = append(out, tr)
	}
	return out
}

// sameTrades reports whether the stored rows are exactly the generated trades.
func sameTrades(got, want []fakebinance.Trade) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d rows stored, want %d", len(got), len(want))
	}
	for i := range want {
		p, _ := strconv.ParseFloat(want[i].Price, 64)
		if got[i].ID != want[i].ID || got[i].Time != want[i].Time || got[i].Price != strconv.FormatFloat(p, 'f', -1, 64) {
			return fmt.Errorf("row %d = %+v, want id %d time %d price %s", i, got[i], want[i].ID, want[i].Time, want[i].Price)
		}
	}
	return nil
}

func getStatus(t *testing.T, port string) string {
	t.Helper()
	return get(t, port, "/status")
}

func get(t *testing.T, port, path string) string {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + port + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestEndToEnd runs the store in-process against the fake exchange and
// drives it only through SQL, as a user would.
func TestEndToEnd(t *testing.T) {
	syms := []string{"BTCUSDT", "ETHUSDT", "币安人生USDT", "BTCUSDT_261225"}
	f := newFixture(t, syms...)
	port := f.runInProcess(t)

	db := f.sqlite(t)
	exec1(t, db, `INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT'), ('ethusdt'), (' 币安人生usdt '), ('BTCUSDT_261225'),
		('X"; DROP TABLE symbol_settings;--'), ('NOTLISTED')`)
	for _, s := range syms {
		testutil.WaitFor(t, s+" subscribed", func() bool { return f.x.Subscribers(s) == 1 })
	}
	for _, s := range syms {
		f.x.Publish(s, 50)
	}
	for _, s := range syms {
		testutil.WaitFor(t, s+" stored", func() bool { return len(stored(t, db, s)) == 50 })
		if err := sameTrades(stored(t, db, s), f.x.Trades(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	var tables string
	db.QueryRow(`SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name)`).Scan(&tables)
	if want := "prices_BTCUSDT,prices_BTCUSDT_261225,prices_ETHUSDT,prices_NOTLISTED,prices_币安人生USDT,sqlite_sequence,symbol_settings"; tables != want {
		t.Errorf("tables = %s\nwant %s", tables, want)
	}
	for _, a := range f.x.Attempts() {
		stream, ok := strings.CutPrefix(a.Path, "/market/ws/")
		if name, _, _ := strings.Cut(stream, "@"); !ok || strings.ToLower(name) != name || !strings.HasSuffix(stream, "@aggTrade") {
			t.Errorf("connected to %q: want only lower-case streams on the /market route", a.Path)
		}
	}

	page := getStatus(t, port)
	for _, line := range []string{`\nBTCUSDT +on +20\d\d-`, `\nNOTLISTED +on +\(no data yet\)\n`, `\n"X\\"; DROP TABLE symbol_settings;--" +off +\(invalid`} {
		if !regexp.MustCompile(line).MatchString(page) {
			t.Errorf("status page does not match %q:\n%s", line, page)
		}
	}

	metrics := get(t, port, "/metrics")
	for _, re := range []string{`(?m)^tickstore_ticks_stored_total\{symbol="BTCUSDT"\} 50$`, `(?m)^tickstore_connected\{symbol="ETHUSDT"\} 1$`,
		`(?m)^tickstore_ws_connection_attempts_total 5$`, `(?m)^tickstore_db_write_seconds_count 200$`, `(?m)^go_goroutines `} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("metrics page does not match %s", re)
		}
	}

	// Disable, delete: the stream stops within a poll.
	exec1(t, db, `UPDATE symbol_settings SET enabled = 0 WHERE symbol = 'ethusdt'`)
	exec1(t, db, `DELETE FROM symbol_settings WHERE symbol = 'BTCUSDT_261225'`)
	testutil.WaitFor(t, "disabled and deleted streams to stop", func() bool {
		return f.x.Subscribers("ETHUSDT") == 0 && f.x.Subscribers("BTCUSDT_261225") == 0
	})
	if page := getStatus(t, port); !regexp.MustCompile(`\nETHUSDT +off +20`).MatchString(page) {
		t.Errorf("status page does not show ETHUSDT off:\n%s", page)
	}

	// A drop without a close frame is redialled and storage continues.
	f.x.Drop("BTCUSDT")
	testutil.WaitFor(t, "BTCUSDT to reconnect", func() bool { return f.x.Subscribers("BTCUSDT") == 1 })
	f.x.Publish("BTCUSDT", 10)
	testutil.WaitFor(t, "BTCUSDT trades after the reconnect", func() bool { return len(stored(t, db, "BTCUSDT")) == 60 })
	if err := sameTrades(stored(t, db, "BTCUSDT"), f.x.Trades("BTCUSDT")); err != nil {
		t.Error(err)
	}
}

// buildServer compiles the real binary once per test run.
func buildServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "server")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func (f *fixture) command(bin string) *exec.Cmd {
	cmd := exec.Command(bin)
	cmd.Env = os.Environ()
	for k, v := range f.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// TestBinary runs the compiled server: bad configuration exits 1 with one
// line, and SIGTERM while trades flow exits 0 within 10 s with the database
// closed cleanly.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildServer(t)
	f := newFixture(t, "BTCUSDT")

	for name, value := range map[string]string{"HTTP_PORT": "abc", "SETTINGS_POLL_INTERVAL": "soon"} {
		cmd := f.command(bin)
		cmd.Env = append(cmd.Env, name+"="+value)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Errorf("%s=%s: exit %v, want 1", name, value, err)
		}
		if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], name) {
			t.Errorf("%s=%s: output %q, want one line naming the variable", name, value, out)
		}
	}

	db := f.sqlite(t)
	cmd := f.command(bin)
	var logs testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	testutil.WaitFor(t, "start-up", func() bool { return strings.Contains(logs.String(), `msg="tick store started"`) })
	exec1(t, db, `INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT')`)
	testutil.WaitFor(t, "subscribed", func() bool { return f.x.Subscribers("BTCUSDT") == 1 })
	stop := make(chan struct{})
	go func() { // trades keep flowing while the store stops
		for {
			select {
			case <-stop:
				return
			default:
				f.x.Publish("BTCUSDT", 1)
			}
		}
	}()
	testutil.WaitFor(t, "ticks stored", func() bool { return len(stored(t, db, "BTCUSDT")) > 100 })
	db.Close() // a reader left open would keep the WAL file alive

	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		close(stop)
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		close(stop)
		cmd.Process.Kill()
		<-done
		t.Fatalf("still running 10 s after SIGTERM\n%s", logs.String())
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(logs.String(), `msg="tick store stopped"`) {
		t.Errorf("no clean stop in the log:\n%s", logs.String())
	}
	if _, err := os.Stat(f.dbPath + "-wal"); err == nil {
		t.Errorf("%s-wal left behind: the database was not closed cleanly", f.dbPath)
	}
}
