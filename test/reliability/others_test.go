package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWriteLockHeld: another program holds the write lock (BEGIN EXCLUSIVE)
// for longer than the busy timeout while ticks flow; afterwards every tick is
// stored.
func TestWriteLockHeld(t *testing.T) {
	skipShort(t)
	hold := pick(8*time.Second, 30*time.Second)
	syms := symbols("L", 10)
	f := newFixture(t, "", syms...)
	s, db := f.startRecording(t, syms)
	l := startLoad(t, f.x, 20, syms)
	streamed(t, db, f.x, syms, 30*time.Second)

	lock := openDB(t, f.dbPath)
	ctx := context.Background()
	conn, err := lock.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, `BEGIN EXCLUSIVE`); err != nil {
		t.Fatal(err)
	}
	locked := time.Now()
	hStart := time.Now()
	hCode, _, herr := get(t, s.url("/healthz"), 15*time.Second)
	hTook := time.Since(hStart)
	sStart := time.Now()
	sCode, _, serr := get(t, s.url("/status"), 15*time.Second)
	sTook := time.Since(sStart)
	time.Sleep(hold - time.Since(locked)) // the fault's duration, not synchronisation
	if _, err := conn.ExecContext(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	released := time.Now()
	if s.exited() {
		t.Fatalf("server exited during the lock: %v", s.err)
	}
	streamed(t, db, f.x, syms, 60*time.Second)
	l.stop()
	sum, took := waitComplete(t, db, f.x, syms, 90*time.Second)
	checkLogLines(t, s.stdout.String())
	figure(t, "lock held %v under 200 ticks/s; during it /healthz=%d in %v (%v), /status=%d in %v (%v); %v complete %v after the load stopped (%v after the lock was released); 'tick not stored' lines=%d",
		hold, hCode, hTook.Round(time.Millisecond), herr, sCode, sTook.Round(time.Millisecond), serr, sum,
		took.Round(time.Millisecond), time.Since(released).Round(time.Millisecond), strings.Count(s.stdout.String(), "tick not stored"))
}

// walHeader returns the WAL file's size and its checkpoint sequence number,
// which SQLite increments each time the WAL is reset (restarted from its
// beginning after a complete checkpoint).
func walHeader(t *testing.T, path string) (size int64, seq uint32) {
	t.Helper()
	b, err := os.ReadFile(path + "-wal")
	if err != nil || len(b) < 32 {
		return int64(len(b)), 0
	}
	return int64(len(b)), binary.BigEndian.Uint32(b[12:16])
}

