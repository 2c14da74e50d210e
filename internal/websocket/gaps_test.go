package websocket

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/fakebinance"
	"binance-symbol-tick-store/internal/testutil"
)

// The tests in this file each cause trades to be missed and check that the
// table ends up holding every generated trade, exactly, once.

func TestRepairsTradesMissedWhileDisconnected(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{})
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 10)
	h.waitStored("BTCUSDT")
	h.x.Stall("BTCUSDT") // half-open: these never arrive
	h.x.Publish("BTCUSDT", 2500)
	h.x.Drop("BTCUSDT")
	testutil.WaitFor(t, "the reconnect", func() bool { return h.x.Subscribers("BTCUSDT") == 1 })
	h.x.Publish("BTCUSDT", 5)
	h.waitStored("BTCUSDT")
	if s := h.client.Stats(); s.GapsFound != 1 || s.TicksBackfilled != 2500 {
		t.Errorf("stats = %+v, want one gap of 2500 ticks backfilled", s)
	}
}

func TestRepairsTradesMissedAcrossARestart(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{})
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 10)
	h.waitStored("BTCUSDT")
	h.stop()
	h.x.Publish("BTCUSDT", 1200) // while the store is down
	o := h.opts
	o.dbPath = h.db.Path()
	h.start("BTCUSDT", o)
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 1)
	h.waitStored("BTCUSDT")
}

// On a quiet market no frame arrives to reveal the restart gap: the check
// made at start finds it, long before the silence timeout (an hour here).
func TestRestartGapFoundOnQuietMarket(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{})
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 10)
	h.waitStored("BTCUSDT")
	h.stop()
	h.x.Publish("BTCUSDT", 30)
	o := h.opts
	o.dbPath = h.db.Path()
	h.start("BTCUSDT", o)
	h.waitStored("BTCUSDT")
	if n := len(h.x.Attempts()); n != 2 {
		t.Errorf("%d connection attempts, want 2: trades older than the connection do not make it dead", n)
	}
}

// The old root route accepts the connection and sends nothing. The silence
// check sees Binance trading, reconnects, and the trades are repaired.
func TestSilenceCheckDetectsDeadRoute(t *testing.T) {
	var logs testutil.SyncBuffer
	h := startClient(t, "BTCUSDT", options{route: "/ws", silence: 300 * time.Millisecond, logs: &logs})
	testutil.WaitFor(t, "a silent connection", h.client.Connected)
	// Seed the table as if the symbol had been recorded before.
	h.x.Publish("BTCUSDT", 1)
	h.db.Insert(context.Background(), "BTCUSDT", toTick(h.x.Trades("BTCUSDT")[0]))
	h.stop()
	o := h.opts
	o.dbPath = h.db.Path()
	h.start("BTCUSDT", o)
	testutil.WaitFor(t, "a silent connection", h.client.Connected)
	h.x.Publish("BTCUSDT", 20)
	testutil.WaitFor(t, "a reconnect", func() bool { return len(h.x.Attempts()) >= 3 })
	h.waitStored("BTCUSDT")
	if !strings.Contains(logs.String(), "websocket delivers nothing while binance trades") {
		t.Errorf("no log line about the dead stream:\n%s", logs.String())
	}
}

func TestSilenceCheckReportsUnlistedSymbolOnce(t *testing.T) {
	var logs testutil.SyncBuffer
	h := startClient(t, "BTCUSDT", options{silence: 100 * time.Millisecond, logs: &logs})
	h.stop()
	o := h.opts
	o.dbPath = ""
	// NOTLISTED: Binance accepts the stream and sends nothing; REST says -1121.
	h.start("NOTLISTED", o)
	testutil.WaitFor(t, "two silence checks", func() bool { return countCalls(h.x, "symbol=NOTLISTED") >= 2 })
	if n := strings.Count(logs.String(), "binance does not list this symbol"); n != 1 {
		t.Errorf("%d log lines about the unlisted symbol, want 1 per hour:\n%s", n, logs.String())
	}
}

func countCalls(x *fakebinance.Exchange, substr string) int {
	n := 0
	for _, c := range x.RESTCalls() {
		if strings.Contains(c.Query, substr) {
			n++
		}
	}
	return n
}

// failingStore fails Insert while fail is set, like a locked or full disk.
type failingStore struct {
	Store
	fail atomic.Bool
}

func (f *failingStore) Insert(ctx context.Context, sym string, t database.Tick) error {
	if f.fail.Load() {
		return errors.New("database is locked")
	}
	return f.Store.Insert(ctx, sym, t)
}

func (f *failingStore) InsertBatch(ctx context.Context, sym string, ticks []database.Tick) (int, error) {
	if f.fail.Load() {
		return 0, errors.New("database is locked")
	}
	return f.Store.InsertBatch(ctx, sym, ticks)
}

