package main

import (
	"database/sql"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"binance-symbol-tick-store/internal/fakebinance"
	"binance-symbol-tick-store/internal/testutil"
)

// server is the compiled store running as a child process.
type server struct {
	cmd  *exec.Cmd
	logs *testutil.SyncBuffer
	done chan error
}

func (f *fixture) startServer(t *testing.T, bin string) *server {
	t.Helper()
	s := &server{cmd: f.command(bin), logs: &testutil.SyncBuffer{}, done: make(chan error, 1)}
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
	})
	testutil.WaitFor(t, "start-up", func() bool { return strings.Contains(s.logs.String(), `msg="tick store started"`) })
	return s
}

// kill ends the server with SIGKILL, as a power cut or the OOM killer would.
func (s *server) kill(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.done <- nil // for the cleanup
}

// publisher keeps trades flowing on the fake exchange until stopped.
type publisher struct {
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func publish(x *fakebinance.Exchange, every time.Duration, syms ...string) *publisher {
	p := &publisher{stop: make(chan struct{})}
	p.wg.Go(func() {
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(every): // trade pacing, not synchronisation
				for _, s := range syms {
					x.Publish(s, 1)
				}
			}
		}
	})
	return p
}

// halt stops publishing; it may be called more than once.
func (p *publisher) halt() {
	p.once.Do(func() { close(p.stop) })
	p.wg.Wait()
}

// waitComplete waits until the table of sym holds exactly the trades the
// exchange generated from the first stored one on.
func (f *fixture) waitComplete(t *testing.T, sym string) {
	t.Helper()
	db := f.sqlite(t)
	var last error
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := stored(t, db, sym)
		want := f.x.Trades(sym)
		if len(got) > 0 {
			for len(want) > 0 && want[0].ID < got[0].ID {
				want = want[1:]
			}
		}
		if last = sameTrades(got, want); last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s incomplete after 30 s: %v; missing %s", sym, last, missingRanges(got, want))
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// recordOne builds the binary, starts it against a fake exchange listing
// sym, enables sym by SQL and waits until its stream is subscribed.
func recordOne(t *testing.T, sym string) (f *fixture, bin string, s *server, db *sql.DB) {
	t.Helper()
	bin = buildServer(t)
	f = newFixture(t, sym)
	s = f.startServer(t, bin)
	db = f.sqlite(t)
	exec1(t, db, `INSERT INTO symbol_settings (symbol) VALUES (?)`, sym)
	testutil.WaitFor(t, "subscription", func() bool { return f.x.Subscribers(sym) == 1 })
	return f, bin, s, db
}

// TestKilledAndRestarted kills the store with SIGKILL while trades flow,
// keeps trading while it is down, restarts it, and expects every trade.
func TestKilledAndRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildServer(t)
	f := newFixture(t, "BTCUSDT", "ETHUSDT")
	// Trading stops right after the last restart: no frame reveals that
	// gap, so the silence check has to, soon.
	f.env["STREAM_SILENCE_TIMEOUT"] = "1s"
	s := f.startServer(t, bin)
	db := f.sqlite(t)
	exec1(t, db, `INSERT INTO symbol_settings (symbol) VALUES ('BTCUSDT'), ('ETHUSDT')`)
	testutil.WaitFor(t, "subscriptions", func() bool { return f.x.Subscribers("BTCUSDT") == 1 && f.x.Subscribers("ETHUSDT") == 1 })
	p := publish(f.x, time.Millisecond, "BTCUSDT", "ETHUSDT")
	defer p.halt()
	testutil.WaitFor(t, "ticks stored", func() bool { return len(stored(t, db, "ETHUSDT")) > 200 })
	for round := range 3 {
		s.kill(t)
		before := len(f.x.Trades("BTCUSDT"))
		testutil.WaitFor(t, "trades while the store is down", func() bool { return len(f.x.Trades("BTCUSDT")) > before+300 })
		s = f.startServer(t, bin)
		testutil.WaitFor(t, fmt.Sprintf("resubscription %d", round), func() bool { return f.x.Subscribers("BTCUSDT") == 1 })
	}
	p.halt()
	defer func() {
		if t.Failed() {
			t.Logf("log of the last run:\n%s", s.logs.String())
		}
	}()
	f.waitComplete(t, "BTCUSDT")
	f.waitComplete(t, "ETHUSDT")
	if !strings.Contains(s.logs.String(), `msg="gap filled"`) {
		t.Errorf("no gap filled in the log of the last run:\n%s", s.logs.String())
	}
}

