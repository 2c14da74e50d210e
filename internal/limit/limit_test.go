package limit

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start is the fake clock's first reading: half a minute into a UTC minute, so a Take that
// has spent the budget waits 30 s, not 60.
func start() time.Time { return time.Date(2024, 5, 1, 12, 3, 30, 0, time.UTC) }

// waitFor polls cond until it holds, failing the test after 10 s of real time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Microsecond) // polling interval, not synchronisation
	}
}

// queued returns how many goroutines are inside w.Wait's queue.
func queued(w *Window) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

// goWait runs w.Wait(ctx) in a goroutine and returns its result channel; the goroutine is
// released and awaited when the test ends.
func goWait(t *testing.T, ctx context.Context, w *Window) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { done <- w.Wait(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return done
}

// result returns what arrives on done within 5 s of real time.
func result(t *testing.T, what string, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

func TestWindowRules(t *testing.T) {
	const n = 400
	t0 := start()
	clock := NewFakeClock(t0)
	w := NewWindow(clock, Rule{N: 10, Per: time.Second}, Rule{N: 300, Per: 5 * time.Minute})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var mu sync.Mutex
	var got []time.Time
	for range n {
		wg.Go(func() {
			if w.Wait(ctx) != nil {
				return
			}
			now := clock.Now() // the clock only moves once every admitted waiter has recorded
			mu.Lock()
			got = append(got, now)
			mu.Unlock()
		})
	}
	recorded := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	// Settled: every waiter has either recorded its admission or is queued behind a head that
	// is blocked on the clock, so nothing changes until the clock moves.
	settled := func() bool {
		done := recorded()
		return done == n || (clock.Waiters() == 1 && done+queued(w) == n)
	}
	waitFor(t, "first admissions", settled)
	for recorded() < n {
		if clock.Now().Sub(t0) > 10*time.Minute {
			t.Fatalf("only %d of %d admitted after 10 fake minutes", recorded(), n)
		}
		clock.Advance(50 * time.Millisecond)
		waitFor(t, "waiters to settle", settled)
	}

	slices.SortFunc(got, time.Time.Compare)
	for i, at := range got {
		if i >= 10 && at.Sub(got[i-10]) < time.Second {
			t.Errorf("admission %d at %v: 11 admissions within 1 s (from %v)", i, at.Sub(t0), got[i-10].Sub(t0))
		}
		if i >= 300 && at.Sub(got[i-300]) < 5*time.Minute {
			t.Errorf("admission %d at %v: 301 admissions within 5 m (from %v)", i, at.Sub(t0), got[i-300].Sub(t0))
		}
	}
	// The rules imply bursts of 10 each second for 30 s, then nothing until the first burst
	// leaves the 5-minute window, then bursts of 10 each second again.
	for i, at := range got {
		want := time.Duration(i/10) * time.Second
		if i >= 300 {
			want = 5*time.Minute + time.Duration((i-300)/10)*time.Second
		}
		if at.Sub(t0) != want {
			t.Errorf("admission %d at t0+%v, want t0+%v", i, at.Sub(t0), want)
		}
	}
}

func TestWindowFIFO(t *testing.T) {
	const n = 5
	clock := NewFakeClock(start())
	w := NewWindow(clock, Rule{N: 1, Per: time.Second})
	if err := w.Wait(context.Background()); err != nil {
		t.Fatalf("first Wait = %v, want nil", err)
	}
	order := make(chan int, n)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		wg.Go(func() {
			if w.Wait(ctx) == nil {
				order <- i
			}
		})
		waitFor(t, "waiter to queue", func() bool { return queued(w) == i+1 })
	}
	for want := range n {
		waitFor(t, "head to block on the clock", func() bool { return clock.Waiters() == 1 })
		clock.Advance(time.Second)
		select {
		case got := <-order:
			if got != want {
				t.Errorf("admission %d went to waiter %d, want %d", want, got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("admission %d did not happen", want)
		}
	}
}

func TestWindowCancel(t *testing.T) {
	tests := []struct {
		name   string
		victim int // 0 cancels the head (blocked on the clock), 1 the waiter queued behind it
	}{
		{"head", 0},
		{"queued", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t0 := start()
			clock := NewFakeClock(t0)
			w := NewWindow(clock, Rule{N: 2, Per: time.Second})
			for range 2 {
				if err := w.Wait(context.Background()); err != nil {
					t.Fatalf("Wait = %v, want nil", err)
				}
			}
			var cancels [2]context.CancelFunc
			var dones [2]<-chan error
			for i := range 2 {
				var ctx context.Context
				ctx, cancels[i] = context.WithCancel(context.Background())
				dones[i] = goWait(t, ctx, w)
				waitFor(t, "waiter to queue", func() bool { return queued(w) == i+1 })
			}
			waitFor(t, "head to block on the clock", func() bool { return clock.Waiters() == 1 })
			// Cancel mid-wait, so that a slot wrongly taken at cancellation would still be in
			// the window at t0+1s.
			clock.Advance(500 * time.Millisecond)

			cancels[tt.victim]()
			if err := result(t, "cancelled Wait", dones[tt.victim]); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled Wait = %v, want %v", err, context.Canceled)
			}
			survivor := 1 - tt.victim
			select {
			case err := <-dones[survivor]:
				t.Fatalf("surviving Wait returned %v before the clock moved", err)
			default:
			}

			clock.Advance(500 * time.Millisecond)
			if err := result(t, "surviving Wait", dones[survivor]); err != nil {
				t.Fatalf("surviving Wait = %v, want nil", err)
			}
			// Only the survivor lies in (t0, t0+1s], so one more event fits now; it would not
			// if the cancelled waiter had kept a slot.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := w.Wait(ctx); err != nil {
				t.Fatalf("Wait at t0+1s = %v, want nil (cancelled waiter consumed a slot?)", err)
			}
		})
	}
}

