package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// runIngest measures the live path at saturation. The fake exchange
// publishes to 100 symbols as fast as the store absorbs them: a publisher
// only gets ahead of what the store has committed by -window trades per
// symbol, because the fake cuts a subscriber that lags 4096 frames behind
// (and the repair of such a cut goes through REST, not the live path). The
// store's rate is compared with a bare one-row-per-commit loop over the same
// number of tables, run in the same process before and after.
func runIngest(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	fs.SetOutput(b.out)
	n := fs.Int("symbols", 100, "symbols")
	dur := fs.Duration("duration", 30*time.Second, "how long to publish (the bare loop runs as long, half before, half after)")
	window := fs.Int64("window", 200, "trades a symbol may be published ahead of what the store has committed")
	publishers := fs.Int("publishers", 2, "publishing goroutines")
	batch := fs.Int("batch", 10, "trades per Publish call")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b.note("ingest: %d symbols, firehose for %v (window %d per symbol), bare loop %v", *n, *dur, *window, *dur)
	syms := symbols(*n)

	limitBefore, cpuBefore, err := bareLoop(ctx, tempPath(b, "bare1"), *n, *dur/2, "INSERT")
	if err != nil {
		return err
	}

	x := startExchange(syms)
	defer x.close()
	dbPath := tempPath(b, "ingest")
	s, err := b.startServer(ctx, x, dbPath)
	if err != nil {
		return err
	}
	defer s.stop()
	if err := enable(ctx, dbPath, syms); err != nil {
		return err
	}
	if err := x.waitSubscribed(ctx, syms, 1, 60*time.Second); err != nil {
		return err
	}
	attempts0 := len(x.Attempts())

	w, err := newWatcher(dbPath, syms)
	if err != nil {
		return err
	}
	defer w.close()

	published := make([]atomic.Int64, len(syms))
	first := make([]int64, len(syms))
	for i, sym := range syms {
		t := x.Publish(sym, 1) // the first trade tells the ids apart
		first[i] = t[0].ID
		published[i].Store(1)
	}
	if err := w.waitAll(ctx, published, 30*time.Second, nil); err != nil {
		return err
	}

	// The measured window starts at the first publish of the firehose and
	// ends when the last trade is committed.
	base := make([]int64, len(syms))
	for i := range syms {
		base[i] = w.stored(i)
	}
	sampler := startSampler(200*time.Millisecond, []int{s.pid()}, []string{dbPath + "-wal"})
	cpu0, err := cpuSeconds(s.pid())
	if err != nil {
		return err
	}
	self0 := selfCPU()
	pctx, stopPublish := context.WithTimeout(ctx, *dur)
	defer stopPublish()
	var wg sync.WaitGroup
	start := time.Now()
	watchDone := make(chan struct{})
	var watchErr error
	go func() {
		defer close(watchDone)
		// Every poll is 100 read transactions; polled too often, they keep
		// the WAL from being reset and it grows (as any busy reader would).
		watchErr = w.follow(pctx, 100*time.Millisecond)
	}()
	for p := range *publishers {
		wg.Go(func() {
			for pctx.Err() == nil {
				progressed := false
				for i := p; i < len(syms); i += *publishers {
					if published[i].Load()-w.stored(i) < *window {
						x.Publish(syms[i], *batch)
						published[i].Add(int64(*batch))
						progressed = true
					}
				}
				if !progressed {
					w.waitRound(pctx)
				}
			}
		})
	}
	wg.Wait()
	pubEnd := time.Since(start)
	<-watchDone
	if watchErr != nil {
		return watchErr
	}
	var done time.Time
	if err := w.waitAll(ctx, published, 60*time.Second, &done); err != nil {
		return fmt.Errorf("not every trade stored: %w", err)
	}
	elapsed := done.Sub(start)
	cpu1, _ := cpuSeconds(s.pid())
	self1 := selfCPU()
	sampler.stop()

	var total int64
	for i := range syms {
		total += published[i].Load() - base[i]
	}
	rate := float64(total) / elapsed.Seconds()

	if err := s.stop(); err != nil {
		return fmt.Errorf("server stop: %w", err)
	}
	missing, err := checkComplete(dbPath, syms, first, published)
	if err != nil {
		return err
	}
	rest := len(x.RESTCalls())
	reconnects := len(x.Attempts()) - attempts0
	x.close()

	limitAfter, cpuAfter, err := bareLoop(ctx, tempPath(b, "bare2"), *n, *dur/2, "INSERT")
	if err != nil {
		return err
	}
	limit := (limitBefore + limitAfter) / 2
	limitCPU := (cpuBefore + cpuAfter) / 2
	serverCPU := 1e6 * (cpu1 - cpu0) / float64(total)

	b.report("ingest_trades", total, "ticks")
	b.report("ingest_publish_window", pubEnd.Seconds(), "s")
	b.report("ingest_last_commit_after", elapsed.Seconds(), "s")
	b.report("ingest_rate", rate, "ticks/s")
	b.report("ingest_missing_ids", missing, "ids")
	b.report("ingest_reconnects", reconnects, "dials")
	b.report("ingest_rest_calls", rest, "calls")
	b.report("ingest_server_cpu", 100*(cpu1-cpu0)/elapsed.Seconds(), "%core")
	b.report("ingest_server_cpu_per_tick", serverCPU, "us")
	b.report("ingest_bench_cpu", 100*(self1-self0)/elapsed.Seconds(), "%core(fake+publishers+poller)")
	b.report("ingest_server_rss_max", sampler.rssMB(s.pid()), "MB")
	b.report("ingest_wal_max", sampler.sizeMB(dbPath+"-wal"), "MB")
	b.report("limit_bare_insert_before", limitBefore, "rows/s")
	b.report("limit_bare_insert_after", limitAfter, "rows/s")
	b.report("limit_bare_insert", limit, "rows/s")
	b.report("limit_bare_insert_cpu_per_row", limitCPU, "us")
	b.report("ingest_ratio_to_limit", rate/limit, "x")
	// CPU per tick is steadier than a rate on a shared machine: a process
	// that waits for a core does not spend CPU meanwhile.
	b.report("ingest_cpu_ratio_limit_to_server", limitCPU/serverCPU, "x")
	if missing != 0 {
		return fmt.Errorf("%d ids missing", missing)
	}
	return nil
}

