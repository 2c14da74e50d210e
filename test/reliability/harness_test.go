package reliability

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"binance-symbol-tick-store/internal/fakebinance"
	"binance-symbol-tick-store/internal/testutil"
)

var (
	binDir    string // removed when the package's tests end
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "reliability-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// full reports whether the full versions of the scenarios were asked for.
func full() bool { return os.Getenv("RELIABILITY_FULL") == "1" }

// pick returns short, or long in full mode.
func pick[T any](short, long T) T {
	if full() {
		return long
	}
	return short
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the real binary under load; skipped with -short")
	}
}

// serverBinary builds the server once per test run (CGO_ENABLED=0, as make build
// does; RELIABILITY_RACE=1 builds it with the race detector instead).
func serverBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binPath = filepath.Join(binDir, "server")
		args := []string{"build", "-o", binPath}
		env := append(os.Environ(), "CGO_ENABLED=0")
		if os.Getenv("RELIABILITY_RACE") == "1" {
			args = append(args, "-race")
			env = os.Environ()
		}
		cmd := exec.Command("go", append(args, "binance-symbol-tick-store/cmd/server")...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// seed returns the test's random seed, RELIABILITY_SEED if set, and logs it.
func seed(t *testing.T) uint64 {
	t.Helper()
	s := uint64(time.Now().UnixNano())
	if v := os.Getenv("RELIABILITY_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("RELIABILITY_SEED=%q: %v", v, err)
		}
		s = n
	}
	t.Logf("seed %d (RELIABILITY_SEED=%d reproduces this run)", s, s)
	return s
}

// startRecording starts the server, enables syms by SQL and waits until
// every one is subscribed; it returns the server and a user's connection.
func (f *fixture) startRecording(t *testing.T, syms []string) (*server, *sql.DB) {
	t.Helper()
	s := f.start(t)
	db := openDB(t, f.dbPath)
	enable(t, db, syms)
	waitFor(t, "subscriptions", subscribeWait(len(syms)), func() bool { return allSubscribed(f.x, syms) })
	return s, db
}

// figure logs one measured figure for docs/RELIABILITY.md; go test -v | grep FIGURE collects them.
func figure(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("FIGURE %s: %s", t.Name(), fmt.Sprintf(format, args...))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// symbols returns n symbol names prefix00USDT, prefix01USDT, ...
func symbols(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03dUSDT", prefix, i)
	}
	return out
}

// fixture is a fake exchange, a database path and the environment that
// points the server at both.
type fixture struct {
	x      *fakebinance.Exchange
	dbPath string
	env    map[string]string
}

func newFixture(t *testing.T, dbPath string, syms ...string) *fixture {
	t.Helper()
	x := fakebinance.New(fakebinance.Options{})
	x.List(syms...)
	srv := httptest.NewServer(x)
	t.Cleanup(func() { x.Close(); srv.Close() })
	if dbPath == "" {
		dbPath = filepath.Join(t.TempDir(), "data", "ticks.db")
	}
	return &fixture{x: x, dbPath: dbPath, env: map[string]string{
		"DB_PATH":                dbPath,
		"HTTP_PORT":              "0",
		"BINANCE_WS_URL":         "ws" + strings.TrimPrefix(srv.URL, "http") + "/market/ws",
		"BINANCE_REST_URL":       srv.URL,
		"SETTINGS_POLL_INTERVAL": "200ms",
		"LOG_LEVEL":              "info",
	}}
}

// server is the compiled store running as a child process.
type server struct {
	cmd    *exec.Cmd
	stdout *testutil.SyncBuffer
	stderr *testutil.SyncBuffer
	done   chan struct{} // closed when the process has been waited for
	err    error         // Wait's result, read after done
	port   string
}

var addrRE = regexp.MustCompile(`http_addr=\S*:(\d+)`)

func (f *fixture) command(t *testing.T, extra ...string) *exec.Cmd {
	cmd := exec.Command(serverBinary(t))
	cmd.Env = os.Environ()
	for k, v := range f.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, extra...)
	return cmd
}

