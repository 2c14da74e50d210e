package backfill

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
	"binance-symbol-tick-store/internal/rest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMerge(t *testing.T) {
	g := func(from, to int64) Gap { return Gap{From: from, To: to} }
	tests := []struct {
		name  string
		queue []Gap
		add   Gap
		want  []Gap
	}{
		{"into empty", nil, g(5, 9), []Gap{g(5, 9)}},
		{"after", []Gap{g(1, 2)}, g(5, 9), []Gap{g(1, 2), g(5, 9)}},
		{"before", []Gap{g(5, 9)}, g(1, 2), []Gap{g(1, 2), g(5, 9)}},
		{"adjacent after", []Gap{g(1, 4)}, g(5, 9), []Gap{g(1, 9)}},
		{"adjacent before", []Gap{g(5, 9)}, g(1, 4), []Gap{g(1, 9)}},
		{"single ids in a row", []Gap{g(1, 1), g(3, 3)}, g(2, 2), []Gap{g(1, 3)}},
		{"overlap", []Gap{g(1, 5)}, g(3, 9), []Gap{g(1, 9)}},
		{"inside", []Gap{g(1, 9)}, g(3, 4), []Gap{g(1, 9)}},
		{"spanning several", []Gap{g(1, 2), g(5, 6), g(9, 10), g(20, 21)}, g(4, 11), []Gap{g(1, 2), g(4, 11), g(20, 21)}},
		{"between", []Gap{g(1, 2), g(20, 21)}, g(10, 11), []Gap{g(1, 2), g(10, 11), g(20, 21)}},
	}
	for _, tt := range tests {
		if got := merge(slices.Clone(tt.queue), tt.add); !slices.Equal(got, tt.want) {
			t.Errorf("%s: merge(%v, %v) = %v, want %v", tt.name, tt.queue, tt.add, got, tt.want)
		}
	}
}

// script answers AggTrades from a list of canned replies, then from the
// trades it holds.
type script struct {
	mu      sync.Mutex
	replies []error // consumed first, one per call; nil means "answer normally"
	empty   int     // then this many empty pages
	trades  []database.Tick
	calls   int
}

func (s *script) AggTrades(_ context.Context, _ string, from int64, limit int) ([]database.Tick, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if len(s.replies) > 0 {
		err := s.replies[0]
		s.replies = s.replies[1:]
		if err != nil {
			return nil, err
		}
	}
	if s.empty > 0 {
		s.empty--
		return nil, nil
	}
	i, _ := slices.BinarySearchFunc(s.trades, from, func(t database.Tick, id int64) int { return int(t.ID - id) })
	return slices.Clone(s.trades[i:min(len(s.trades), i+limit)]), nil
}

type memStore struct {
	mu      sync.Mutex
	rows    map[int64]database.Tick
	fail    int    // fail this many batches first
	onBatch func() // called before each batch is stored, if set
}

