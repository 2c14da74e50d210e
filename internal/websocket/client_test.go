package websocket

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gorillaws "github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/fakebinance"
	"binance-symbol-tick-store/internal/rest"
	"binance-symbol-tick-store/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is one client streaming from a fake exchange into a real database.
type harness struct {
	t      *testing.T
	x      *fakebinance.Exchange
	srv    *httptest.Server
	opts   options
	db     *database.DB
	client *Client
	sleeps *sleepRecorder
	cancel context.CancelFunc
	done   chan struct{}
	stopFn func()
}

// sleepRecorder replaces the client's clock: it records each back-off delay
// and returns at once, so back-off tests take no time.
type sleepRecorder struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (s *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.delays = append(s.delays, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleepRecorder) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.delays...)
}

// unlimited is a REST budget that never waits.
type unlimited struct{}

func (unlimited) Take(context.Context, int) error { return nil }
func (unlimited) Observe(int)                     {}
func (unlimited) Block(time.Time)                 {}

// options adjust a harness before its client starts.
type options struct {
	fake    fakebinance.Options
	stale   time.Duration
	maxAge  time.Duration
	silence time.Duration
	route   string // default /market/ws
	dbPath  string // default a new file
	logs    io.Writer
	store   func(Store) Store
}

func startClient(t *testing.T, sym string, o options) *harness {
	t.Helper()
	x := fakebinance.New(o.fake)
	x.List(sym)
	srv := httptest.NewServer(x)
	t.Cleanup(func() { x.Close(); srv.Close() })
	h := &harness{t: t, x: x, srv: srv}
	h.start(sym, o)
	return h
}

// start runs a new client (a restart, when called again) against the
// harness's exchange.
func (h *harness) start(sym string, o options) {
	t := h.t
	t.Helper()
	if o.dbPath == "" {
		o.dbPath = filepath.Join(t.TempDir(), "ticks.db")
	}
	db, err := database.Open(context.Background(), o.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	var store Store = db
	if o.store != nil {
		store = o.store(db)
	}
	if o.logs == nil {
		o.logs = io.Discard
	}
	logger := slog.New(slog.NewTextHandler(o.logs, nil))
	h.db, h.sleeps, h.done, h.opts = db, &sleepRecorder{}, make(chan struct{}), o
	h.client = New(Config{
		Symbol:         sym,
		BaseURL:        "ws" + strings.TrimPrefix(h.srv.URL, "http") + cmp.Or(o.route, "/market/ws"),
		StaleTimeout:   cmp.Or(o.stale, time.Minute),
		MaxAge:         o.maxAge,
		SilenceTimeout: cmp.Or(o.silence, time.Hour),
		Store:          store,
		REST:           rest.New(h.srv.URL, unlimited{}, logger),
		Logger:         logger,
		Sleep:          h.sleeps.sleep,
	})
	var ctx context.Context
	ctx, h.cancel = context.WithCancel(context.Background())
	go func() {
		defer close(h.done)
		h.client.Run(ctx)
	}()
	stopped := false
	h.stopFn = func() {
		if !stopped {
			stopped = true
			h.cancel()
			<-h.done
			db.Close()
		}
	}
	t.Cleanup(h.stop)
}

func (h *harness) stop() { h.stopFn() }

func (h *harness) waitSubscribed(sym string) {
	h.t.Helper()
	testutil.WaitFor(h.t, sym+" subscribed", func() bool { return h.x.Subscribers(sym) == 1 && h.client.Connected() })
}

// waitStored waits until every trade the exchange generated is in the table
// and checks each row against the trade.
func (h *harness) waitStored(sym string) {
	h.t.Helper()
	want := h.x.Trades(sym)
	testutil.WaitFor(h.t, "all trades stored", func() bool {
		rows, _ := h.db.Ticks(context.Background(), sym, 0)
		return len(rows) >= len(want)
	})
	checkTable(h.t, h.db, sym, want)
}

func TestClientStoresEveryTrade(t *testing.T) {
	for _, sym := range []string{"BTCUSDT", "BTCUSDT_261225", "币安人生USDT", "1000PEPEUSDT"} {
		t.Run(sym, func(t *testing.T) {
			h := startClient(t, sym, options{})
			h.waitSubscribed(sym)
			h.x.Publish(sym, 200)
			h.waitStored(sym)
		})
	}
}

func TestClientURL(t *testing.T) {
	c := New(Config{Symbol: "币安人生USDT", BaseURL: "wss://fstream.binance.com/market/ws", Logger: slog.Default()})
	want := "wss://fstream.binance.com/market/ws/%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9Fusdt@aggTrade"
	if c.URL() != want {
		t.Errorf("URL() = %q, want %q", c.URL(), want)
	}
}

func TestClientAnswersPings(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{})
	h.waitSubscribed("BTCUSDT")
	h.x.PingNow("BTCUSDT")
	h.x.PingNow("BTCUSDT")
	testutil.WaitFor(t, "two pongs", func() bool { return h.x.Pongs("BTCUSDT") == 2 })
}

