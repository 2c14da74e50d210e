package reliability

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// goroutineRE matches the header of each goroutine in a SIGQUIT dump.
var goroutineRE = regexp.MustCompile(`(?m)^goroutine [1-9]\d* `)

// goroutines ends s with SIGQUIT (GOTRACEBACK=all) and counts the
// goroutines in its dump: the binary has no pprof endpoint.
func goroutines(t *testing.T, s *server) int {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		t.Fatal("no exit 15 s after SIGQUIT")
	}
	return len(goroutineRE.FindAllString(s.stderr.String(), -1))
}

// TestChurn lists 1,000 symbols, enables them all and flaps them (disable,
// enable, delete, re-insert under another spelling) with a 100 ms poll.
// Never two live subscriptions for one symbol; once all are disabled,
// descriptors and goroutines return to the baseline.
func TestChurn(t *testing.T) {
	skipShort(t)
	dur := pick(15*time.Second, 10*time.Minute)
	rng := rand.New(rand.NewPCG(seed(t), 7))
	syms := symbols("Q", 1000)
	f := newFixture(t, "", syms...)
	f.env["SETTINGS_POLL_INTERVAL"] = "100ms"

	// Baseline: an identical process with nothing enabled.
	b := f.start(t, "GOTRACEBACK=all")
	base := readProc(t, b.pid())
	baseG := goroutines(t, b)

	s := f.start(t, "GOTRACEBACK=all")
	db := openDB(t, f.dbPath)
	l := startLoad(t, f.x, 1, syms) // 1,000 ticks/s over all symbols
	enable(t, db, syms)

	var violations atomic.Int64
	var worst atomic.Value
	var samples atomic.Int64
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // never two live subscriptions for one symbol
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				samples.Add(1)
				for _, sym := range syms {
					if n := f.x.Subscribers(sym); n > 1 {
						violations.Add(1)
						worst.Store(fmt.Sprintf("%s had %d subscribers", sym, n))
					}
				}
			}
		}
	})
	var peak procStats
	var mu sync.Mutex
	wg.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				p := readProc(t, s.pid())
				mu.Lock()
				peak.FDs, peak.Threads, peak.RSSKiB = max(peak.FDs, p.FDs), max(peak.Threads, p.Threads), max(peak.RSSKiB, p.RSSKiB)
				mu.Unlock()
			}
		}
	})

	ops := 0
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		ops += flap(t, db, rng, syms)
		time.Sleep(randomDuration(rng, 50*time.Millisecond, 250*time.Millisecond)) // pacing of the user's edits
	}
	mid := readProc(t, s.pid())
	exec1(t, db, `UPDATE symbol_settings SET enabled = 0`)
	disabled := time.Now()
	waitFor(t, "every stream closed", 60*time.Second, func() bool { return f.x.Connections() == 0 && f.x.Subscribers(syms[0]) == 0 })
	closed := time.Since(disabled)
	var after procStats
	waitFor(t, "descriptors back to the baseline", 60*time.Second, func() bool {
		after = readProc(t, s.pid())
		return after.FDs <= base.FDs+2
	})
	close(quit)
	wg.Wait()
	l.stop()
	if s.exited() {
		t.Fatalf("server exited during churn: %v", s.err)
	}
	checkLogLines(t, s.stdout.String())
	g := goroutines(t, s)
	if violations.Load() > 0 {
		t.Errorf("%d samples with two live subscriptions for one symbol, e.g. %v", violations.Load(), worst.Load())
	}
	if g > baseG+5 {
		t.Errorf("%d goroutines after all symbols were disabled, baseline %d", g, baseG)
	}
	var tables int
	db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name LIKE 'prices%'`).Scan(&tables)
	figure(t, "1000 symbols, %v of flapping (%d edits, poll 100ms, 1000 ticks/s), %d subscriber samples x 1000 symbols: %d with two live subscriptions; %d connection attempts; all streams closed %v after disable-all; baseline %v goroutines=%d; peak %v; end of churn %v; after disable-all %v goroutines=%d; prices tables=%d",
		dur, ops, samples.Load(), violations.Load(), len(f.x.Attempts()), closed.Round(time.Millisecond), base, baseG, peak, mid, after, g, tables)
}

// flap applies one random edit to a batch of symbols; it returns the count.
func flap(t *testing.T, db *sql.DB, rng *rand.Rand, syms []string) int {
	t.Helper()
	n := 1 + rng.IntN(50)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		sym := syms[rng.IntN(len(syms))]
		var q string
		var args []any
		switch rng.IntN(6) {
		case 0:
			q, args = `UPDATE symbol_settings SET enabled = 0 WHERE symbol = ?`, []any{sym}
		case 1:
			q, args = `UPDATE symbol_settings SET enabled = 1 WHERE symbol = ?`, []any{sym}
		case 2:
			q, args = `DELETE FROM symbol_settings WHERE symbol = ?`, []any{sym}
		case 3:
			q, args = `INSERT OR REPLACE INTO symbol_settings (symbol, enabled) VALUES (?, 1)`, []any{sym}
		case 4: // same symbol, other spelling: still one stream
			q, args = `INSERT OR REPLACE INTO symbol_settings (symbol, enabled) VALUES (?, ?)`, []any{" " + strings.ToLower(sym) + " ", rng.IntN(2)}
		case 5:
			q, args = `DELETE FROM symbol_settings WHERE symbol = ?`, []any{" " + strings.ToLower(sym) + " "}
		}
		if _, err := tx.Exec(q, args...); err != nil {
			tx.Rollback()
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return n
}
