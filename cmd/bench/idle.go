package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/limit"
	"binance-symbol-tick-store/internal/rest"
	"binance-symbol-tick-store/internal/websocket"
)

// runIdle enables many symbols that never trade and follows the server's
// RSS and threads while they connect. The server admits 300 connection
// attempts per 5 minutes (Binance's per-IP limit), so 1,000 symbols take
// just over 15 minutes to be all connected. The server has no pprof
// endpoint: goroutines per symbol are counted in-process, on the same
// websocket.Client the server runs, from a stack dump.
func runIdle(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	fs.SetOutput(b.out)
	n := fs.Int("symbols", 1000, "enabled symbols")
	dur := fs.Duration("duration", 17*time.Minute, "give up waiting for all connections after this")
	every := fs.Duration("every", 30*time.Second, "progress line interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b.note("idle: %d enabled symbols, no trades; waiting up to %v for all to connect", *n, *dur)
	syms := symbols(*n)

	perSym, err := goroutinesPerClient(ctx, b, min(*n, 200))
	if err != nil {
		return err
	}
	b.report("idle_goroutines_per_symbol", perSym, "goroutines")

	x := startExchange(syms)
	defer x.close()
	dbPath := tempPath(b, "idle")
	s, err := b.startServer(ctx, x, dbPath)
	if err != nil {
		return err
	}
	defer s.stop()
	time.Sleep(time.Second) // let the empty server settle before the baseline
	st, err := procStatus(s.pid())
	if err != nil {
		return err
	}
	base := st["VmRSS"]
	b.report("idle_rss_no_symbols", float64(base)/1024, "MB")
	if err := enable(ctx, dbPath, syms); err != nil {
		return err
	}
	start := time.Now()
	var maxRSS int64
	var conns int
	t := time.NewTicker(*every)
	defer t.Stop()
	for {
		conns = x.Connections()
		st, err = procStatus(s.pid())
		if err != nil {
			return err
		}
		maxRSS = max(maxRSS, st["VmRSS"])
		b.note("idle after %3.0fs: connected %4d  rss %6.1f MB  threads %d",
			time.Since(start).Seconds(), conns, float64(st["VmRSS"])/1024, st["Threads"])
		if conns >= *n || time.Since(start) > *dur {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	// Once all are connected, give the runtime a moment and sample again.
	if conns >= *n {
		time.Sleep(10 * time.Second)
		st, _ = procStatus(s.pid())
		maxRSS = max(maxRSS, st["VmRSS"])
	}
	b.report("idle_connected", conns, "connections")
	b.report("idle_connect_time", time.Since(start).Seconds(), "s")
	b.report("idle_rss", float64(st["VmRSS"])/1024, "MB")
	b.report("idle_rss_max", float64(maxRSS)/1024, "MB")
	b.report("idle_vmhwm", float64(st["VmHWM"])/1024, "MB")
	b.report("idle_threads", st["Threads"], "threads")
	if conns > 0 {
		b.report("idle_rss_per_symbol", float64(st["VmRSS"]-base)/float64(conns), "kB")
	}
	return nil
}

// goroutinesPerClient runs n websocket.Clients (no attempt limit) against
// a fake exchange in this process and counts, from a stack dump, the
// goroutines that belong to them once all are connected.
func goroutinesPerClient(ctx context.Context, b *bench, n int) (float64, error) {
	syms := symbols(n)
	x := startExchange(syms)
	defer x.close()
	db, err := database.Open(ctx, tempPath(b, "goroutines"))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	rc := rest.New(x.srv.URL, limit.NewWeight(limit.Real(), 0), logger)
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for _, s := range syms {
		c := websocket.New(websocket.Config{Symbol: s, BaseURL: x.wsURL(), Store: db, REST: rc, Logger: logger})
		wg.Go(func() { c.Run(cctx) })
	}
	if err := x.waitSubscribed(ctx, syms, 1, time.Minute); err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<20)
	dump := string(buf[:runtime.Stack(buf, true)])
	count := 0
	for g := range strings.SplitSeq(dump, "\n\n") {
		if strings.Contains(g, "/internal/fakebinance.") || strings.Contains(g, "net/http.(*conn).serve") {
			continue
		}
		if strings.Contains(g, "/internal/websocket.") || strings.Contains(g, "/internal/backfill.") {
			count++
		}
	}
	return float64(count) / float64(n), nil
}