// start runs the binary and waits until it listens.
func (f *fixture) start(t *testing.T, extra ...string) *server {
	t.Helper()
	s := f.launch(t, extra...)
	waitFor(t, "start-up", 20*time.Second, func() bool {
		if s.exited() {
			t.Fatalf("server exited at start: %v\nstdout:\n%s\nstderr:\n%s", s.err, s.stdout, s.stderr)
		}
		m := addrRE.FindStringSubmatch(s.stdout.String())
		if m != nil {
			s.port = m[1]
		}
		return m != nil
	})
	return s
}

// launch runs the binary without waiting for anything.
func (f *fixture) launch(t *testing.T, extra ...string) *server {
	t.Helper()
	s := &server{cmd: f.command(t, extra...), stdout: &testutil.SyncBuffer{}, stderr: &testutil.SyncBuffer{}, done: make(chan struct{})}
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
	})
	return s
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// kill ends the server with SIGKILL, as the OOM killer or docker kill would.
func (s *server) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// term sends SIGTERM and waits up to within for the exit; it returns how
// long the exit took and false if the process was still running.
func (s *server) term(within time.Duration) (time.Duration, bool) {
	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return time.Since(start), true
	case <-time.After(within):
		return time.Since(start), false
	}
}

func (s *server) url(path string) string { return "http://127.0.0.1:" + s.port + path }

// procStats are a live process's resources, from /proc.
type procStats struct {
	FDs, Threads int
	RSSKiB       int
}

func (p procStats) String() string {
	return fmt.Sprintf("fds=%d threads=%d rss=%.1fMiB", p.FDs, p.Threads, float64(p.RSSKiB)/1024)
}

func readProc(t *testing.T, pid int) procStats {
	t.Helper()
	var p procStats
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("read fds: %v", err)
	}
	p.FDs = len(fds)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		switch k {
		case "Threads":
			p.Threads, _ = strconv.Atoi(fields[0])
		case "VmRSS":
			p.RSSKiB, _ = strconv.Atoi(fields[0])
		}
	}
	return p
}

// openDB opens the store's file the way a user's sqlite3 shell would, with
// .timeout 5000, on one connection.
func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func exec1(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// enable inserts one enabled settings row per symbol, in one transaction.
func enable(t *testing.T, db *sql.DB, syms []string) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if _, err := tx.Exec(`INSERT OR REPLACE INTO symbol_settings (symbol, enabled) VALUES (?, 1)`, s); err != nil {
			tx.Rollback()
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func allSubscribed(x *fakebinance.Exchange, syms []string) bool {
	for _, s := range syms {
		if x.Subscribers(s) != 1 {
			return false
		}
	}
	return true
}

// subscribeWait is how long n symbols may take to connect: the store admits
// 10 connection attempts a second.
func subscribeWait(n int) time.Duration {
	return 20*time.Second + time.Duration(n)*150*time.Millisecond
}

// streamed waits until every symbol has stored a trade generated after the
// call: the streams deliver again. A symbol whose stream stays quiet after a
// restart has its restart gap repaired only by the silence check
// (STREAM_SILENCE_TIMEOUT, 5 minutes), so tests stop the load only after this.
func streamed(t *testing.T, db *sql.DB, x *fakebinance.Exchange, syms []string, within time.Duration) {
	t.Helper()
	mark := make(map[string]int64, len(syms))
	for _, s := range syms {
		if tr := x.Trades(s); len(tr) > 0 {
			mark[s] = tr[len(tr)-1].ID
		}
	}
	waitFor(t, "every stream to deliver a new trade", within, func() bool {
		for _, s := range syms {
			var hi sql.NullInt64
			db.QueryRow(fmt.Sprintf(`SELECT max(id) FROM "prices_%s"`, s)).Scan(&hi)
			if hi.Int64 <= mark[s] {
				return false
			}
		}
		return true
	})
}

// load publishes rate trades per second to each symbol until stop is called.
type load struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func startLoad(t *testing.T, x *fakebinance.Exchange, rate float64, syms []string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		x.Run(ctx, rate, syms...)
	}()
	t.Cleanup(l.stop)
	return l
}

func (l *load) stop() {
	l.once.Do(func() {
		l.cancel()
		<-l.done
	})
}

// tally is the comparison of one symbol's table with the trades generated.
type tally struct {
	Checked int // generated ids from the first stored one on
	Missing int // of those, not stored
	Extra   int // stored ids the exchange never generated
	Wrong   int // stored with another timestamp or price
	Stored  int
}

func (a tally) add(b tally) tally {
	return tally{a.Checked + b.Checked, a.Missing + b.Missing, a.Extra + b.Extra, a.Wrong + b.Wrong, a.Stored + b.Stored}
}

func (a tally) ok() bool { return a.Missing == 0 && a.Extra == 0 && a.Wrong == 0 }

func (a tally) String() string {
	return fmt.Sprintf("checked=%d stored=%d missing=%d extra=%d wrong=%d", a.Checked, a.Stored, a.Missing, a.Extra, a.Wrong)
}

type storedRow struct {
	id, ts int64
	price  float64
}

// compare reads the whole table of sym and compares it with the exchange's
// history from the first stored id on. A missing table counts as all missing.
func compare(db *sql.DB, x *fakebinance.Exchange, sym string) (tally, error) {
	want := x.Trades(sym)
	rows, err := db.Query(fmt.Sprintf(`SELECT id, timestamp, price FROM "prices_%s" ORDER BY id`, sym))
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return tally{Checked: len(want), Missing: len(want)}, nil
		}
		return tally{}, err
	}
	defer rows.Close()
	var got []storedRow
	for rows.Next() {
		var r storedRow
		if err := rows.Scan(&r.id, &r.ts, &r.price); err != nil {
			return tally{}, err
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		return tally{}, err
	}
	return compareRows(got, want), nil
}