func TestClientSkipsBadFramesAndKeepsTheConnection(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{})
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 3)
	for _, f := range []string{`garbage`, `{"result":null,"id":1}`, `{"e":"aggTrade","a":1,"T":2,"p":"NaN"}`,
		`{"e":"markPriceUpdate"}`, strings.Repeat("[", 10000)} {
		h.x.SendRaw("BTCUSDT", []byte(f))
	}
	h.x.Publish("BTCUSDT", 3)
	h.waitStored("BTCUSDT")
	if n := len(h.x.Attempts()); n != 1 {
		t.Errorf("%d connection attempts, want 1: bad frames must not cost the connection", n)
	}
}

func TestClientReconnects(t *testing.T) {
	tests := []struct {
		name  string
		fault func(x *fakebinance.Exchange)
	}{
		{"drop without close frame", func(x *fakebinance.Exchange) { x.Drop("BTCUSDT") }},
		{"close 1001", func(x *fakebinance.Exchange) { x.CloseWith("BTCUSDT", 1001, "going away") }},
		{"close 1008", func(x *fakebinance.Exchange) { x.CloseWith("BTCUSDT", 1008, "Too many requests") }},
		{"stall", func(x *fakebinance.Exchange) { x.Stall("BTCUSDT") }},
		{"oversized frame", func(x *fakebinance.Exchange) { x.SendRaw("BTCUSDT", make([]byte, maxFrameBytes+1)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startClient(t, "BTCUSDT", options{stale: 300 * time.Millisecond, fake: fakebinance.Options{PingInterval: time.Hour}})
			h.waitSubscribed("BTCUSDT")
			h.x.Publish("BTCUSDT", 10)
			h.waitStored("BTCUSDT")
			tt.fault(h.x)
			testutil.WaitFor(t, "a second connection", func() bool { return len(h.x.Attempts()) == 2 && h.x.Subscribers("BTCUSDT") == 1 })
			h.x.Publish("BTCUSDT", 10)
			testutil.WaitFor(t, "trades after the reconnect", func() bool {
				id, _ := h.db.MaxID(context.Background(), "BTCUSDT")
				return id == h.x.Trades("BTCUSDT")[19].ID
			})
			// A connection that delivered is redialled at once.
			if got := h.sleeps.get(); len(got) != 1 || got[0] != 0 {
				t.Errorf("delays before redial = %v, want [0]", got)
			}
		})
	}
}

func TestClientBacksOff(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{})
	h.x.RefuseHandshakes(8)
	testutil.WaitFor(t, "ninth attempt", func() bool { return h.x.Subscribers("BTCUSDT") == 1 })
	s := time.Second
	want := []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 30 * s, 30 * s, 30 * s}
	if got := h.sleeps.get(); !equalDurations(got, want) {
		t.Fatalf("delays = %v, want %v", got, want)
	}
	// A connection that closes before delivering anything keeps backing off...
	h.x.Drop("BTCUSDT")
	testutil.WaitFor(t, "tenth attempt", func() bool { return len(h.x.Attempts()) == 10 && h.x.Subscribers("BTCUSDT") == 1 })
	if got := h.sleeps.get(); got[len(got)-1] != 30*s {
		t.Errorf("delay after an empty connection = %v, want 30s", got[len(got)-1])
	}
	// ...and once trades flow the sequence starts again from 1 s.
	h.x.Publish("BTCUSDT", 1)
	h.waitStored("BTCUSDT")
	h.x.RefuseHandshakes(2)
	h.x.Drop("BTCUSDT")
	testutil.WaitFor(t, "reconnect after the refusals", func() bool { return len(h.x.Attempts()) == 13 && h.x.Subscribers("BTCUSDT") == 1 })
	got := h.sleeps.get()[len(want)+1:]
	if want := []time.Duration{0, s, 2 * s}; !equalDurations(got, want) {
		t.Errorf("delays after data flowed = %v, want %v", got, want)
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBackoffSequence(t *testing.T) {
	var b backoff
	var got []string
	for range 9 {
		got = append(got, b.next().String())
	}
	if want := "1s 2s 4s 8s 16s 30s 30s 30s 30s"; strings.Join(got, " ") != want {
		t.Errorf("backoff = %s, want %s", strings.Join(got, " "), want)
	}
	b.reset()
	if d := b.next(); d != time.Second {
		t.Errorf("after reset: %v, want 1s", d)
	}
}

// TestClientSendsCloseFrameOnStop uses a bare server to see what the client
// sends when it is stopped.
func TestClientSendsCloseFrameOnStop(t *testing.T) {
	codes := make(chan int, 1)
	up := gorillaws.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		_, _, err = c.ReadMessage()
		code := -1
		if ce, ok := err.(*gorillaws.CloseError); ok {
			code = ce.Code
		}
		codes <- code
	}))
	defer srv.Close()
	db, err := database.Open(context.Background(), filepath.Join(t.TempDir(), "ticks.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := New(Config{Symbol: "BTCUSDT", BaseURL: "ws" + strings.TrimPrefix(srv.URL, "http"), StaleTimeout: time.Minute,
		Store: db, REST: rest.New(srv.URL, unlimited{}, logger), Logger: logger})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	testutil.WaitFor(t, "connected", c.Connected)
	cancel()
	<-done
	if code := <-codes; code != gorillaws.CloseNormalClosure {
		t.Errorf("server saw close code %d, want %d", code, gorillaws.CloseNormalClosure)
	}
	if c.Connected() {
		t.Error("Connected() after Run returned")
	}
}

