// Package backfill repairs one symbol's missing trades: it keeps a queue of
// id ranges absent from the table and fetches them from Binance's REST API,
// one page per transaction, while the live stream goes on.
package backfill

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/rest"
)

const (
	maxRetryDelay = 5 * time.Minute // network, database and -1121 retries back off up to this
	unlistedEvery = time.Hour       // how often "not listed" is logged per symbol
	maxEmpty      = 10              // empty answers for ids known to exist before giving up
)

// Fetcher reads trades from Binance (a *rest.Client).
type Fetcher interface {
	AggTrades(ctx context.Context, sym string, fromID int64, limit int) ([]database.Tick, error)
}

// Store writes a page of trades in one transaction (a *database.DB).
type Store interface {
	InsertBatch(ctx context.Context, sym string, ticks []database.Tick) (int, error)
}

// Gap is a range of missing trade ids, both ends included. After and Before
// are the trade times (Unix ms) of the stored ticks around it, 0 if unknown;
// they only serve the log line of a gap that cannot be filled.
type Gap struct {
	From, To      int64
	After, Before int64
	Cause         string // reconnect, restart, write failed, audit, ...
}

// Stats are running totals, for logs and metrics.
type Stats struct {
	GapsFound, GapsFilled, GapsUnfillable int64
	TicksBackfilled, TicksUnfillable      int64
}

// Filler works one symbol's gap queue. Add may be called from any
// goroutine; Run from one.
type Filler struct {
	sym   string
	fetch Fetcher
	store Store
	log   *slog.Logger
	sleep func(context.Context, time.Duration) error

	mu     sync.Mutex
	queue  []Gap // sorted, disjoint, not adjacent
	notify chan struct{}

	gapsFound, gapsFilled, gapsUnfillable atomic.Int64
	ticksBackfilled, ticksUnfillable      atomic.Int64
	lastUnlisted                          time.Time // Run's goroutine only
}

// New returns a filler for sym. sleep waits between retries; it returns early
// with an error when its context ends.
func New(sym string, fetch Fetcher, store Store, logger *slog.Logger, sleep func(context.Context, time.Duration) error) *Filler {
	return &Filler{sym: sym, fetch: fetch, store: store, log: logger.With("symbol", sym), sleep: sleep,
		notify: make(chan struct{}, 1)}
}

// Add queues g for repair, merging it with queued gaps it touches, and logs it.
func (f *Filler) Add(g Gap) {
	if g.From <= g.To {
		f.log.Info("gap found", "from_id", g.From, "to_id", g.To, "missing", g.To-g.From+1, "cause", g.Cause)
	}
	f.AddQuiet(g)
}

// AddQuiet is Add without the log line, for callers that report the cause
// themselves, rate-limited (a failing disk fails every tick).
func (f *Filler) AddQuiet(g Gap) {
	if g.From > g.To {
		return
	}
	f.gapsFound.Add(1)
	f.mu.Lock()
	f.queue = merge(f.queue, g)
	f.mu.Unlock()
	select {
	case f.notify <- struct{}{}:
	default:
	}
}

// merge inserts g into the sorted, disjoint queue q.
func merge(q []Gap, g Gap) []Gap {
	i, _ := slices.BinarySearchFunc(q, g.From, func(e Gap, from int64) int {
		switch {
		case e.To+1 < from:
			return -1
		default:
			return 1
		}
	})
	j := i
	for j < len(q) && q[j].From <= g.To+1 {
		if q[j].From < g.From {
			g.From, g.After = q[j].From, q[j].After
		}
		if q[j].To > g.To {
			g.To, g.Before = q[j].To, q[j].Before
		}
		j++
	}
	return slices.Replace(q, i, j, g)
}

// Pending returns how many ids are queued for repair.
func (f *Filler) Pending() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, g := range f.queue {
		n += g.To - g.From + 1
	}
	return n
}

// Stats returns the running totals.
func (f *Filler) Stats() Stats {
	return Stats{
		GapsFound: f.gapsFound.Load(), GapsFilled: f.gapsFilled.Load(), GapsUnfillable: f.gapsUnfillable.Load(),
		TicksBackfilled: f.ticksBackfilled.Load(), TicksUnfillable: f.ticksUnfillable.Load(),
	}
}

// Run repairs queued gaps, oldest first, until ctx is cancelled. A gap stays
// queued until it is filled or Binance can no longer serve it.
func (f *Filler) Run(ctx context.Context) {
	for {
		g, ok := f.first()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-f.notify:
				continue
			}
		}
		if !f.fill(ctx, g) {
			return // cancelled; the gap stays queued for nobody, a restart's audit finds it
		}
	}
}

func (f *Filler) first() (Gap, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.queue) == 0 {
		return Gap{}, false
	}
	return f.queue[0], true
}

// settle removes the ids from..to from the queue, stored or given up, and
// returns how many queued gaps that closed entirely.
func (f *Filler) settle(from, to int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var closed int
	f.queue, closed = remove(f.queue, from, to)
	return closed
}

// remove cuts a..b out of the sorted, disjoint queue q.
func remove(q []Gap, a, b int64) (out []Gap, closed int) {
	out = q[:0:0]
	for _, g := range q {
		switch {
		case g.To < a || g.From > b:
			out = append(out, g)
		case g.From >= a && g.To <= b:
			closed++
		default:
			if g.From < a {
				left := g
				left.To = a - 1
				out = append(out, left)
			}
			if g.To > b {
				right := g
				right.From = b + 1
				out = append(out, right)
			}
		}
	}
	return out, closed
}

