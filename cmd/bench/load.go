package main

import (
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

//go:embed naive_recorder.py
var naiveRecorder []byte

// pacer publishes rate trades per second in total, spread evenly over
// symbols, in 10 ms steps, until stopped. total counts what it published.
type pacer struct {
	total atomic.Int64
	stopc chan struct{}
	wg    sync.WaitGroup
}

func startPacer(x *exchange, syms []string, rate float64) *pacer {
	p := &pacer{stopc: make(chan struct{})}
	perSym := rate / float64(len(syms))
	p.wg.Go(func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		start, sent := time.Now(), 0
		for {
			select {
			case <-p.stopc:
				return
			case now := <-t.C:
				due := int(now.Sub(start).Seconds()*perSym) - sent
				if due <= 0 {
					continue
				}
				for _, s := range syms {
					x.Publish(s, due)
				}
				sent += due
				p.total.Add(int64(due * len(syms)))
			}
		}
	})
	return p
}

func (p *pacer) stop() {
	close(p.stopc)
	p.wg.Wait()
}

// runLoad measures CPU and memory at a realistic load, for the store and,
// subscribed to the same streams of the same fake at the same time, a naive
// Python recorder (websockets + sqlite3, one commit per tick).
func runLoad(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(b.out)
	n := fs.Int("symbols", 100, "symbols")
	rate := fs.Float64("rate", 2000, "trades per second, all symbols together")
	dur := fs.Duration("duration", 2*time.Minute, "measured window (after a 5 s warm-up)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b.note("load: %d symbols, %.0f ticks/s in total, window %v, store and Python recorder side by side", *n, *rate, *dur)
	syms := symbols(*n)
	x, s, dbPath, stop, err := b.recordAll(ctx, "load", syms)
	if err != nil {
		return err
	}
	defer stop()

	py, pyPath, err := b.startPython(x, syms)
	if err != nil {
		b.note("python recorder unavailable, comparison skipped: %v", err)
	} else {
		defer py.stop()
	}
	subs := 1
	if py != nil {
		subs = 2
	}
	if err := x.waitSubscribed(ctx, syms, subs, 60*time.Second); err != nil {
		if py != nil && py.exited() {
			return fmt.Errorf("%w\npython: %s", err, py.logs())
		}
		return err
	}

	pub := startPacer(x, syms, *rate)
	defer func() {
		if pub != nil {
			pub.stop()
		}
	}()
	select { // warm-up: connections, statement cache, GC steady state
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Second):
	}
	pids := []int{s.pid()}
	if py != nil {
		pids = append(pids, py.pid())
	}
	smp := startSampler(time.Second, pids, []string{dbPath + "-wal"})
	t0, ticks0 := time.Now(), pub.total.Load()
	cpuS0, err := cpuSeconds(s.pid())
	if err != nil {
		return err
	}
	var cpuP0 float64
	if py != nil {
		cpuP0, _ = cpuSeconds(py.pid())
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(*dur):
	}
	cpuS1, _ := cpuSeconds(s.pid())
	var cpuP1 float64
	if py != nil {
		cpuP1, _ = cpuSeconds(py.pid())
	}
	window, ticks := time.Since(t0), pub.total.Load()-ticks0
	smp.stop()
	st, _ := procStatus(s.pid())
	pub.stop()
	pub = nil

	// Both must have kept up: every published trade stored.
	want := make(map[string]int64, len(syms))
	for _, sym := range syms {
		want[sym] = int64(len(x.Trades(sym)))
	}
	storeMissing, err := waitCounts(ctx, dbPath, want, 30*time.Second)
	if err != nil {
		return err
	}
	b.report("load_ticks_in_window", ticks, "ticks")
	b.report("load_rate", float64(ticks)/window.Seconds(), "ticks/s")
	b.report("load_store_missing", storeMissing, "ids")
	storeCPU := cpuS1 - cpuS0
	b.report("load_store_cpu", 100*storeCPU/window.Seconds(), "%core")
	b.report("load_store_cpu_per_tick", 1e6*storeCPU/float64(ticks), "us")
	b.report("load_store_rss_max", smp.rssMB(s.pid()), "MB")
	b.report("load_store_vmhwm", float64(st["VmHWM"])/1024, "MB")
	b.report("load_store_threads", st["Threads"], "threads")
	b.report("load_wal_max", smp.sizeMB(dbPath+"-wal"), "MB")
	if py == nil {
		return nil
	}
	pyCPU := cpuP1 - cpuP0
	pyMissing, err := waitCounts(ctx, pyPath, want, 30*time.Second)
	if err != nil {
		b.note("python recorder did not keep up: %v", err)
	}
	b.report("load_python_missing", pyMissing, "ids")
	b.report("load_python_cpu", 100*pyCPU/window.Seconds(), "%core")
	b.report("load_python_cpu_per_tick", 1e6*pyCPU/float64(ticks), "us")
	b.report("load_python_rss_max", smp.rssMB(py.pid()), "MB")
	b.report("load_cpu_per_tick_ratio_store_to_python", storeCPU/pyCPU, "x")
	return nil
}