// checkTable compares the stored rows of sym with the trades, one for one.
func checkTable(t *testing.T, db *database.DB, sym string, trades []fakebinance.Trade) {
	t.Helper()
	rows, err := db.Ticks(context.Background(), sym, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(trades) {
		t.Fatalf("%s: %d rows stored, want %d", sym, len(rows), len(trades))
	}
	for i, tr := range trades {
		if want := toTick(tr); rows[i] != want {
			t.Errorf("%s row %d = %+v, want %+v", sym, i, rows[i], want)
		}
	}
}

func mustFloat(s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		panic(err)
	}
	return f
}

func TestThrottle(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	th := throttle{every: time.Minute}
	type step struct {
		at          time.Duration
		allow       bool // call allow (else flush)
		wantOK      bool
		wantSkipped int
	}
	steps := []step{
		{0, true, true, 0},                  // the first is logged
		{time.Second, true, false, 0},       // held back
		{2 * time.Second, true, false, 0},   // held back
		{30 * time.Second, false, false, 0}, // too early to summarise
		{61 * time.Second, false, true, 2},  // summary of the two
		{62 * time.Second, false, false, 0}, // nothing left
		{62 * time.Second, true, false, 0},  // within the new period
		{3 * time.Minute, true, true, 1},    // logged, with the one before
	}
	for i, s := range steps {
		var n int
		var ok bool
		if s.allow {
			n, ok = th.allow(t0.Add(s.at))
		} else {
			n, ok = th.flush(t0.Add(s.at))
		}
		if ok != s.wantOK || n != s.wantSkipped {
			t.Errorf("step %d at %v: got %d, %v; want %d, %v", i, s.at, n, ok, s.wantSkipped, s.wantOK)
		}
	}
}