func compareRows(got []storedRow, want []fakebinance.Trade) tally {
	var tl tally
	tl.Stored = len(got)
	if len(got) == 0 {
		tl.Checked, tl.Missing = len(want), len(want)
		return tl
	}
	i := sort.Search(len(want), func(i int) bool { return want[i].ID >= got[0].id })
	want = want[i:]
	tl.Checked = len(want)
	g, w := 0, 0
	for g < len(got) || w < len(want) {
		switch {
		case w == len(want) || g < len(got) && got[g].id < want[w].ID:
			tl.Extra++
			g++
		case g == len(got) || want[w].ID < got[g].id:
			tl.Missing++
			w++
		default:
			p, _ := strconv.ParseFloat(want[w].Price, 64)
			if got[g].ts != want[w].Time || got[g].price != p {
				tl.Wrong++
			}
			g++
			w++
		}
	}
	return tl
}

// quickCount tells whether a table's row count and id bounds already match
// the history, to spare a full read while backfill is still running.
func quickCount(db *sql.DB, x *fakebinance.Exchange, sym string) bool {
	var n int
	var lo, hi sql.NullInt64
	err := db.QueryRow(fmt.Sprintf(`SELECT count(*), min(id), max(id) FROM "prices_%s"`, sym)).Scan(&n, &lo, &hi)
	if err != nil || !lo.Valid {
		return false
	}
	want := x.Trades(sym)
	if len(want) == 0 || want[len(want)-1].ID != hi.Int64 {
		return false
	}
	i := sort.Search(len(want), func(i int) bool { return want[i].ID >= lo.Int64 })
	return len(want)-i == n
}