func TestWindowCancelledBeforeEntry(t *testing.T) {
	w := NewWindow(NewFakeClock(start()), Rule{N: 1, Per: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait(cancelled) = %v, want %v", err, context.Canceled)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Wait(ctx); err != nil {
		t.Fatalf("Wait after a cancelled one = %v, want nil", err)
	}
}

func TestWindowRealClock(t *testing.T) {
	const n = 9
	w := NewWindow(Real(), Rule{N: 3, Per: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	begin := time.Now()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { errs <- w.Wait(ctx) })
	}
	wg.Wait()
	elapsed := time.Since(begin)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Wait = %v, want nil", err)
		}
	}
	// Admissions 1, 4 and 7 are each at least 100 ms apart.
	if elapsed < 200*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("%d waits at 3 per 100ms took %v, want 200ms..3s", n, elapsed)
	}
}

// take spends cost on w, failing the test if it does not succeed at once.
func take(t *testing.T, w *Weight, cost int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Take(ctx, cost); err != nil {
		t.Fatalf("Take(%d) = %v, want nil", cost, err)
	}
}

// goTake runs w.Take(ctx, cost) in a goroutine and returns its result channel; the goroutine
// is released and awaited when the test ends.
func goTake(t *testing.T, ctx context.Context, w *Weight, cost int) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { done <- w.Take(ctx, cost) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return done
}

