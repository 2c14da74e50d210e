// Package limit owns the client-side Binance rate limits: exact sliding-window limits on
// WebSocket connection attempts and the per-UTC-minute REST weight budget.
package limit

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// DefaultBudget is Binance's REST weight allowance per UTC minute, used when NewWeight is given
// a budget <= 0.
const DefaultBudget = 1200

// Clock abstracts time for tests. Real returns the system clock.
type Clock interface {
	Now() time.Time
	// After behaves like time.After; a fake clock fires it when the test advances time.
	After(d time.Duration) <-chan time.Time
}

// Real returns the system clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Rule allows at most N events in any window of length Per.
type Rule struct {
	N   int
	Per time.Duration
}

// Window is a sliding-log limiter: an event is admitted at time t only if, for every rule, fewer
// than N admitted events lie in the half-open interval (t-Per, t]. So an event exactly Per after
// the N-th most recent one is admissible; a checker that counts closed windows [s, s+Per] should
// be given a Per with some margin. Safe for concurrent use; waiters are admitted in the order
// they entered Wait (a fair FIFO queue, so no caller starves).
type Window struct {
	clock Clock
	mu    sync.Mutex
	rings []ring          // one per rule
	queue []chan struct{} // waiters in arrival order; queue[0] is closed and holds the turn
}

// ring holds the last N admission times of one rule, oldest at next once full.
type ring struct {
	Rule
	times []time.Time
	next  int
}

// NewWindow returns a limiter enforcing every rule at once. It panics if a rule has N < 1 or
// Per <= 0, which is a programming error.
func NewWindow(clock Clock, rules ...Rule) *Window {
	w := &Window{clock: clock}
	for _, r := range rules {
		if r.N < 1 || r.Per <= 0 {
			panic(fmt.Sprintf("limit: invalid rule %d per %v", r.N, r.Per))
		}
		w.rings = append(w.rings, ring{Rule: r, times: make([]time.Time, 0, r.N)})
	}
	return w
}

// Wait blocks until an event may happen now, records it, and returns nil; or returns ctx.Err()
// without recording anything (also when ctx is already done on entry).
func (w *Window) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	turn := make(chan struct{})
	w.mu.Lock()
	w.queue = append(w.queue, turn)
	if len(w.queue) == 1 {
		close(turn)
	}
	w.mu.Unlock()
	defer w.leave(turn)

	select {
	case <-turn:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Only the head of the queue gets here, so it alone waits on the clock.
	for {
		w.mu.Lock()
		now := w.clock.Now()
		var at time.Time
		for _, r := range w.rings {
			if len(r.times) == r.N {
				at = latest(at, r.times[r.next].Add(r.Per))
			}
		}
		if !now.Before(at) {
			for i := range w.rings {
				w.rings[i].add(now)
			}
			w.mu.Unlock()
			return nil
		}
		w.mu.Unlock()
		if err := Sleep(ctx, w.clock, at.Sub(now)); err != nil {
			return err
		}
	}
}

// leave removes turn from the queue and, if it was the head, hands the turn to the next waiter.
func (w *Window) leave(turn chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := slices.Index(w.queue, turn)
	w.queue = slices.Delete(w.queue, i, i+1)
	if i == 0 && len(w.queue) > 0 {
		close(w.queue[0])
	}
}

func (r *ring) add(t time.Time) {
	if len(r.times) < r.N {
		r.times = append(r.times, t)
		return
	}
	r.times[r.next] = t
	r.next = (r.next + 1) % r.N
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// minuteGuard is the end of each minute in which Weight sends nothing: a call
// counted here in one minute must not reach Binance, and be counted there, in
// the next.
const minuteGuard = time.Second

// Sleep waits d on clock, or returns ctx.Err() as soon as ctx ends.
func Sleep(ctx context.Context, clock Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-clock.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Weight spends a per-UTC-minute budget of REST weight, the way Binance counts it (12:03:00.000
// to 12:03:59.999 is one minute). No call is admitted in the last second of a minute, so that
// network delay cannot move one into the next minute's count. Safe for concurrent use; waiters
// are not ordered.
type Weight struct {
	clock   Clock
	budget  int
	mu      sync.Mutex
	minute  time.Time // start of the UTC minute that used counts
	used    int
	blocked time.Time // no Take succeeds before this
}

// NewWeight returns a budget of budget weight per UTC minute, or DefaultBudget if budget <= 0.
func NewWeight(clock Clock, budget int) *Weight {
	if budget <= 0 {
		budget = DefaultBudget
	}
	return &Weight{clock: clock, budget: budget}
}

// Take blocks until cost fits in the current UTC minute's remaining budget (waiting for the next
// minute if not, and while a Block is in force), records it, and returns nil; or ctx.Err()
// without recording anything. A cost above the budget, or negative, is an error returned at once.
func (w *Weight) Take(ctx context.Context, cost int) error {
	if cost < 0 || cost > w.budget {
		return fmt.Errorf("take weight %d: outside budget 0..%d", cost, w.budget)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for {
		w.mu.Lock()
		now := w.roll()
		var at time.Time
		switch {
		case now.Before(w.blocked):
			at = w.blocked
		case w.used+cost > w.budget, now.Sub(w.minute) >= time.Minute-minuteGuard:
			at = w.minute.Add(time.Minute)
		default:
			w.used += cost
			w.mu.Unlock()
			return nil
		}
		w.mu.Unlock()
		if err := Sleep(ctx, w.clock, at.Sub(now)); err != nil {
			return err
		}
	}
}

// Observe raises this minute's used weight to used if used is higher (the server's
// X-MBX-USED-WEIGHT-1M header counts other programs on the same IP too). It never lowers it.
func (w *Weight) Observe(used int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.roll()
	w.used = max(w.used, used)
}

// Block stops every Take until t (after a 429 Retry-After or a 418 ban); a later t extends the
// block, an earlier one is ignored.
func (w *Weight) Block(until time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.blocked = latest(w.blocked, until)
}

// Used returns the weight recorded in the current UTC minute (for metrics).
func (w *Weight) Used() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.roll()
	return w.used
}

// roll starts a new count when the UTC minute has moved on, and returns now. A clock stepping
// back does not reset the count. Callers hold w.mu.
func (w *Weight) roll() time.Time {
	now := w.clock.Now()
	if m := now.UTC().Truncate(time.Minute); m.After(w.minute) {
		w.minute, w.used = m, 0
	}
	return now
}

// FakeClock is a Clock for tests whose time moves only by Advance or Set. Safe for concurrent use.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	pending []fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

// NewFakeClock returns a fake clock reading t.
func NewFakeClock(t time.Time) *FakeClock { return &FakeClock{now: t} }

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives the fake time once it reaches Now()+d (at once if d <= 0).
func (c *FakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.pending = append(c.pending, fakeTimer{at: c.now.Add(d), ch: ch})
	return ch
}

// Advance moves the fake time forward by d and fires every After whose deadline has passed.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set(c.now.Add(d))
}

// Set moves the fake time to t and fires every After whose deadline has passed.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set(t)
}

func (c *FakeClock) set(t time.Time) {
	c.now = t
	c.pending = slices.DeleteFunc(c.pending, func(p fakeTimer) bool {
		if p.at.After(t) {
			return false
		}
		p.ch <- t // buffered, never blocks
		return true
	})
}

// Waiters returns how many After channels have not fired yet, including any whose receiver
// has given up, so tests can poll it instead of sleeping.
func (c *FakeClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}
