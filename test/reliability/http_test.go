package reliability

import (
	"bufio"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTPSurface: only GET /status, /healthz and /metrics are served; oversized
// headers get 431; a burst of concurrent /status requests and a crowd of
// slow-loris clients neither stall tick storage nor leak descriptors.
func TestHTTPSurface(t *testing.T) {
	skipShort(t)
	syms := symbols("W", 10)
	f := newFixture(t, "", syms...)
	s, db := f.startRecording(t, syms)
	l := startLoad(t, f.x, 20, syms)
	streamed(t, db, f.x, syms, 30*time.Second)

	t.Run("routes", func(t *testing.T) {
		cases := []struct {
			method, path string
			want         int
		}{
			{"GET", "/status", 200}, {"GET", "/healthz", 200}, {"HEAD", "/status", 200},
			{"GET", "/metrics", 200}, {"POST", "/metrics", 405}, {"GET", "/metrics/", 404},
			{"GET", "/", 404}, {"GET", "/debug/pprof/", 404}, {"GET", "/status/", 404},
			{"GET", "/healthz/x", 404}, {"GET", "/STATUS", 404}, {"GET", "/favicon.ico", 404},
			{"POST", "/status", 405}, {"PUT", "/healthz", 405}, {"DELETE", "/status", 405},
			{"OPTIONS", "/status", 405}, {"PATCH", "/healthz", 405},
		}
		c := &http.Client{Timeout: 10 * time.Second}
		defer c.CloseIdleConnections()
		for _, tc := range cases {
			req, _ := http.NewRequest(tc.method, s.url(tc.path), strings.NewReader("x=1"))
			resp, err := c.Do(req)
			if err != nil {
				t.Errorf("%s %s: %v", tc.method, tc.path, err)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
			}
		}
		figure(t, "%d method/path pairs: only GET|HEAD on /status, /healthz, /metrics answer 200; others 404/405", len(cases))
	})

	t.Run("oversized headers", func(t *testing.T) {
		for name, build := range map[string]func() *http.Request{
			"64 KiB header": func() *http.Request {
				r, _ := http.NewRequest("GET", s.url("/status"), nil)
				r.Header.Set("X-Big", strings.Repeat("a", 64<<10))
				return r
			},
			"64 KiB URL": func() *http.Request {
				r, _ := http.NewRequest("GET", s.url("/status?q="+strings.Repeat("a", 64<<10)), nil)
				return r
			},
			"1000 headers": func() *http.Request {
				r, _ := http.NewRequest("GET", s.url("/status"), nil)
				for i := range 1000 {
					r.Header.Set(fmt.Sprintf("X-H%d", i), "0123456789abcdef")
				}
				return r
			},
		} {
			c := &http.Client{Timeout: 10 * time.Second}
			resp, err := c.Do(build())
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			resp.Body.Close()
			c.CloseIdleConnections()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("%s: %d, want 431", name, resp.StatusCode)
			}
		}
		figure(t, "64 KiB header, 64 KiB URL, 1000 headers: 431 each")
	})

	t.Run("1000 concurrent status requests", func(t *testing.T) {
		n := pick(1000, 1000)
		base := readProc(t, s.pid())
		prog := watchProgress(t, db, syms[0])
		tr := &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}
		c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
		var wg sync.WaitGroup
		var failed atomic.Int32
		lat := make([]time.Duration, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				t0 := time.Now()
				resp, err := c.Get(s.url("/status"))
				if err != nil {
					failed.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
				lat[i] = time.Since(t0)
			})
		}
		burstStart := time.Now()
		close(start)
		peak := readProc(t, s.pid())
		wg.Wait()
		burst := time.Since(burstStart)
		stored, stall := prog.stop()
		tr.CloseIdleConnections()
		var after procStats
		waitFor(t, "descriptors back to the baseline", 30*time.Second, func() bool {
			after = readProc(t, s.pid())
			return after.FDs <= base.FDs+2
		})
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		if failed.Load() > 0 {
			t.Errorf("%d of %d requests failed", failed.Load(), n)
		}
		if stored == 0 || stall > 3*time.Second {
			t.Errorf("tick storage during the burst: %d stored, longest stall %v", stored, stall)
		}
		figure(t, "%d concurrent GET /status in %v (p50 %v, p99 %v, max %v), failed %d; ticks of %s stored during the burst %d, longest pause %v; server before %v, during %v, after %v",
			n, burst.Round(time.Millisecond), lat[n/2].Round(time.Millisecond), lat[n*99/100].Round(time.Millisecond), lat[n-1].Round(time.Millisecond),
			failed.Load(), syms[0], stored, stall.Round(time.Millisecond), base, peak, after)
	})

	t.Run("slow loris", func(t *testing.T) {
		n := pick(300, 2000)
		base := readProc(t, s.pid())
		prog := watchProgress(t, db, syms[0])
		var wg sync.WaitGroup
		cut := make([]time.Duration, n)
		var dialFail atomic.Int32
		for i := range n {
			wg.Go(func() { cut[i] = slowLoris(s.port, &dialFail) })
		}
		// While they trickle, a normal client is served.
		var during procStats
		waitFor(t, "the slow clients to be connected", 15*time.Second, func() bool {
			during = readProc(t, s.pid())
			return during.FDs >= base.FDs+n/2
		})
		code, _, err := get(t, s.url("/status"), 10*time.Second)
		if err != nil || code != 200 {
			t.Errorf("/status during the slow-loris crowd: %d %v", code, err)
		}
		wg.Wait()
		stored, stall := prog.stop()
		var after procStats
		waitFor(t, "descriptors back to the baseline", 30*time.Second, func() bool {
			after = readProc(t, s.pid())
			return after.FDs <= base.FDs+2
		})
		sort.Slice(cut, func(i, j int) bool { return cut[i] < cut[j] })
		if cut[n-1] > 10*time.Second || cut[0] == 0 {
			t.Errorf("slow clients cut after %v .. %v, want within ReadHeaderTimeout (5 s) plus slack", cut[0], cut[n-1])
		}
		if stored == 0 || stall > 3*time.Second {
			t.Errorf("tick storage during the slow-loris crowd: %d stored, longest stall %v", stored, stall)
		}
		figure(t, "%d slow-loris clients (1 header byte/s): cut after %v .. %v (ReadHeaderTimeout 5 s), dial failures %d; /status meanwhile %d; ticks stored meanwhile %d, longest pause %v; server before %v, during %v, after %v",
			n, cut[0].Round(time.Millisecond), cut[n-1].Round(time.Millisecond), dialFail.Load(), code, stored, stall.Round(time.Millisecond), base, during, after)
	})
	l.stop()
	if _, _, err := get(t, s.url("/healthz"), 10*time.Second); err != nil {
		t.Error(err)
	}
}