// wanted keeps the fetched ticks that are missing: up to the gap's end, and
// beyond it those in later queued gaps, so that one page can close several
// small gaps. covered are those later gaps as far as the page reaches, as
// queued now: only they may be settled once the page is stored, for a gap
// queued meanwhile (a live write failing right now) was not in this page's
// selection.
func (f *Filler) wanted(ticks []database.Tick, to int64) (in []database.Tick, covered []Gap) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range ticks {
		if t.ID <= to || queued(f.queue, t.ID) {
			in = append(in, t)
		}
	}
	last := ticks[len(ticks)-1].ID
	for _, g := range f.queue {
		if g.To > to && g.From <= last {
			g.From, g.To = max(g.From, to+1), min(g.To, last)
			covered = append(covered, g)
		}
	}
	return in, covered
}

func queued(q []Gap, id int64) bool {
	_, found := slices.BinarySearchFunc(q, id, func(g Gap, id int64) int {
		switch {
		case g.To < id:
			return -1
		case g.From > id:
			return 1
		}
		return 0
	})
	return found
}

// fill repairs g page by page; it returns false if ctx ended first.
func (f *Filler) fill(ctx context.Context, g Gap) bool {
	start := time.Now()
	var retry time.Duration
	wait := func() bool {
		retry = min(max(2*retry, time.Second), maxRetryDelay)
		return f.sleep(ctx, retry) == nil
	}
	added, empty := int64(0), 0
	for from := g.From; from <= g.To; {
		ticks, err := f.fetch.AggTrades(ctx, f.sym, from, rest.MaxLimit)
		switch {
		case ctx.Err() != nil:
			return false
		case errors.Is(err, rest.ErrTooOld):
			next := f.firstServed(ctx, from, g.To)
			if ctx.Err() != nil {
				return false
			}
			f.unfillable(g, from, next-1)
			f.settle(from, next-1)
			from, g.From = next, next
			continue
		case errors.Is(err, rest.ErrUnknownSymbol):
			if time.Since(f.lastUnlisted) >= unlistedEvery {
				f.lastUnlisted = time.Now()
				f.log.Error("binance does not list this symbol on USD-M futures; gap repair will retry", "error", err)
			}
			if !wait() {
				return false
			}
			continue
		case err != nil:
			f.log.Warn("gap repair: rest call failed, retrying", "from_id", from, "error", err, "delay", max(2*retry, time.Second))
			if !wait() {
				return false
			}
			continue
		case len(ticks) == 0:
			// ids up to g.To exist (a later one was streamed) or are holes in
			// Binance's history; an empty page means REST is lagging.
			if empty++; empty >= maxEmpty {
				f.log.Warn("gap repair: binance returned no trades for known ids, giving up", "from_id", from, "to_id", g.To)
				f.unfillable(g, from, g.To)
				f.settle(from, g.To)
				return true
			}
			if !wait() {
				return false
			}
			continue
		}
		in, covered := f.wanted(ticks, g.To)
		if len(in) > 0 {
			n, err := f.store.InsertBatch(ctx, f.sym, in)
			if err != nil {
				f.log.Error("gap repair: cannot store page, retrying", "from_id", from, "error", err)
				if !wait() {
					return false
				}
				continue
			}
			added += int64(n)
			f.ticksBackfilled.Add(int64(n))
		}
		retry, empty = 0, 0
		next := ticks[len(ticks)-1].ID + 1
		closed := f.settle(from, min(next-1, g.To))
		for _, c := range covered {
			closed += f.settle(c.From, c.To)
		}
		f.gapsFilled.Add(int64(closed))
		from, g.From = next, next
	}
	f.log.Info("gap filled", "added", added, "took", time.Since(start).Round(time.Millisecond))
	return true
}

// firstServed finds, by bisection, the first id in (tooOld, to] that REST
// still serves; to+1 if none. Each probe is one call of weight 20, about 30
// for a range of a billion ids.
func (f *Filler) firstServed(ctx context.Context, tooOld, to int64) int64 {
	lo, hi := tooOld, to+1 // lo is too old; hi is served, or past the gap
	for hi-lo > 1 && ctx.Err() == nil {
		mid := lo + (hi-lo)/2
		_, err := f.fetch.AggTrades(ctx, f.sym, mid, 1)
		switch {
		case errors.Is(err, rest.ErrTooOld):
			lo = mid
		case err == nil:
			hi = mid
		default:
			if f.sleep(ctx, time.Second) != nil {
				return hi
			}
		}
	}
	return hi
}

func (f *Filler) unfillable(g Gap, from, to int64) {
	if from > to {
		return
	}
	f.gapsUnfillable.Add(1)
	f.ticksUnfillable.Add(to - from + 1)
	attrs := []any{"from_id", from, "to_id", to, "missing", to - from + 1}
	if from == g.From && g.After > 0 {
		attrs = append(attrs, "after", time.UnixMilli(g.After).UTC().Format(time.DateTime+".000"))
	}
	if g.Before > 0 {
		attrs = append(attrs, "before", time.UnixMilli(g.Before).UTC().Format(time.DateTime+".000"))
	}
	f.log.Error("unfillable gap: binance no longer serves these trades", attrs...)
}