// TestWritesBlockedByAnotherProgram holds the write lock from another
// connection for longer than the busy timeout: the ticks of that time fail,
// are logged, and are repaired once the lock is gone.
func TestWritesBlockedByAnotherProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("holds a lock past the 5 s busy timeout")
	}
	f, _, s, db := recordOne(t, "BTCUSDT")
	p := publish(f.x, 5*time.Millisecond, "BTCUSDT")
	defer p.halt()
	testutil.WaitFor(t, "ticks stored", func() bool { return len(stored(t, db, "BTCUSDT")) > 50 })

	lock := f.sqlite(t)
	lock.SetMaxOpenConns(1)
	exec1(t, lock, `BEGIN EXCLUSIVE`)
	testutil.WaitFor(t, "a failed write", func() bool { return strings.Contains(s.logs.String(), "tick not stored") })
	exec1(t, lock, `COMMIT`)
	lock.Close()
	p.halt()
	f.waitComplete(t, "BTCUSDT")
}

// TestConnectionAttemptsAreLimited enables many symbols at once: Binance
// must never see more than 10 handshakes in a second.
func TestConnectionAttemptsAreLimited(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a few seconds of real time")
	}
	var syms []string
	for i := range 35 {
		syms = append(syms, fmt.Sprintf("S%02dUSDT", i))
	}
	f := newFixture(t, syms...)
	bin := buildServer(t)
	f.startServer(t, bin)
	db := f.sqlite(t)
	for _, s := range syms {
		exec1(t, db, `INSERT INTO symbol_settings (symbol) VALUES (?)`, s)
	}
	testutil.WaitFor(t, "every symbol connected", func() bool {
		for _, s := range syms {
			if f.x.Subscribers(s) != 1 {
				return false
			}
		}
		return true
	})
	at := f.x.Attempts()
	for i := 10; i < len(at); i++ {
		if d := at[i].At.Sub(at[i-10].At); d < time.Second {
			t.Errorf("attempts %d and %d only %v apart: 11 in one second", i-10, i, d)
		}
	}
}

// TestRESTRateLimitIsObeyed answers the repair's first REST calls with 429
// and Retry-After: no call may come before the wait is over, and the gap is
// still repaired.
func TestRESTRateLimitIsObeyed(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a Retry-After")
	}
	f, bin, s, db := recordOne(t, "BTCUSDT")
	f.x.Publish("BTCUSDT", 10)
	testutil.WaitFor(t, "ticks stored", func() bool { return len(stored(t, db, "BTCUSDT")) == 10 })
	s.kill(t)
	f.x.Publish("BTCUSDT", 2500)
	f.x.FailREST(429, 2*time.Second, 1)
	f.startServer(t, bin)
	testutil.WaitFor(t, "resubscription", func() bool { return f.x.Subscribers("BTCUSDT") == 1 })
	f.x.Publish("BTCUSDT", 1)
	f.waitComplete(t, "BTCUSDT")
	calls := f.x.RESTCalls()
	if len(calls) < 2 || calls[0].Status != 429 {
		t.Fatalf("REST calls %+v, want a 429 first", calls)
	}
	if gap := calls[1].At.Sub(calls[0].At); gap < 2*time.Second {
		t.Errorf("next REST call %v after a 429 with Retry-After 2, want at least 2 s", gap)
	}
}

// missingRanges describes the ids of want that are not in got.
func missingRanges(got, want []fakebinance.Trade) string {
	have := make(map[int64]bool, len(got))
	for _, g := range got {
		have[g.ID] = true
	}
	var out []string
	for i := 0; i < len(want); i++ {
		if have[want[i].ID] {
			continue
		}
		j := i
		for j+1 < len(want) && !have[want[j+1].ID] {
			j++
		}
		out = append(out, fmt.Sprintf("%d..%d", want[i].ID, want[j].ID))
		i = j
	}
	return strings.Join(out, ", ")
}