func (m *memStore) InsertBatch(_ context.Context, _ string, ticks []database.Tick) (int, error) {
	if m.onBatch != nil {
		m.onBatch()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail > 0 {
		m.fail--
		return 0, errors.New("disk full")
	}
	n := 0
	for _, t := range ticks {
		if _, ok := m.rows[t.ID]; !ok {
			m.rows[t.ID] = t
			n++
		}
	}
	return n, nil
}

func (m *memStore) ids() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []int64
	for id := range m.rows {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func ticks(from, to int64) []database.Tick {
	var out []database.Tick
	for id := from; id <= to; id++ {
		out = append(out, database.Tick{ID: id, Timestamp: id * 10, Price: 1})
	}
	return out
}

func run(t *testing.T, f *Filler, until func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for !until() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out; stats %+v, pending %d", f.Stats(), f.Pending())
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

func newFiller(s *script, m *memStore) (*Filler, *[]time.Duration) {
	var mu sync.Mutex
	var delays []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		delays = append(delays, d)
		mu.Unlock()
		return ctx.Err()
	}
	return New("BTCUSDT", s, m, slog.New(slog.NewTextHandler(io.Discard, nil)), sleep), &delays
}

func TestFillPagesAndRetries(t *testing.T) {
	// Binance holds 1..5000 except its own hole 2000..2099.
	all := append(ticks(1, 1999), ticks(2100, 5000)...)
	s := &script{trades: all, replies: []error{errors.New("connection reset"), nil, rest.ErrUnknownSymbol}, empty: 2}
	m := &memStore{rows: map[int64]database.Tick{}, fail: 1}
	f, delays := newFiller(s, m)
	f.Add(Gap{From: 10, To: 4000})
	run(t, f, func() bool { return f.Pending() == 0 && f.Stats().GapsFilled == 1 })
	var want []int64
	for _, tk := range all {
		if tk.ID >= 10 && tk.ID <= 4000 {
			want = append(want, tk.ID)
		}
	}
	if got := m.ids(); !slices.Equal(got, want) {
		t.Errorf("stored %d ids (%d..%d), want %d", len(got), got[0], got[len(got)-1], len(want))
	}
	if st := f.Stats(); st.TicksBackfilled != int64(len(want)) || st.GapsUnfillable != 0 {
		t.Errorf("stats = %+v", st)
	}
	// A network error, a failed write, -1121 and two empty pages in a row:
	// five waits, doubling, until a page is stored.
	if want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}; !slices.Equal(*delays, want) {
		t.Errorf("retry delays = %v, want %v", *delays, want)
	}
}

func TestFillGivesUpOnlyWhenBinanceCannotServe(t *testing.T) {
	s := &script{trades: ticks(1, 100), empty: maxEmpty}
	m := &memStore{rows: map[int64]database.Tick{}}
	f, _ := newFiller(s, m)
	f.Add(Gap{From: 10, To: 20})
	run(t, f, func() bool { return f.Pending() == 0 })
	if st := f.Stats(); st.GapsUnfillable != 1 || st.TicksUnfillable != 11 {
		t.Errorf("stats after %d empty pages = %+v, want the gap reported unfillable", maxEmpty, st)
	}
}

// tooOld serves ids from a boundary on and answers -4166 below it.
type tooOld struct {
	script
	served int64
}

func (o *tooOld) AggTrades(ctx context.Context, sym string, from int64, limit int) ([]database.Tick, error) {
	if from < o.served {
		o.mu.Lock()
		o.calls++
		o.mu.Unlock()
		return nil, rest.ErrTooOld
	}
	return o.script.AggTrades(ctx, sym, from, limit)
}

func TestFillBisectsTheRESTWindow(t *testing.T) {
	o := &tooOld{script: script{trades: ticks(1, 1_000_000)}, served: 654_321}
	m := &memStore{rows: map[int64]database.Tick{}}
	f, _ := newFiller(&o.script, m)
	f.fetch = o
	f.Add(Gap{From: 600_000, To: 660_000})
	run(t, f, func() bool { return f.Pending() == 0 })
	ids := m.ids()
	if len(ids) != 660_000-654_321+1 || ids[0] != 654_321 {
		t.Errorf("stored %d ids from %d, want %d from 654321", len(ids), ids[0], 660_000-654_321+1)
	}
	if st := f.Stats(); st.TicksUnfillable != 54_321 {
		t.Errorf("unfillable = %d, want 54321", st.TicksUnfillable)
	}
	if o.calls > 40 {
		t.Errorf("%d calls answered -4166, want a bisection (about 16)", o.calls)
	}
}

func TestRemove(t *testing.T) {
	g := func(from, to int64) Gap { return Gap{From: from, To: to} }
	q := []Gap{g(1, 2), g(5, 9), g(12, 12), g(20, 30)}
	tests := []struct {
		a, b   int64
		want   []Gap
		closed int
	}{
		{3, 4, q, 0},
		{1, 2, []Gap{g(5, 9), g(12, 12), g(20, 30)}, 1},
		{6, 7, []Gap{g(1, 2), g(5, 5), g(8, 9), g(12, 12), g(20, 30)}, 0},
		{5, 25, []Gap{g(1, 2), g(26, 30)}, 2},
		{0, 100, nil, 4},
	}
	for _, tt := range tests {
		got, closed := remove(slices.Clone(q), tt.a, tt.b)
		if !slices.Equal(got, tt.want) || closed != tt.closed {
			t.Errorf("remove(%v, %d, %d) = %v, %d; want %v, %d", q, tt.a, tt.b, got, closed, tt.want, tt.closed)
		}
	}
}

// TestOnePageClosesSeveralGaps: small gaps close together (a burst of
// failed writes, holes found by the audit) share REST calls.
func TestOnePageClosesSeveralGaps(t *testing.T) {
	s := &script{trades: ticks(1, 5000)}
	m := &memStore{rows: map[int64]database.Tick{}}
	f, _ := newFiller(s, m)
	for _, gap := range []Gap{{From: 10, To: 12}, {From: 15, To: 15}, {From: 300, To: 420}, {From: 990, To: 1200}} {
		f.AddQuiet(gap)
	}
	run(t, f, func() bool { return f.Pending() == 0 })
	var want []int64
	for id := int64(1); id <= 5000; id++ {
		if id >= 10 && id <= 12 || id == 15 || id >= 300 && id <= 420 || id >= 990 && id <= 1200 {
			want = append(want, id)
		}
	}
	if got := m.ids(); !slices.Equal(got, want) {
		t.Errorf("stored %d ids, want %d", len(got), len(want))
	}
	if s.calls != 2 || f.Stats().GapsFilled != 4 {
		t.Errorf("%d REST calls and %d gaps filled; want 2 pages (10..1009, 1010..) closing all 4", s.calls, f.Stats().GapsFilled)
	}
}

// TestGapQueuedWhilePageIsStored: a live write fails, and its id is queued,
// while a page that reaches past it is being stored. The page was selected
// before, without that id: settling the page must not drop it.
func TestGapQueuedWhilePageIsStored(t *testing.T) {
	s := &script{trades: ticks(1, 5000)}
	m := &memStore{rows: map[int64]database.Tick{}}
	f, _ := newFiller(s, m)
	var once sync.Once
	m.onBatch = func() { once.Do(func() { f.AddQuiet(Gap{From: 500, To: 500}) }) }
	f.AddQuiet(Gap{From: 10, To: 20})
	f.AddQuiet(Gap{From: 300, To: 310})
	run(t, f, func() bool { return f.Pending() == 0 && len(m.ids()) == 11+11+1 })
	if _, ok := m.rows[500]; !ok {
		t.Error("id 500, queued while a page was stored, was dropped")
	}
}