// bareLoop is the limit of the design: one row per commit through
// database/sql and modernc, the store's DSN pragmas and DDL, a prepared
// statement per table, tables taken in turn, for d. It returns rows per
// second and the CPU microseconds of this process per row.
func bareLoop(ctx context.Context, path string, tables int, d time.Duration, verb string) (rate, cpuPerRow float64, err error) {
	dsn := path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	stmts := make([]*sql.Stmt, tables)
	for i, sym := range symbols(tables) {
		ddl := fmt.Sprintf(`CREATE TABLE "prices_%[1]s" (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp INTEGER NOT NULL,
    price     REAL NOT NULL
);
CREATE INDEX "idx_prices_%[1]s_timestamp" ON "prices_%[1]s"(timestamp)`, sym)
		if _, err := conn.ExecContext(ctx, ddl); err != nil {
			return 0, 0, err
		}
		st, err := conn.PrepareContext(ctx, fmt.Sprintf(`%s INTO "prices_%s" (id, timestamp, price) VALUES (?, ?, ?)`, verb, sym))
		if err != nil {
			return 0, 0, err
		}
		defer st.Close()
		stmts[i] = st
	}
	cpu0, start := selfCPU(), time.Now()
	rows := 0
	for time.Since(start) < d {
		for range 100 {
			i := rows % tables
			k := int64(rows / tables)
			if _, err := stmts[i].ExecContext(ctx, 3_400_000_000+k, 1_780_000_000_000+k*7, 83_000+float64(k%10_000)/100+0.01); err != nil {
				return 0, 0, err
			}
			rows++
		}
	}
	elapsed, cpu := time.Since(start), selfCPU()-cpu0
	return float64(rows) / elapsed.Seconds(), 1e6 * cpu / float64(rows), nil
}

