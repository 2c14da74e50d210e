package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"time"
)

// runBackfill stops the store, lets the fake trade -gap ids while it is
// down, restarts it with live trades flowing at -live per second, and times
// the repair through the fake REST at the default weight budget (1200 per
// minute: 60 pages of 1000 ids).
func runBackfill(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(b.out)
	gap := fs.Int("gap", 72_000, "ids traded while the store is down (72,000 = one hour at 20 trades/s)")
	live := fs.Float64("live", 20, "live trades per second during the repair")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b.note("backfill: gap of %d ids after a restart, %.0f live trades/s, REST_WEIGHT_PER_MINUTE default (1200)", *gap, *live)
	sym := "BTCUSDT"
	x := startExchange([]string{sym})
	defer x.close()
	dbPath := tempPath(b, "backfill")
	s, err := b.startServer(ctx, x, dbPath)
	if err != nil {
		return err
	}
	if err := enable(ctx, dbPath, []string{sym}); err != nil {
		s.stop()
		return err
	}
	if err := x.waitSubscribed(ctx, []string{sym}, 1, 30*time.Second); err != nil {
		s.stop()
		return err
	}
	x.Publish(sym, 10)
	db, err := openDB(dbPath)
	if err != nil {
		s.stop()
		return err
	}
	defer db.Close()
	count := func(from, to int64) (n int64, err error) {
		err = db.QueryRowContext(ctx, `SELECT count(*) FROM "prices_BTCUSDT" WHERE id BETWEEN ? AND ?`, from, to).Scan(&n)
		return n, err
	}
	if err := poll(ctx, 10*time.Second, 20*time.Millisecond, func() (bool, error) {
		n, err := count(0, 1<<62)
		return n == 10, err
	}, "the first trades"); err != nil {
		s.stop()
		return err
	}
	if err := s.stop(); err != nil {
		return fmt.Errorf("server stop: %w", err)
	}

	var from, to int64
	for left := *gap; left > 0; left -= 10_000 {
		tr := x.Publish(sym, min(left, 10_000))
		if from == 0 {
			from = tr[0].ID
		}
		to = tr[len(tr)-1].ID
	}
	calls0 := len(x.RESTCalls())
	s, err = b.startServer(ctx, x, dbPath)
	if err != nil {
		return err
	}
	defer s.stop()
	if err := x.waitSubscribed(ctx, []string{sym}, 1, 30*time.Second); err != nil {
		return err
	}
	pub := startPacer(x, []string{sym}, *live)
	defer pub.stop()
	t0 := time.Now()
	if err := poll(ctx, 5*time.Minute, 50*time.Millisecond, func() (bool, error) {
		n, err := count(from, to)
		return n == int64(*gap), err
	}, "the gap to be repaired"); err != nil {
		return err
	}
	elapsed := time.Since(t0)
	calls := x.RESTCalls()[calls0:]
	// Pages not held back by the budget follow each other within a second:
	// their spacing is the repair's own speed (REST, parse, one transaction).
	var steps []time.Duration
	for i := 1; i < len(calls); i++ {
		if d := calls[i].At.Sub(calls[i-1].At); d < time.Second {
			steps = append(steps, d)
		}
	}
	sort.Slice(steps, func(i, j int) bool { return steps[i] < steps[j] })
	b.report("backfill_gap", *gap, "ids")
	b.report("backfill_rest_calls", len(calls), "calls")
	b.report("backfill_time", elapsed.Seconds(), "s")
	b.report("backfill_rate", float64(*gap)/elapsed.Seconds(), "ticks/s")
	if len(steps) > 0 {
		page := percentile(steps, 50)
		b.report("backfill_page_interval_p50", page, "ms")
		b.report("backfill_unthrottled_rate", 1000/page.Seconds(), "ticks/s")
	}
	b.report("backfill_budget_ceiling", 1200.0/20*1000/60, "ticks/s")
	return nil
}
