package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "modernc.org/sqlite"

	"binance-symbol-tick-store/internal/fakebinance"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat (USER_HZ, 100
// on every Linux architecture Go supports).
const userHZ = 100

// exchange is the fake Binance on a loopback port.
type exchange struct {
	*fakebinance.Exchange
	srv *httptest.Server
}

func startExchange(symbols []string) *exchange {
	x := fakebinance.New(fakebinance.Options{})
	x.List(symbols...)
	return &exchange{Exchange: x, srv: httptest.NewServer(x)}
}

func (x *exchange) wsURL() string { return "ws" + strings.TrimPrefix(x.srv.URL, "http") + "/market/ws" }

func (x *exchange) close() {
	x.Exchange.Close()
	x.srv.Close()
}

// waitSubscribed waits until every symbol has n live subscribers.
func (x *exchange) waitSubscribed(ctx context.Context, symbols []string, n int, timeout time.Duration) error {
	return poll(ctx, timeout, 50*time.Millisecond, func() (bool, error) {
		for _, s := range symbols {
			if x.Subscribers(s) < n {
				return false, nil
			}
		}
		return true, nil
	}, fmt.Sprintf("%d subscribers on each of %d symbols", n, len(symbols)))
}

// symbols returns n symbol names, SYM0000USDT, SYM0001USDT, ...
func symbols(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("SYM%04dUSDT", i)
	}
	return out
}

// poll calls cond every interval until it is true, fails, or timeout passes.
func poll(ctx context.Context, timeout, interval time.Duration, cond func() (bool, error), what string) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// proc is a child process (the server or the Python recorder) with its
// output in a file.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	done    chan error
}

func startProc(name, logPath string, env []string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, logPath: logPath, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		logf.Close()
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) logs() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// stop sends SIGTERM to this process (by its pid) and waits up to 10 s,
// then SIGKILL.
func (p *proc) stop() error {
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		return fmt.Errorf("did not stop within 10 s of SIGTERM: killed")
	}
}

func (p *proc) exited() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return true
	default:
		return false
	}
}

// server is the store running as a child process.
type server struct {
	*proc
	dbPath string
	port   string
}

var addrRE = regexp.MustCompile(`http_addr=\S*:(\d+)`)

// startServer runs the server binary on dbPath against x, with a 200 ms
// settings poll, and waits until it listens.
func (b *bench) startServer(ctx context.Context, x *exchange, dbPath string, extraEnv ...string) (*server, error) {
	env := []string{
		"DB_PATH=" + dbPath,
		"HTTP_PORT=0",
		"BINANCE_WS_URL=" + x.wsURL(),
		"BINANCE_REST_URL=" + x.srv.URL,
		"SETTINGS_POLL_INTERVAL=200ms",
		"LOG_LEVEL=info",
	}
	p, err := startProc(b.server, dbPath+".log", append(env, extraEnv...))
	if err != nil {
		return nil, err
	}
	s := &server{proc: p, dbPath: dbPath}
	err = poll(ctx, 30*time.Second, 20*time.Millisecond, func() (bool, error) {
		if p.exited() {
			return false, fmt.Errorf("server exited at start:\n%s", p.logs())
		}
		m := addrRE.FindStringSubmatch(p.logs())
		if m != nil {
			s.port = m[1]
		}
		return m != nil, nil
	}, "the server to listen")
	if err != nil {
		p.stop()
		return nil, err
	}
	return s, nil
}

// openDB opens path the way a user's program would: its own pool, a busy
// timeout, nothing else.
func openDB(path string) (*sql.DB, error) {
	return sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
}

// enable inserts symbols into symbol_settings, in one transaction.
func enable(ctx context.Context, dbPath string, symbols []string) error {
	db, err := openDB(dbPath)
	if err != nil {
		return err
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, s := range symbols {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO symbol_settings (symbol) VALUES (?)`, s); err != nil {
			return fmt.Errorf("enable %s: %w", s, err)
		}
	}
	return tx.Commit()
}

// cpuSeconds returns utime+stime of pid, in seconds.
func cpuSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: fields count from the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(utime+stime) / userHZ, nil
}

// selfCPU returns the CPU seconds used by this process so far.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// procStatus returns the kB values (VmRSS, VmHWM) and counts (Threads) of
// /proc/<pid>/status.
func procStatus(pid int) (map[string]int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make(map[string]int64)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}

// sampler records the RSS of some processes and the size of some files
// every interval until stopped, keeping the maximum.
type sampler struct {
	mu      sync.Mutex
	maxRSS  map[int]int64 // kB
	maxSize map[string]int64
	stopc   chan struct{}
	wg      sync.WaitGroup
}

func startSampler(interval time.Duration, pids []int, files []string) *sampler {
	s := &sampler{maxRSS: make(map[int]int64), maxSize: make(map[string]int64), stopc: make(chan struct{})}
	sample := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, pid := range pids {
			if st, err := procStatus(pid); err == nil {
				s.maxRSS[pid] = max(s.maxRSS[pid], st["VmRSS"])
			}
		}
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				s.maxSize[f] = max(s.maxSize[f], fi.Size())
			}
		}
	}
	s.wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			sample()
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	})
	return s
}

func (s *sampler) stop() {
	close(s.stopc)
	s.wg.Wait()
}

func (s *sampler) rssMB(pid int) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.maxRSS[pid]) / 1024
}

func (s *sampler) sizeMB(file string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.maxSize[file]) / (1 << 20)
}

// percentile returns the p-th percentile (0..100) of d, nearest rank.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func tempPath(b *bench, name string) string {
	dir, err := os.MkdirTemp(b.tmp, name+"-")
	if err != nil {
		dir = b.tmp
	}
	return filepath.Join(dir, name+".db")
}

// recordAll starts a fake exchange listing syms and the store recording all
// of them, and waits until every stream is subscribed. stop ends both.
// (ingest, which stops the store midway to measure, wires it by hand.)
func (b *bench) recordAll(ctx context.Context, name string, syms []string) (x *exchange, s *server, dbPath string, stop func(), err error) {
	x = startExchange(syms)
	dbPath = tempPath(b, name)
	if s, err = b.startServer(ctx, x, dbPath); err != nil {
		x.close()
		return nil, nil, "", nil, err
	}
	stop = func() { s.stop(); x.close() }
	if err = enable(ctx, dbPath, syms); err == nil {
		err = x.waitSubscribed(ctx, syms, 1, 60*time.Second)
	}
	if err != nil {
		stop()
		return nil, nil, "", nil, err
	}
	return x, s, dbPath, stop, nil
}