// watcher follows MAX(id) of each prices table from a separate connection,
// the way another program reading the file would.
type watcher struct {
	db    *sql.DB
	stmts []*sql.Stmt
	first []int64 // first id seen per table, 0 before
	max   []atomic.Int64
	mu    sync.Mutex
	round chan struct{} // closed after each poll
}

func newWatcher(path string, syms []string) (*watcher, error) {
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	w := &watcher{db: db, max: make([]atomic.Int64, len(syms)), first: make([]int64, len(syms)), round: make(chan struct{})}
	for _, s := range syms {
		st, err := db.Prepare(fmt.Sprintf(`SELECT coalesce((SELECT MAX(id) FROM "prices_%[1]s"), 0), coalesce((SELECT MIN(id) FROM "prices_%[1]s"), 0)`, s))
		if err != nil {
			db.Close()
			return nil, err
		}
		w.stmts = append(w.stmts, st)
	}
	return w, nil
}

func (w *watcher) close() {
	for _, st := range w.stmts {
		st.Close()
	}
	w.db.Close()
}

// stored returns how many trades of table i are known stored, counting from
// the first id seen (ids are consecutive and unique).
func (w *watcher) stored(i int) int64 {
	m := w.max[i].Load()
	w.mu.Lock()
	f := w.first[i]
	w.mu.Unlock()
	if m == 0 || f == 0 {
		return 0
	}
	return m - f + 1
}

// pollOnce reads every table's MAX(id) once.
func (w *watcher) pollOnce() error {
	for i, st := range w.stmts {
		var mx, mn int64
		if err := st.QueryRow().Scan(&mx, &mn); err != nil {
			return err
		}
		w.max[i].Store(mx)
		w.mu.Lock()
		if w.first[i] == 0 {
			w.first[i] = mn
		}
		w.mu.Unlock()
	}
	w.mu.Lock()
	close(w.round)
	w.round = make(chan struct{})
	w.mu.Unlock()
	return nil
}

// follow polls every interval until ctx ends.
func (w *watcher) follow(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := w.pollOnce(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// waitRound blocks until the next poll completes or ctx ends.
func (w *watcher) waitRound(ctx context.Context) {
	w.mu.Lock()
	r := w.round
	w.mu.Unlock()
	select {
	case <-r:
	case <-ctx.Done():
	}
}

// waitAll polls until every table holds its published count; done, if not
// nil, gets the time of the poll that saw it.
func (w *watcher) waitAll(ctx context.Context, published []atomic.Int64, timeout time.Duration, done *time.Time) error {
	return poll(ctx, timeout, 10*time.Millisecond, func() (bool, error) {
		if err := w.pollOnce(); err != nil {
			return false, err
		}
		for i := range published {
			if w.stored(i) < published[i].Load() {
				return false, nil
			}
		}
		if done != nil {
			*done = time.Now()
		}
		return true, nil
	}, "every published trade to be stored")
}

// checkComplete counts, per table, the ids from first[i] on that are
// missing, given that published[i] trades were generated from first[i].
func checkComplete(path string, syms []string, first []int64, published []atomic.Int64) (int64, error) {
	db, err := openDB(path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var missing int64
	var bad []string
	for i, s := range syms {
		want := published[i].Load()
		var n, lo, hi int64
		err := db.QueryRow(fmt.Sprintf(`SELECT count(*), coalesce(MIN(id), 0), coalesce(MAX(id), 0) FROM "prices_%s" WHERE id >= ?`, s),
			first[i]).Scan(&n, &lo, &hi)
		if err != nil {
			return 0, err
		}
		if n != want || lo != first[i] || hi != first[i]+want-1 {
			missing += want - n
			bad = append(bad, fmt.Sprintf("%s: %d rows, ids %d..%d, want %d from %d", s, n, lo, hi, want, first[i]))
		}
	}
	if len(bad) > 0 {
		return missing, fmt.Errorf("incomplete: %s", strings.Join(bad, "; "))
	}
	return missing, nil
}