func TestRepairsFailedWrites(t *testing.T) {
	var fs *failingStore
	h := startClient(t, "BTCUSDT", options{store: func(s Store) Store { fs = &failingStore{Store: s}; return fs }})
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 10)
	h.waitStored("BTCUSDT")
	fs.fail.Store(true)
	h.x.Publish("BTCUSDT", 300) // the last of these fails too: no later frame reveals it
	testutil.WaitFor(t, "the failed writes to be queued", func() bool { return h.client.filler.Pending() == 300 })
	fs.fail.Store(false)
	h.waitStored("BTCUSDT")
}

// TestRotationLeavesNoGap cuts connections at a short max age while trades
// flow without pause: the replacement opens first, so nothing is missed.
func TestRotationLeavesNoGap(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{maxAge: 300 * time.Millisecond})
	h.waitSubscribed("BTCUSDT")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond): // trade pacing, not synchronisation
				h.x.Publish("BTCUSDT", 1)
			}
		}
	})
	testutil.WaitFor(t, "three rotations", func() bool { return len(h.x.Attempts()) >= 4 })
	close(stop)
	wg.Wait()
	h.waitStored("BTCUSDT")
	if s := h.client.Stats(); s.GapsFound != 0 {
		t.Errorf("stats = %+v: rotation opened a gap", s)
	}
	if got := h.sleeps.get(); len(got) != 0 {
		t.Errorf("reconnect delays %v: rotation must not go through a reconnect", got)
	}
}

// TestUnfillableGap: after a long outage the oldest missing trades are
// beyond Binance's REST window. They are reported, the rest is repaired.
func TestUnfillableGap(t *testing.T) {
	var mu sync.Mutex
	now := time.Now().Add(-72 * time.Hour)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	var logs testutil.SyncBuffer
	h := startClient(t, "BTCUSDT", options{fake: fakebinance.Options{Now: clock}, logs: &logs})
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 5)
	h.waitStored("BTCUSDT")
	h.stop()
	h.x.Publish("BTCUSDT", 2000) // 72 h ago: out of reach once the clock moves
	advance(71 * time.Hour)
	h.x.Publish("BTCUSDT", 1500) // 1 h ago: still served
	o := h.opts
	o.dbPath = h.db.Path()
	h.start("BTCUSDT", o)
	h.waitSubscribed("BTCUSDT")
	h.x.Publish("BTCUSDT", 1)

	all := h.x.Trades("BTCUSDT")
	want := append(append([]fakebinance.Trade(nil), all[:5]...), all[2005:]...)
	testutil.WaitFor(t, "the servable part of the gap", func() bool {
		rows, _ := h.db.Ticks(context.Background(), "BTCUSDT", 0)
		return len(rows) == len(want)
	})
	checkTable(t, h.db, "BTCUSDT", want)
	if s := h.client.Stats(); s.GapsUnfillable != 1 || s.TicksUnfillable != 2000 || s.TicksBackfilled != 1500 {
		t.Errorf("stats = %+v, want 2000 ticks unfillable and 1500 backfilled", s)
	}
	line := logs.String()
	if !strings.Contains(line, "unfillable gap") || !strings.Contains(line, "missing=2000") {
		t.Errorf("no unfillable gap with its range in the log:\n%s", line)
	}
}

func toTick(tr fakebinance.Trade) database.Tick {
	return database.Tick{ID: tr.ID, Timestamp: tr.Time, Price: mustFloat(tr.Price)}
}

// TestServerCutsFirst: when Binance's 24 h cut comes before our rotation,
// the connection is redialled at once and the cut's gap repaired.
func TestServerCutsFirst(t *testing.T) {
	h := startClient(t, "BTCUSDT", options{fake: fakebinance.Options{MaxConnAge: 200 * time.Millisecond}})
	h.waitSubscribed("BTCUSDT")
	p := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-p:
				return
			case <-time.After(time.Millisecond): // trade pacing, not synchronisation
				h.x.Publish("BTCUSDT", 1)
			}
		}
	})
	testutil.WaitFor(t, "three cuts", func() bool { return len(h.x.Attempts()) >= 4 })
	close(p)
	wg.Wait()
	// The cuts go on every 200 ms, so a last trade can fall into one; only a
	// later trade reveals it (the silence check needs a connection that lives
	// longer than its timeout). Trading goes on until a frame has arrived
	// after the last gap was queued.
	testutil.WaitFor(t, "every trade stored", func() bool {
		rows, _ := h.db.Ticks(context.Background(), "BTCUSDT", 0)
		if len(rows) >= len(h.x.Trades("BTCUSDT")) {
			return true
		}
		h.x.Publish("BTCUSDT", 1)
		return false
	})
	h.waitStored("BTCUSDT")
	for _, d := range h.sleeps.get() {
		if d != 0 {
			t.Errorf("reconnect delays %v: a cut healthy connection is redialled at once", h.sleeps.get())
			break
		}
	}
}
