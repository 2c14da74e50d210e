package reliability

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCrashSafety kills the store with SIGKILL at random moments while 50
// symbols trade: after each kill the file passes integrity_check and is still
// in WAL mode; after the last restart every generated id from each symbol's
// first stored one is stored once, with its time and price.
func TestCrashSafety(t *testing.T) {
	skipShort(t)
	kills := pick(5, 50)
	if v := os.Getenv("RELIABILITY_KILLS"); v != "" {
		kills, _ = strconv.Atoi(v)
	}
	rng := rand.New(rand.NewPCG(seed(t), 1))
	syms := symbols("K", 50)
	f := newFixture(t, "", syms...)
	// Repair after a restart is paced by the REST budget (20 weight per
	// call): the short run uses Binance's whole 2400 to stay fast, the full
	// run the default 1200.
	f.env["REST_WEIGHT_PER_MINUTE"] = pick("2400", "1200")
	s, db := f.startRecording(t, syms)
	const rate = 20 // per symbol: 1,000 ticks/s in all
	l := startLoad(t, f.x, rate, syms)

	for i := range kills {
		// The kill lands at a random moment: during start-up, the audit,
		// backfill or live writes. The wait is the fault's timing, not
		// synchronisation.
		d := randomDuration(rng, 100*time.Millisecond, 3*time.Second)
		time.Sleep(d)
		s.kill()
		checkFile(t, f.dbPath)
		t.Logf("kill %d after %v: integrity ok, wal", i+1, d.Round(time.Millisecond))
		s = f.start(t)
	}
	waitFor(t, "resubscription after the last restart", subscribeWait(len(syms)), func() bool { return allSubscribed(f.x, syms) })
	streamed(t, db, f.x, syms, 30*time.Second)
	stopped := time.Now()
	l.stop()
	if path := os.Getenv("RELIABILITY_DEBUG_LOG"); path != "" {
		t.Cleanup(func() { os.WriteFile(path, []byte(s.stdout.String()), 0o644) })
	}
	sum, took := waitComplete(t, db, f.x, syms, 90*time.Second)
	checkFile(t, f.dbPath)
	checkLogLines(t, s.stdout.String())
	figure(t, "kills=%d symbols=%d load=%d/s rest_weight=%s %v complete %v after the load stopped (%v after the last restart's subscriptions)",
		kills, len(syms), rate*len(syms), f.env["REST_WEIGHT_PER_MINUTE"], sum, took.Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
}

// TestGracefulStopUnderLoad sends SIGTERM while ticks flow: exit 0 within
// 10 s, no WAL left to recover, what was stored is right, and after a restart
// everything is complete.
func TestGracefulStopUnderLoad(t *testing.T) {
	skipShort(t)
	rounds := pick(3, 10)
	syms := symbols("G", 20)
	f := newFixture(t, "", syms...)
	const rate = 50 // per symbol
	var stops []string
	var before tally
	l := startLoad(t, f.x, rate, syms)
	for round := range rounds {
		s := f.start(t)
		db := openDB(t, f.dbPath)
		if round == 0 {
			enable(t, db, syms)
		}
		waitFor(t, "subscriptions", subscribeWait(len(syms)), func() bool { return allSubscribed(f.x, syms) })
		var n int
		waitFor(t, "ticks stored in this run", 30*time.Second, func() bool {
			db.QueryRow(fmt.Sprintf(`SELECT count(*) FROM "prices_%s"`, syms[0])).Scan(&n)
			return n > (round+1)*200
		})
		db.Close() // a reader left open keeps the WAL file alive, by design of SQLite

		took, ok := s.term(10 * time.Second)
		if !ok {
			t.Fatalf("round %d: still running %v after SIGTERM\n%s", round, took, s.stdout)
		}
		if s.err != nil {
			t.Fatalf("round %d: exit after SIGTERM: %v\nstderr: %s", round, s.err, s.stderr)
		}
		if !strings.Contains(s.stdout.String(), `msg="tick store stopped"`) {
			t.Errorf("round %d: no clean stop logged", round)
		}
		if n := fileSize(f.dbPath + "-wal"); n != 0 {
			t.Errorf("round %d: %s-wal is %d bytes after a clean stop, want absent or empty", round, f.dbPath, n)
		}
		_, shmErr := os.Stat(f.dbPath + "-shm")
		checkFile(t, f.dbPath)
		check := openDB(t, f.dbPath)
		tl := consistent(t, check, f.x, syms)
		check.Close()
		before = before.add(tl)
		checkLogLines(t, s.stdout.String())
		stops = append(stops, fmt.Sprintf("%v (shm left: %v, ids pending repair: %d)", took.Round(time.Millisecond), shmErr == nil, tl.Missing))
	}
	s := f.start(t)
	defer func() {
		if path := os.Getenv("RELIABILITY_DEBUG_LOG"); path != "" && t.Failed() {
			os.WriteFile(path, []byte(s.stdout.String()), 0o644)
		}
	}()
	db := openDB(t, f.dbPath)
	waitFor(t, "subscriptions", subscribeWait(len(syms)), func() bool { return allSubscribed(f.x, syms) })
	streamed(t, db, f.x, syms, 30*time.Second)
	l.stop()
	sum, took := waitComplete(t, db, f.x, syms, 60*time.Second)
	figure(t, "rounds=%d symbols=%d load=%d/s exits=[%s]; rows checked right after the stops: %d (wrong 0); final %v complete %v after the load stopped",
		rounds, len(syms), rate*len(syms), strings.Join(stops, ", "), before.Stored, sum, took.Round(time.Millisecond))
}