// waitComplete waits until every symbol's table holds exactly the trades the
// exchange generated from its first stored id on; it returns the totals and
// how long that took. Wrong or extra rows fail at once: no repair removes them.
func waitComplete(t *testing.T, db *sql.DB, x *fakebinance.Exchange, syms []string, within time.Duration) (tally, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	done := make(map[string]tally)
	for {
		for _, s := range syms {
			if _, ok := done[s]; ok || !quickCount(db, x, s) {
				continue
			}
			tl, err := compare(db, x, s)
			if err != nil {
				t.Fatalf("%s: %v", s, err)
			}
			if tl.Extra > 0 || tl.Wrong > 0 {
				t.Fatalf("%s: rows that are not the exchange's trades: %v", s, tl)
			}
			if tl.ok() {
				done[s] = tl
			}
		}
		if len(done) == len(syms) {
			var sum tally
			for _, tl := range done {
				sum = sum.add(tl)
			}
			return sum, time.Since(start)
		}
		if time.Now().After(deadline) {
			var msgs []string
			for _, s := range syms {
				if _, ok := done[s]; ok {
					continue
				}
				tl, err := compare(db, x, s)
				msgs = append(msgs, fmt.Sprintf("%s: %v %v; missing ids %s", s, tl, err, missingRanges(db, x, s)))
				if len(msgs) == 10 {
					break
				}
			}
			calls := x.RESTCalls()
			recent := 0
			for _, c := range calls {
				if time.Since(c.At) < time.Minute {
					recent++
				}
			}
			t.Fatalf("incomplete after %v (%d of %d symbols complete; %d REST calls in all, %d in the last minute):\n%s",
				within, len(done), len(syms), len(calls), recent, strings.Join(msgs, "\n"))
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
}

// consistent checks what is stored now, without waiting: every row is one of
// the exchange's trades with its timestamp and price. Missing ids are
// allowed (a repair may be pending) and counted.
func consistent(t *testing.T, db *sql.DB, x *fakebinance.Exchange, syms []string) tally {
	t.Helper()
	var sum tally
	for _, s := range syms {
		tl, err := compare(db, x, s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if tl.Extra > 0 || tl.Wrong > 0 {
			t.Errorf("%s: rows that are not the exchange's trades: %v", s, tl)
		}
		sum = sum.add(tl)
	}
	return sum
}

// checkFile runs the checks a user would after a crash, on a fresh connection.
func checkFile(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var integrity, mode string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&integrity); err != nil {
		t.Fatalf("integrity_check: %v", err)
	}
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatalf("journal_mode: %v", err)
	}
	if integrity != "ok" || mode != "wal" {
		t.Fatalf("integrity_check = %q, journal_mode = %q; want ok, wal", integrity, mode)
	}
}

// logLineRE is the start of one slog text record.
var logLineRE = regexp.MustCompile(`^time=\S+ level=(DEBUG|INFO|WARN|ERROR) msg=`)

// checkLogLines fails for every stdout line that is not one slog record.
func checkLogLines(t *testing.T, stdout string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		n++
		if !logLineRE.MatchString(line) {
			t.Errorf("log line %d is not one slog record: %q", n, clip(line))
		}
	}
	return n
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// get fetches a URL with a timeout and returns status and body.
func get(t *testing.T, url string, timeout time.Duration) (int, string, error) {
	t.Helper()
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	c.CloseIdleConnections()
	return resp.StatusCode, b.String(), nil
}

// randomDuration is uniform in [lo, hi).
func randomDuration(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// fileSize is the size of path, 0 if it does not exist.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// missingRanges lists the generated ids absent from the table of sym, from
// its first stored id on, as ranges.
func missingRanges(db *sql.DB, x *fakebinance.Exchange, sym string) string {
	have := make(map[int64]bool)
	rows, err := db.Query(fmt.Sprintf(`SELECT id FROM "prices_%s"`, sym))
	if err != nil {
		return err.Error()
	}
	var first int64
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		have[id] = true
		if first == 0 || id < first {
			first = id
		}
	}
	rows.Close()
	var out []string
	var from, to int64 = -1, -1
	for _, tr := range x.Trades(sym) {
		if tr.ID < first || have[tr.ID] {
			continue
		}
		if tr.ID == to+1 {
			to = tr.ID
			continue
		}
		if from >= 0 {
			out = append(out, fmt.Sprintf("%d-%d", from, to))
		}
		from, to = tr.ID, tr.ID
	}
	if from >= 0 {
		out = append(out, fmt.Sprintf("%d-%d", from, to))
	}
	if len(out) > 5 {
		out = append(out[:5], "...")
	}
	return fmt.Sprintf("[%s] (first stored %d)", strings.Join(out, " "), first)
}
