package rest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"binance-symbol-tick-store/internal/fakebinance"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recordingBudget admits every call and records what the client told it.
type recordingBudget struct {
	mu       sync.Mutex
	taken    int
	observed []int
	blocks   []time.Time
}

func (b *recordingBudget) Take(context.Context, int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.taken++
	return nil
}

func (b *recordingBudget) Observe(used int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.observed = append(b.observed, used)
}

func (b *recordingBudget) Block(until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blocks = append(b.blocks, until)
}

func newTest(t *testing.T) (*fakebinance.Exchange, *Client, *recordingBudget) {
	t.Helper()
	x := fakebinance.New(fakebinance.Options{})
	srv := httptest.NewServer(x)
	t.Cleanup(func() { x.Close(); srv.Close() })
	b := &recordingBudget{}
	return x, New(srv.URL, b, slog.New(slog.NewTextHandler(io.Discard, nil))), b
}

func TestAggTrades(t *testing.T) {
	x, c, b := newTest(t)
	x.List("BTCUSDT")
	trades := x.Publish("BTCUSDT", 30)
	x.Skip("BTCUSDT", 5) // a hole in Binance's own history
	trades = append(trades, x.Publish("BTCUSDT", 10)...)
	ctx := context.Background()

	got, err := c.AggTrades(ctx, "BTCUSDT", trades[3].ID, 5)
	if err != nil || len(got) != 5 || got[0].ID != trades[3].ID || got[4].ID != trades[7].ID {
		t.Errorf("AggTrades(from %d, 5) = %+v, %v", trades[3].ID, got, err)
	}
	if got[0].Timestamp != trades[3].Time {
		t.Errorf("timestamp = %d, want %d", got[0].Timestamp, trades[3].Time)
	}
	got, err = c.AggTrades(ctx, "btcusdt", trades[29].ID+1, 1000) // inside the hole
	if err != nil || len(got) != 10 || got[0].ID != trades[30].ID {
		t.Errorf("AggTrades(from inside a hole) = %d rows from %d, %v; want 10 from %d", len(got), got[0].ID, err, trades[30].ID)
	}
	latest, ok, err := c.Latest(ctx, "BTCUSDT")
	if err != nil || !ok || latest.ID != trades[39].ID {
		t.Errorf("Latest = %+v, %v, %v; want id %d", latest, ok, err, trades[39].ID)
	}
	if want := []int{20, 40, 60}; b.taken != 3 || !slices.Equal(b.observed, want) {
		t.Errorf("took %d, observed %v; want 3 calls and the used-weight header %v", b.taken, b.observed, want)
	}
}

func TestErrors(t *testing.T) {
	x, c, _ := newTest(t)
	x.List("BTCUSDT")
	ctx := context.Background()
	if _, err := c.AggTrades(ctx, "NOPE", 1, 10); !errors.Is(err, ErrUnknownSymbol) {
		t.Errorf("unknown symbol: %v, want ErrUnknownSymbol", err)
	}
	if _, _, err := c.Latest(ctx, "NOPE"); !errors.Is(err, ErrUnknownSymbol) {
		t.Errorf("Latest(unknown symbol): %v, want ErrUnknownSymbol", err)
	}
	if _, ok, err := c.Latest(ctx, "BTCUSDT"); ok || err != nil {
		t.Errorf("Latest(no trades) = %v, %v; want false, nil", ok, err)
	}
}

func TestTooOld(t *testing.T) {
	now := time.Now()
	x := fakebinance.New(fakebinance.Options{Now: func() time.Time { return now }})
	srv := httptest.NewServer(x)
	defer func() { x.Close(); srv.Close() }()
	x.List("BTCUSDT")
	old := x.Publish("BTCUSDT", 1)
	now = now.Add(49 * time.Hour)
	c := New(srv.URL, &recordingBudget{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := c.AggTrades(context.Background(), "BTCUSDT", old[0].ID, 10); !errors.Is(err, ErrTooOld) {
		t.Errorf("fromId older than 48 h: %v, want ErrTooOld", err)
	}
}

func TestRateLimits(t *testing.T) {
	x, c, b := newTest(t)
	x.List("BTCUSDT")
	x.Publish("BTCUSDT", 1)
	ctx := context.Background()

	x.FailREST(http.StatusTooManyRequests, 7*time.Second, 1)
	start := time.Now()
	if _, ok, err := c.Latest(ctx, "BTCUSDT"); !ok || err != nil {
		t.Fatalf("Latest after a 429 = %v, %v; want the answer of the retry", ok, err)
	}
	if len(b.blocks) != 1 || b.blocks[0].Sub(start) < 6*time.Second || b.blocks[0].Sub(start) > 9*time.Second {
		t.Errorf("blocks after 429 with Retry-After 7 = %v, want one about 7 s from now", b.blocks)
	}

	x.FailREST(http.StatusTeapot, 0, 1)
	start = time.Now()
	if _, ok, err := c.Latest(ctx, "BTCUSDT"); !ok || err != nil {
		t.Fatalf("Latest after a 418 = %v, %v", ok, err)
	}
	if len(b.blocks) != 2 || b.blocks[1].Sub(start) < 2*time.Minute-time.Second {
		t.Errorf("block after 418 = %v, want at least 2 minutes", b.blocks[1:])
	}
	if b.taken != 4 {
		t.Errorf("%d calls taken from the budget, want 4: every call costs, errors too", b.taken)
	}
}

func TestServerErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
	}))
	defer srv.Close()
	c := New(srv.URL, &recordingBudget{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	_, err := c.AggTrades(context.Background(), "BTCUSDT", 1, 10)
	if err == nil || errors.Is(err, ErrUnknownSymbol) || errors.Is(err, ErrTooOld) {
		t.Errorf("502: %v, want a plain error to retry", err)
	}
}