// startPython starts the naive recorder on its own database file.
func (b *bench) startPython(x *exchange, syms []string) (*proc, string, error) {
	if out, err := exec.Command(b.python, "-c", "import websockets, sqlite3; print(websockets.__version__)").CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("%s cannot import websockets: %v: %s", b.python, err, out)
	} else {
		b.note("python recorder: %s, websockets %s", b.python, string(out[:len(out)-1]))
	}
	dir, err := os.MkdirTemp(b.tmp, "python-")
	if err != nil {
		return nil, "", err
	}
	script := filepath.Join(dir, "naive_recorder.py")
	if err := os.WriteFile(script, naiveRecorder, 0o644); err != nil {
		return nil, "", err
	}
	dbPath := filepath.Join(dir, "python.db")
	p, err := startProc(b.python, filepath.Join(dir, "python.log"), nil, append([]string{script, dbPath, x.wsURL()}, syms...)...)
	return p, dbPath, err
}

// waitCounts waits until each table of path holds want[sym] rows; it
// returns how many are still missing when it gives up.
func waitCounts(ctx context.Context, path string, want map[string]int64, timeout time.Duration) (int64, error) {
	db, err := openDB(path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var missing int64
	err = poll(ctx, timeout, 100*time.Millisecond, func() (bool, error) {
		missing = 0
		for sym, w := range want {
			var n int64
			err := db.QueryRowContext(ctx, fmt.Sprintf(`SELECT count(*) FROM "prices_%s"`, sym)).Scan(&n)
			if err != nil {
				return false, err
			}
			missing += w - n
		}
		return missing == 0, nil
	}, "every trade stored")
	return missing, err
}

// runLatency measures, at a realistic background load, the time from
// Publish on the fake to the row being visible to another connection: the
// fake's queue and socket write, the store's read, parse, lock wait and
// commit, and one poll. The store has no hook to time frame-read to commit
// inside the process; this is the end-to-end bound of it.
func runLatency(ctx context.Context, b *bench, args []string) error {
	fs := flag.NewFlagSet("latency", flag.ContinueOnError)
	fs.SetOutput(b.out)
	n := fs.Int("symbols", 100, "symbols (one of them carries the probes)")
	rate := fs.Float64("rate", 2000, "background trades per second on the other symbols")
	dur := fs.Duration("duration", 20*time.Second, "how long to probe")
	every := fs.Duration("every", 20*time.Millisecond, "probe interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b.note("latency: publish-to-visible of one probe trade every %v, %d symbols, %.0f ticks/s background", *every, *n, *rate)
	syms := symbols(*n)
	x, _, dbPath, stop, err := b.recordAll(ctx, "latency", syms)
	if err != nil {
		return err
	}
	defer stop()
	db, err := openDB(dbPath)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	probe := syms[0]
	var st *sql.Stmt
	err = poll(ctx, 10*time.Second, 20*time.Millisecond, func() (bool, error) {
		st, err = db.Prepare(fmt.Sprintf(`SELECT coalesce(MAX(id), 0) FROM "prices_%s"`, probe))
		return err == nil, nil
	}, "the probe table")
	if err != nil {
		return err
	}
	defer st.Close()

	pub := startPacer(x, syms[1:], *rate)
	defer pub.stop()
	var lat []time.Duration
	var lost int
	end := time.Now().Add(*dur)
	for time.Now().Before(end) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t0 := time.Now()
		id := x.Publish(probe, 1)[0].ID
		for {
			var got int64
			if err := st.QueryRow().Scan(&got); err != nil {
				return err
			}
			if got >= id {
				lat = append(lat, time.Since(t0))
				break
			}
			if time.Since(t0) > 5*time.Second {
				lost++
				break
			}
		}
		time.Sleep(*every) // probe pacing
	}
	if len(lat) == 0 {
		return errors.New("no probe was stored")
	}
	b.report("latency_probes", len(lat), "trades")
	b.report("latency_probes_lost", lost, "trades")
	b.report("latency_publish_to_visible_p50", percentile(lat, 50), "ms")
	b.report("latency_publish_to_visible_p90", percentile(lat, 90), "ms")
	b.report("latency_publish_to_visible_p99", percentile(lat, 99), "ms")
	b.report("latency_publish_to_visible_max", percentile(lat, 100), "ms")
	return nil
}