func TestWeightTake(t *testing.T) {
	t0 := start()
	spend := func(t *testing.T, w *Weight) {
		for range 60 {
			take(t, w, 20)
		}
	}
	tests := []struct {
		name     string
		setup    func(t *testing.T, w *Weight)
		during   func(w *Weight, elapsed time.Duration) // called before each clock step
		wantWait time.Duration                          // how long the next Take(20) blocks
		wantUsed int                                    // Used() after it
	}{
		{name: "fits", wantUsed: 20},
		{name: "budget spent waits for next minute", setup: spend, wantWait: 30 * time.Second, wantUsed: 20},
		{
			name:     "observed usage",
			setup:    func(t *testing.T, w *Weight) { w.Observe(1190) },
			wantWait: 30 * time.Second, wantUsed: 20,
		},
		{
			name:     "lower observation ignored",
			setup:    func(t *testing.T, w *Weight) { w.Observe(1190); w.Observe(5) },
			wantWait: 30 * time.Second, wantUsed: 20,
		},
		{
			name:     "observation below own count ignored",
			setup:    func(t *testing.T, w *Weight) { take(t, w, 200); w.Observe(100) },
			wantUsed: 220,
		},
		{
			name:     "block with budget left",
			setup:    func(t *testing.T, w *Weight) { w.Block(t0.Add(10 * time.Second)) },
			wantWait: 10 * time.Second, wantUsed: 20,
		},
		{
			name: "earlier block ignored",
			setup: func(t *testing.T, w *Weight) {
				w.Block(t0.Add(10 * time.Second))
				w.Block(t0.Add(5 * time.Second))
			},
			wantWait: 10 * time.Second, wantUsed: 20,
		},
		{
			name:     "expired block",
			setup:    func(t *testing.T, w *Weight) { w.Block(t0.Add(-time.Second)) },
			wantUsed: 20,
		},
		{
			name:  "block extended while waiting",
			setup: func(t *testing.T, w *Weight) { w.Block(t0.Add(10 * time.Second)) },
			during: func(w *Weight, elapsed time.Duration) {
				if elapsed == 5*time.Second {
					w.Block(t0.Add(20 * time.Second))
				}
			},
			wantWait: 20 * time.Second, wantUsed: 20,
		},
		{
			name:     "block ends before the minute does",
			setup:    func(t *testing.T, w *Weight) { spend(t, w); w.Block(t0.Add(10 * time.Second)) },
			wantWait: 30 * time.Second, wantUsed: 20,
		},
		{
			name:     "block outlasts the minute",
			setup:    func(t *testing.T, w *Weight) { spend(t, w); w.Block(t0.Add(45 * time.Second)) },
			wantWait: 45 * time.Second, wantUsed: 20,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := NewFakeClock(t0)
			w := NewWeight(clock, 1200)
			if tt.setup != nil {
				tt.setup(t, w)
			}
			done := goTake(t, context.Background(), w, 20)
			_, err := stepUntil(t, clock, done, 50*time.Millisecond, 2*time.Minute, func(elapsed time.Duration) {
				if tt.during != nil {
					tt.during(w, elapsed)
				}
			})
			if err != nil {
				t.Fatalf("Take(20) = %v, want nil", err)
			}
			if got := clock.Now().Sub(t0); got != tt.wantWait {
				t.Errorf("Take(20) returned after %v, want %v", got, tt.wantWait)
			}
			if got := w.Used(); got != tt.wantUsed {
				t.Errorf("Used() = %d, want %d", got, tt.wantUsed)
			}
		})
	}
}

func TestWeightCost(t *testing.T) {
	tests := []struct {
		name    string
		budget  int
		cost    int
		wantErr bool
	}{
		{"whole budget", 1200, 1200, false},
		{"zero", 1200, 0, false},
		{"above budget", 1200, 1201, true},
		{"negative", 1200, -1, true},
		{"default budget", 0, 1200, false},
		{"above default budget", 0, 1201, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWeight(NewFakeClock(start()), tt.budget)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := w.Take(ctx, tt.cost)
			if (err != nil) != tt.wantErr || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Take(%d) with budget %d = %v, want error %v", tt.cost, tt.budget, err, tt.wantErr)
			}
			want := tt.cost
			if tt.wantErr {
				want = 0
			}
			if got := w.Used(); got != want {
				t.Errorf("Used() = %d, want %d", got, want)
			}
		})
	}
}