// TestLongReader: another program keeps a read transaction open while ticks
// flow. The WAL grows while it is held (nothing past the reader's snapshot
// can be checkpointed); once it ends, checkpoints resume, the WAL is reset
// and reused, and its size stops growing.
func TestLongReader(t *testing.T) {
	skipShort(t)
	hold := pick(6*time.Second, 3*time.Minute)
	rate := pick(50.0, 10.0) // per symbol
	syms := symbols("R", 10)
	f := newFixture(t, "", syms...)
	s, db := f.startRecording(t, syms)
	l := startLoad(t, f.x, rate, syms)
	streamed(t, db, f.x, syms, 30*time.Second)

	reader := openDB(t, f.dbPath)
	ctx := context.Background()
	conn, err := reader.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRowContext(ctx, fmt.Sprintf(`SELECT count(*) FROM "prices_%s"`, syms[0])).Scan(&n); err != nil {
		t.Fatal(err) // the snapshot starts here
	}
	w0, seq0 := walHeader(t, f.dbPath)
	start := time.Now()
	time.Sleep(hold) // the long read, not synchronisation
	w1, seq1 := walHeader(t, f.dbPath)
	if _, err := conn.ExecContext(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	reader.Close()
	heldFor := time.Since(start)
	if w1 <= w0 || seq1 != seq0 {
		t.Errorf("while the read was held: WAL %d -> %d bytes, checkpoint seq %d -> %d; want growth and no reset", w0, w1, seq0, seq1)
	}
	// After it: the same time again at the same load must not grow the WAL:
	// a checkpoint completes and the writer starts over at its beginning.
	released := time.Now()
	var reset time.Duration
	var atReset int64
	waitFor(t, "the WAL to be reset", 30*time.Second, func() bool {
		var seq uint32
		atReset, seq = walHeader(t, f.dbPath)
		reset = time.Since(released)
		return seq != seq1
	})
	deadline := time.Now().Add(heldFor)
	maxAfter := int64(0)
	for time.Now().Before(deadline) {
		w, _ := walHeader(t, f.dbPath)
		maxAfter = max(maxAfter, w)
		time.Sleep(200 * time.Millisecond) // sampling interval, not synchronisation
	}
	if maxAfter > atReset {
		t.Errorf("WAL grew after its reset: %d bytes at the reset, %d after", atReset, maxAfter)
	}
	l.stop()
	sum, took := waitComplete(t, db, f.x, syms, 60*time.Second)
	checkLogLines(t, s.stdout.String())
	figure(t, "read transaction held %v at %.0f ticks/s: WAL %.1f MiB -> %.1f MiB while held (checkpoint seq %d unchanged); reset %v after release at %.1f MiB; max WAL over the next %v: %.1f MiB (file not truncated); %v complete in %v",
		hold, rate*float64(len(syms)), mib(w0), mib(w1), seq0, reset.Round(time.Millisecond), mib(atReset), heldFor.Round(time.Second), mib(maxAfter), sum, took.Round(time.Millisecond))
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// TestDroppedByHand: symbol_settings and a prices table are dropped by hand
// while ticks flow. symbol_settings is recreated empty, so streams stop at
// the next poll (documented); re-enabled, they resume and repair. A dropped
// prices table is recreated, with its index, and storage continues.
func TestDroppedByHand(t *testing.T) {
	skipShort(t)
	syms := symbols("H", 3)
	f := newFixture(t, "", syms...)
	s, db := f.startRecording(t, syms)
	l := startLoad(t, f.x, 50, syms)
	streamed(t, db, f.x, syms, 30*time.Second)

	exec1(t, db, `DROP TABLE symbol_settings`)
	dropped := time.Now()
	waitFor(t, "symbol_settings recreated", 15*time.Second, func() bool {
		var n int
		db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name = 'symbol_settings'`).Scan(&n)
		return n == 1
	})
	recreated := time.Since(dropped)
	waitFor(t, "streams stopped (settings now empty)", 15*time.Second, func() bool {
		for _, sym := range syms {
			if f.x.Subscribers(sym) != 0 {
				return false
			}
		}
		return true
	})
	stoppedAfter := time.Since(dropped)
	enable(t, db, syms)
	waitFor(t, "resubscriptions", subscribeWait(len(syms)), func() bool { return allSubscribed(f.x, syms) })
	streamed(t, db, f.x, syms, 30*time.Second)

	victim := syms[0]
	exec1(t, db, fmt.Sprintf(`DROP TABLE "prices_%s"`, victim))
	dropped = time.Now()
	waitFor(t, "the prices table recreated with its index", 15*time.Second, func() bool {
		var n int
		db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name IN (?, ?)`, "prices_"+victim, "idx_prices_"+victim+"_timestamp").Scan(&n)
		return n == 2
	})
	tableBack := time.Since(dropped)
	streamed(t, db, f.x, syms, 30*time.Second)
	l.stop()
	sum, took := waitComplete(t, db, f.x, syms, 60*time.Second)
	if s.exited() {
		t.Fatalf("server exited: %v", s.err)
	}
	checkLogLines(t, s.stdout.String())
	figure(t, "symbol_settings dropped: recreated after %v, streams stopped after %v (documented), resumed when re-enabled; prices_%s dropped: recreated with index after %v; %v complete in %v (ids checked from the first row of the recreated table)",
		recreated.Round(time.Millisecond), stoppedAfter.Round(time.Millisecond), victim, tableBack.Round(time.Millisecond), sum, took.Round(time.Millisecond))
}

// TestGarbageDatabase: the file at DB_PATH is not a database. The store
// exits 1 at once with one line naming DB_PATH and leaves the file as it was.
func TestGarbageDatabase(t *testing.T) {
	skipShort(t)
	noise := make([]byte, 64<<10)
	rand.Read(noise)
	cases := map[string][]byte{
		"random bytes":         noise,
		"sqlite header, noise": append([]byte("SQLite format 3\x00"), noise[16:]...),
		"text file":            bytes.Repeat([]byte("not a database\n"), 100),
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, filepath.Join(t.TempDir(), "ticks.db"))
			if err := os.WriteFile(f.dbPath, content, 0o644); err != nil {
				t.Fatal(err)
			}
			before := sha256.Sum256(content)
			s := f.launch(t)
			select {
			case <-s.done:
			case <-time.After(15 * time.Second):
				t.Fatalf("still running 15 s after start on a garbage file\n%s", s.stdout)
			}
			code := s.cmd.ProcessState.ExitCode()
			lines := strings.Split(strings.TrimSpace(s.stderr.String()), "\n")
			if code != 1 || len(lines) != 1 || !strings.Contains(lines[0], "DB_PATH") {
				t.Errorf("exit %d, stderr %q; want exit 1 and one line naming DB_PATH", code, s.stderr)
			}
			after, err := os.ReadFile(f.dbPath)
			if err != nil || sha256.Sum256(after) != before {
				t.Errorf("the garbage file was changed (err %v)", err)
			}
			var extra []string
			for _, suffix := range []string{"-wal", "-shm", "-journal"} {
				if _, err := os.Stat(f.dbPath + suffix); err == nil {
					extra = append(extra, suffix)
				}
			}
			if len(extra) > 0 {
				t.Errorf("files created next to the garbage: %v", extra)
			}
			figure(t, "exit %d, stderr %q, file unchanged, stdout lines=%d", code, lines[0], strings.Count(s.stdout.String(), "\n"))
		})
	}
}
