package http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"binance-symbol-tick-store/internal/database"
)

// fakeDB serves fixed settings, tables and ranges.
type fakeDB struct {
	settings []database.Setting
	tables   []string
	ranges   map[string][2]string // symbol -> first, last (time.DateTime, UTC)
	err      error
}

func (f *fakeDB) Settings(context.Context) ([]database.Setting, error) { return f.settings, f.err }
func (f *fakeDB) TableSymbols(context.Context) ([]string, error)       { return f.tables, f.err }
func (f *fakeDB) Ping(context.Context) error                           { return f.err }

func (f *fakeDB) Range(_ context.Context, sym string) (int64, int64, bool, error) {
	r, ok := f.ranges[sym]
	if !ok {
		return 0, 0, false, f.err
	}
	return ms(r[0]), ms(r[1]), true, f.err
}

func ms(s string) int64 {
	t, err := time.Parse(time.DateTime, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func on(sym string) database.Setting  { return database.Setting{Symbol: sym, Enabled: true} }
func off(sym string) database.Setting { return database.Setting{Symbol: sym} }

type connected map[string]bool

func (c connected) Connected(sym string) bool { return c[sym] }

func newTestHandler(db *fakeDB, conns connected, uptime time.Duration) *Handler {
	now := time.Date(2024, 12, 21, 14, 30, 0, 0, time.UTC)
	return NewHandler(db, conns, now.Add(-uptime), func() time.Time { return now },
		slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
}

func get(t *testing.T, h http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

// TestStatusMatchesSpecExample renders the specification's own example.
func TestStatusMatchesSpecExample(t *testing.T) {
	db := &fakeDB{
		settings: []database.Setting{on("BTCUSDT"), on("ETHUSDT"), off("SOLUSDT"), on("ADAUSDT")},
		tables:   []string{"ADAUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"},
		ranges: map[string][2]string{
			"BTCUSDT": {"2024-01-15 08:32:01", "2024-12-21 14:23:45"},
			"ETHUSDT": {"2024-01-15 08:32:05", "2024-12-21 14:23:44"},
			"SOLUSDT": {"2024-03-01 12:00:00", "2024-06-15 18:30:22"},
		},
	}
	conns := connected{"BTCUSDT": true, "ETHUSDT": true, "SOLUSDT": true, "ADAUSDT": true}
	rec := get(t, newTestHandler(db, conns, 2*24*time.Hour+14*time.Hour+32*time.Minute+59*time.Second), "GET", "/status")
	want, err := os.ReadFile("testdata/status_spec.golden")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || rec.Body.String() != string(want) {
		t.Errorf("GET /status = %d\n%s\nwant 200\n%s", rec.Code, rec.Body, want)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
}

func TestStatusRows(t *testing.T) {
	db := &fakeDB{
		settings: []database.Setting{
			on("ethusdt"), off("ETHUSDT"), on("BTC\nUSDT  on  forged"), on("币安人生USDT"), on("BTCUSDT_261225"),
		},
		tables: []string{"BTCUSDT_261225", "ETHUSDT", "OLDUSDT", "bad name"},
		ranges: map[string][2]string{"OLDUSDT": {"2024-01-01 00:00:00", "2024-01-02 00:00:00"}},
	}
	conns := connected{"ETHUSDT": true, "BTCUSDT_261225": false, "币安人生USDT": true}
	got := get(t, newTestHandler(db, conns, 5*time.Minute), "GET", "/status").Body.String()
	want := `Binance Tick Store

Status:     running
Uptime:     5m

ETHUSDT                  on      (no data yet)
"BTC\nUSDT  on  forged"  off     (invalid symbol, ignored)
币安人生USDT             on      (no data yet)
BTCUSDT_261225           off     (no data yet)
OLDUSDT                  off     2024-01-01 00:00:00  ->  2024-01-02 00:00:00
`
	if got != want {
		t.Errorf("GET /status =\n%s\nwant\n%s", got, want)
	}
}

func TestFormatUptime(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0m"},
		{59 * time.Second, "0m"},
		{32 * time.Minute, "32m"},
		{14*time.Hour + 32*time.Minute, "14h 32m"},
		{14 * time.Hour, "14h 0m"},
		{2*24*time.Hour + 14*time.Hour + 32*time.Minute, "2d 14h 32m"},
		{2*24*time.Hour + 5*time.Minute, "2d 0h 5m"},
		{400 * 24 * time.Hour, "400d 0h 0m"},
	}
	for _, tt := range tests {
		if got := formatUptime(tt.d); got != tt.want {
			t.Errorf("formatUptime(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestRoutes(t *testing.T) {
	h := newTestHandler(&fakeDB{}, connected{}, 0)
	tests := []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/status", 200, "Status:     running"},
		{"HEAD", "/status", 200, ""},
		{"GET", "/healthz", 200, "ok\n"},
		{"POST", "/status", 405, ""},
		{"DELETE", "/healthz", 405, ""},
		{"GET", "/", 404, ""},
		{"GET", "/status/x", 404, ""},
		{"GET", "/debug/pprof/", 404, ""},
	}
	for _, tt := range tests {
		rec := get(t, h, tt.method, tt.path)
		if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.body) {
			t.Errorf("%s %s = %d %q, want %d containing %q", tt.method, tt.path, rec.Code, rec.Body, tt.code, tt.body)
		}
	}
}

func TestDatabaseErrors(t *testing.T) {
	h := newTestHandler(&fakeDB{err: errors.New("disk I/O error")}, connected{}, 0)
	if rec := get(t, h, "GET", "/healthz"); rec.Code != 503 || !strings.Contains(rec.Body.String(), "disk I/O error") {
		t.Errorf("GET /healthz with a broken database = %d %q, want 503 naming the error", rec.Code, rec.Body)
	}
	if rec := get(t, h, "GET", "/status"); rec.Code != 500 || !strings.HasPrefix(rec.Body.String(), "Binance Tick Store\n\nStatus:     error") {
		t.Errorf("GET /status with a broken database = %d %q", rec.Code, rec.Body)
	}
}

// TestStatusManySymbols renders 200 symbols of mixed widths and scripts:
// every state column starts at the same terminal column.
func TestStatusManySymbols(t *testing.T) {
	db := &fakeDB{ranges: map[string][2]string{}}
	conns := connected{}
	for i := range 200 {
		sym := fmt.Sprintf("S%dUSDT", i)
		switch i % 4 {
		case 1:
			sym = fmt.Sprintf("BTCUSDT_26%04d", i)
		case 2:
			sym = fmt.Sprintf("币安人生%dUSDT", i)
		case 3:
			sym = fmt.Sprintf("1000PEPE%dUSDT", i)
		}
		db.settings = append(db.settings, on(sym))
		conns[sym] = i%3 == 0
		if i%2 == 0 {
			db.ranges[sym] = [2]string{"2024-01-15 08:32:01", "2024-12-21 14:23:45"}
		}
	}
	page := get(t, newTestHandler(db, conns, time.Hour), "GET", "/status").Body.String()
	lines := strings.Split(strings.TrimSuffix(page, "\n"), "\n")[5:]
	if len(lines) != 200 {
		t.Fatalf("%d symbol lines, want 200", len(lines))
	}
	col := -1
	for _, l := range lines {
		i := strings.Index(l, " on ")
		if i < 0 {
			i = strings.Index(l, " off ")
		}
		w := columns(l[:i+1])
		if col == -1 {
			col = w
		}
		if w != col {
			t.Errorf("state column at %d, want %d: %q", w, col, l)
		}
	}
}

// columns is the test's own count of terminal columns: CJK ideographs take
// two, everything else here one.
func columns(s string) int {
	n := 0
	for _, r := range s {
		n++
		if r >= 0x4E00 && r <= 0x9FFF {
			n++
		}
	}
	return n
}