func TestWeightUsedResets(t *testing.T) {
	clock := NewFakeClock(start())
	w := NewWeight(clock, 1200)
	take(t, w, 100)
	clock.Advance(30*time.Second - time.Millisecond) // 12:03:59.999
	if got := w.Used(); got != 100 {
		t.Errorf("Used() at 12:03:59.999 = %d, want 100", got)
	}
	clock.Advance(time.Millisecond) // 12:04:00.000
	if got := w.Used(); got != 0 {
		t.Errorf("Used() at 12:04:00 = %d, want 0", got)
	}
	w.Observe(300)
	take(t, w, 20)
	if got := w.Used(); got != 320 {
		t.Errorf("Used() after Observe(300) and Take(20) = %d, want 320", got)
	}
}

func TestWeightCancel(t *testing.T) {
	t0 := start()
	clock := NewFakeClock(t0)
	w := NewWeight(clock, 1200)
	w.Block(t0.Add(10 * time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	done := goTake(t, ctx, w, 20)
	waitFor(t, "Take to block", func() bool { return clock.Waiters() == 1 })
	cancel()
	if err := result(t, "cancelled Take", done); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Take = %v, want %v", err, context.Canceled)
	}
	if got := w.Used(); got != 0 {
		t.Errorf("Used() after a cancelled Take = %d, want 0", got)
	}
}

func TestFakeClock(t *testing.T) {
	t0 := start()
	c := NewFakeClock(t0)
	now := c.After(0)
	later := c.After(time.Second)
	if got := <-now; !got.Equal(t0) {
		t.Errorf("After(0) sent %v, want %v", got, t0)
	}
	c.Advance(time.Second - time.Nanosecond)
	if c.Waiters() != 1 {
		t.Fatalf("Waiters() = %d before the deadline, want 1", c.Waiters())
	}
	c.Set(t0.Add(2 * time.Second))
	if c.Waiters() != 0 {
		t.Fatalf("Waiters() = %d after the deadline, want 0", c.Waiters())
	}
	if got, want := <-later, t0.Add(2*time.Second); !got.Equal(want) {
		t.Errorf("After(1s) sent %v, want %v", got, want)
	}
}

// TestWeightMinuteGuard: a call in the last second of a minute could reach
// Binance in the next one and be counted there; Take holds it until then.
func TestWeightMinuteGuard(t *testing.T) {
	const step = 10 * time.Millisecond
	t0 := start() // 12:03:30 UTC
	for _, tt := range []struct {
		at       time.Duration // after t0
		wantWait time.Duration
	}{
		{29*time.Second - step, 0},      // 12:03:58.990: not guarded
		{29 * time.Second, time.Second}, // 12:03:59.000: the guard starts
		{29*time.Second + 500*time.Millisecond, 500 * time.Millisecond},
		{30 * time.Second, 0}, // a new minute
	} {
		clock := NewFakeClock(t0.Add(tt.at))
		w := NewWeight(clock, 1200)
		done := goTake(t, context.Background(), w, 20)
		waited, err := stepUntil(t, clock, done, step, 2*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if waited != tt.wantWait {
			t.Errorf("Take at %v after 12:03:30 waited %v, want %v", tt.at, waited, tt.wantWait)
		}
	}
}

// stepUntil advances clock by step each time the one Take behind done is
// blocked on it, until done yields, and returns how far it advanced and
// what Take returned. before, if set, runs before each step with the time
// advanced so far. It fails the test past limit.
func stepUntil(t *testing.T, clock *FakeClock, done <-chan error, step, limit time.Duration, before func(time.Duration)) (time.Duration, error) {
	t.Helper()
	for elapsed := time.Duration(0); ; elapsed += step {
		var err error
		finished := false
		waitFor(t, "Take to return or block", func() bool {
			select {
			case err = <-done:
				finished = true
				return true
			default:
				return clock.Waiters() == 1
			}
		})
		if finished {
			return elapsed, err
		}
		if elapsed > limit {
			t.Fatalf("Take still blocked after %v of fake time", elapsed)
		}
		if before != nil {
			before(elapsed)
		}
		clock.Advance(step)
	}
}