// slowLoris opens a connection and sends a request header one byte a second;
// it returns how long the server kept the connection open (0 if the dial failed).
func slowLoris(port string, dialFail *atomic.Int32) time.Duration {
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 10*time.Second)
	if err != nil {
		dialFail.Add(1)
		return 0
	}
	defer conn.Close()
	start := time.Now()
	conn.Write([]byte("GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: "))
	r := bufio.NewReader(conn)
	for range 60 {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write([]byte("a")); err != nil {
			return time.Since(start)
		}
		// The read deadline paces the trickle and sees the server hang up.
		conn.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := r.ReadByte(); err == nil || !isTimeout(err) {
			return time.Since(start)
		}
	}
	return time.Since(start)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// progress samples a table's row count to see whether ticks keep being stored.
type progress struct {
	quit  chan struct{}
	done  chan struct{}
	first int
	last  int
	stall time.Duration
}

func watchProgress(t *testing.T, db *sql.DB, sym string) *progress {
	p := &progress{quit: make(chan struct{}), done: make(chan struct{})}
	count := func() int {
		var n int
		db.QueryRow(fmt.Sprintf(`SELECT count(*) FROM "prices_%s"`, sym)).Scan(&n)
		return n
	}
	p.first = count()
	go func() {
		defer close(p.done)
		last, since := p.first, time.Now()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.quit:
				p.last = last
				p.stall = max(p.stall, time.Since(since))
				return
			case <-tick.C:
				if n := count(); n != last {
					p.stall = max(p.stall, time.Since(since))
					last, since = n, time.Now()
				}
			}
		}
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

// stop ends sampling; it returns the rows stored meanwhile and the longest
// time without a new row. Safe to call twice.
func (p *progress) stop() (int, time.Duration) {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	<-p.done
	return p.last - p.first, p.stall
}
