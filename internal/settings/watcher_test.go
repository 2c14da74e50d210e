package settings

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"binance-symbol-tick-store/internal/database"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource serves settings rows set by the test, or an error.
type fakeSource struct {
	mu   sync.Mutex
	rows []database.Setting
	err  error
}

func (s *fakeSource) set(err error, rows ...database.Setting) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows, s.err = rows, err
}

func (s *fakeSource) Settings(context.Context) ([]database.Setting, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.rows), s.err
}

// streams counts live fake streams per symbol and remembers the most that
// were ever live at once for one symbol.
type streams struct {
	mu      sync.Mutex
	live    map[string]int
	started []string
	maxLive int
}

type fakeStream struct {
	s   *streams
	sym string
}

func (f fakeStream) Run(ctx context.Context) {
	f.s.mu.Lock()
	f.s.live[f.sym]++
	f.s.started = append(f.s.started, f.sym)
	f.s.maxLive = max(f.s.maxLive, f.s.live[f.sym])
	f.s.mu.Unlock()
	<-ctx.Done()
	f.s.mu.Lock()
	f.s.live[f.sym]--
	f.s.mu.Unlock()
}

func (f fakeStream) Connected() bool { return true }

func (s *streams) running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for sym, n := range s.live {
		if n > 0 {
			out = append(out, sym)
		}
	}
	slices.Sort(out)
	return out
}

func newWatcher(src Source) (*Watcher, *streams) {
	s := &streams{live: make(map[string]int)}
	w := New(src, func(sym string) Stream { return fakeStream{s, sym} }, time.Hour,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	return w, s
}

func on(sym string) database.Setting  { return database.Setting{Symbol: sym, Enabled: true} }
func off(sym string) database.Setting { return database.Setting{Symbol: sym, Enabled: false} }

// waitRunning polls until exactly the symbols want have a live stream: a
// stream's goroutine registers itself a moment after poll returns.
func waitRunning(t *testing.T, s *streams, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(s.running(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("running streams = %v, want %v", s.running(), want)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

func TestPollDiffs(t *testing.T) {
	src := &fakeSource{}
	w, s := newWatcher(src)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.stopAll() }()
	steps := []struct {
		name string
		rows []database.Setting
		want []string
	}{
		{"initial", []database.Setting{on("BTCUSDT"), on("ethusdt"), off("SOLUSDT")}, []string{"BTCUSDT", "ETHUSDT"}},
		{"enable one", []database.Setting{on("BTCUSDT"), on("ethusdt"), on("SOLUSDT")}, []string{"BTCUSDT", "ETHUSDT", "SOLUSDT"}},
		{"disable one", []database.Setting{off("BTCUSDT"), on("ethusdt"), on("SOLUSDT")}, []string{"ETHUSDT", "SOLUSDT"}},
		{"delete one", []database.Setting{off("BTCUSDT"), on("SOLUSDT")}, []string{"SOLUSDT"}},
		{"padded and lower case name is the same symbol", []database.Setting{on(" solusdt "), off("SOLUSDT")}, []string{"SOLUSDT"}},
		{"invalid names are ignored", []database.Setting{on(`X"; DROP TABLE symbol_settings;--`), on(""), on("BTC USDT"), on("SOLUSDT")}, []string{"SOLUSDT"}},
		{"unicode and quarterly", []database.Setting{on("币安人生usdt"), on("btcusdt_261225")}, []string{"BTCUSDT_261225", "币安人生USDT"}},
		{"empty table", nil, nil},
	}
	for _, step := range steps {
		src.set(nil, step.rows...)
		w.poll(ctx)
		waitRunning(t, s, step.want...)
	}
	if s.maxLive > 1 {
		t.Errorf("a symbol had %d streams at once", s.maxLive)
	}
}

func TestPollKeepsStreamsWhenSettingsUnreadable(t *testing.T) {
	src := &fakeSource{}
	w, s := newWatcher(src)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.stopAll() }()
	src.set(nil, on("BTCUSDT"))
	w.poll(ctx)
	waitRunning(t, s, "BTCUSDT")
	src.set(errors.New("database is locked"))
	w.poll(ctx)
	waitRunning(t, s, "BTCUSDT")
	if !w.Connected("BTCUSDT") || w.Connected("ETHUSDT") {
		t.Error("Connected() does not reflect the running streams")
	}
}

// TestFlapping toggles symbols between polls, many times, and checks that no
// symbol ever has two streams and the end state matches the table.
func TestFlapping(t *testing.T) {
	src := &fakeSource{}
	w, s := newWatcher(src)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.stopAll() }()
	syms := []string{"AUSDT", "BUSDT", "CUSDT", "DUSDT"}
	var want []string
	for i := range 500 {
		var rows []database.Setting
		want = want[:0]
		for j, sym := range syms {
			switch (i + j*3) % 4 { // each symbol cycles: enabled, disabled, deleted, enabled
			case 0, 3:
				rows = append(rows, on(sym))
				want = append(want, sym)
			case 1:
				rows = append(rows, off(sym))
			}
		}
		src.set(nil, rows...)
		w.poll(ctx)
	}
	waitRunning(t, s, want...)
	if s.maxLive != 1 {
		t.Errorf("at most %d streams per symbol at once, want 1", s.maxLive)
	}
}

func TestRunStopsEverythingOnCancel(t *testing.T) {
	src := &fakeSource{}
	src.set(nil, on("BTCUSDT"), on("ETHUSDT"))
	w, s := newWatcher(src)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	waitRunning(t, s, "BTCUSDT", "ETHUSDT")
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if got := s.running(); len(got) != 0 {
		t.Errorf("streams still running after Run returned: %v", got)
	}
}

func TestRunPollsEveryInterval(t *testing.T) {
	src := &fakeSource{}
	s := &streams{live: make(map[string]int)}
	w := New(src, func(sym string) Stream { return fakeStream{s, sym} }, 10*time.Millisecond,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitRunning(t, s)
	src.set(nil, on("BTCUSDT"))
	waitRunning(t, s, "BTCUSDT")
	src.set(nil, off("BTCUSDT"))
	waitRunning(t, s)
}
