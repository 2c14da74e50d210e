package fakebinance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gorillaws "github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Wire samples recorded from Binance (shared fixtures): the data object of a 2026 frame and a REST row.
const (
	fixtureFrame = `{"e":"aggTrade","E":1791382992488,"a":3477868433,"s":"BTCUSDT","p":"83091.70","q":"0.022","nq":"0.022","f":8153634393,"l":8153634394,"T":1791382992338,"m":false,"st":1}`
	fixtureRow   = `{"a":3477868380,"p":"83084.30","q":"0.002","nq":"0.002","f":8153634282,"l":8153634282,"T":1791382990569,"m":true}`
)

// wireTrade is how a client decodes a frame or a REST row.
type wireTrade struct {
	Event     string `json:"e"`
	EventTime int64  `json:"E"`
	ID        int64  `json:"a"`
	Symbol    string `json:"s"`
	Price     string `json:"p"`
	Qty       string `json:"q"`
	NQ        string `json:"nq"`
	FirstID   int64  `json:"f"`
	LastID    int64  `json:"l"`
	Time      int64  `json:"T"`
	Maker     bool   `json:"m"`
	ST        int    `json:"st"`
}

// clock is an injectable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func newFake(t *testing.T, opts Options) (*Exchange, *httptest.Server) {
	t.Helper()
	x := New(opts)
	srv := httptest.NewServer(x)
	t.Cleanup(func() {
		x.Close()
		srv.Close()
	})
	return x, srv
}

func wsURL(srv *httptest.Server, path string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + path
}

func dial(t *testing.T, srv *httptest.Server, path string) *gorillaws.Conn {
	t.Helper()
	ws, resp, err := gorillaws.DefaultDialer.Dial(wsURL(srv, path), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	resp.Body.Close()
	t.Cleanup(func() { ws.Close() })
	return ws
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func readFrame(t *testing.T, ws *gorillaws.Conn) []byte {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	if typ != gorillaws.TextMessage {
		t.Fatalf("frame type = %d, want text", typ)
	}
	return b
}

// expectSilence asserts that nothing arrives for a while. The connection is unusable afterwards.
func expectSilence(t *testing.T, ws *gorillaws.Conn) {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, b, err := ws.ReadMessage()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read = %q, %v; want a timeout", b, err)
	}
}

// keys returns the top-level keys of a JSON object in the order they appear.
func keys(t *testing.T, obj []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(obj))
	var out []string
	if _, err := dec.Token(); err != nil {
		t.Fatalf("decode %s: %v", obj, err)
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatalf("decode %s: %v", obj, err)
		}
		out = append(out, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("decode %s: %v", obj, err)
		}
	}
	return out
}

func TestFrameWireFormat(t *testing.T) {
	x, srv := newFake(t, Options{})
	x.List("BTCUSDT")
	ws := dial(t, srv, "/market/ws/btcusdt@aggTrade")
	waitFor(t, "a subscriber", func() bool { return x.Subscribers("BTCUSDT") == 1 })

	trades := x.Publish("BTCUSDT", 50)
	price := regexp.MustCompile(`^[1-9][0-9]*\.[0-9]{2}$`)
	for i, tr := range trades {
		frame := readFrame(t, ws)
		var got wireTrade
		if err := json.Unmarshal(frame, &got); err != nil {
			t.Fatalf("unmarshal %s: %v", frame, err)
		}
		want := fmt.Sprintf(`{"e":"aggTrade","E":%d,"a":%d,"s":"BTCUSDT","p":"%s","q":"%s","nq":"%s","f":%d,"l":%d,"T":%d,"m":%t,"st":1}`,
			got.EventTime, tr.ID, tr.Price, tr.Qty, tr.Qty, tr.FirstID, tr.LastID, tr.Time, tr.BuyerMaker)
		if string(frame) != want {
			t.Fatalf("frame %d = %s, want %s", i, frame, want)
		}
		if d := got.EventTime - got.Time; d < 0 || d > 100 {
			t.Errorf("frame %d: E-T = %d ms, want a few ms", i, d)
		}
		if !price.MatchString(tr.Price) {
			t.Errorf("trade %d: price %q, want 2 decimals", i, tr.Price)
		}
		if i > 0 {
			prev := trades[i-1]
			if tr.ID != prev.ID+1 || tr.Time < prev.Time || tr.FirstID != prev.LastID+1 || tr.LastID < tr.FirstID {
				t.Errorf("trade %d = %+v after %+v: ids or times out of order", i, tr, prev)
			}
		}
	}
	frame := appendFrame(nil, "BTCUSDT", trades[0], trades[0].Time)
	if got, want := strings.Join(keys(t, frame), ","), strings.Join(keys(t, []byte(fixtureFrame)), ","); got != want {
		t.Errorf("frame keys = %s, want %s as in the fixture", got, want)
	}
	if got := x.Trades("btcusdt"); len(got) != len(trades) || got[0] != trades[0] {
		t.Errorf("Trades = %d trades, want the %d published", len(got), len(trades))
	}
}

func TestListedSymbolsGetDistinctIDs(t *testing.T) {
	x := New(Options{})
	defer x.Close()
	x.List("BTCUSDT", "ethusdt", "BTCUSDT_261225", "1000PEPEUSDT")
	seen := map[int64]string{}
	for _, s := range []string{"BTCUSDT", "ETHUSDT", "BTCUSDT_261225", "1000PEPEUSDT"} {
		id := x.Publish(s, 1)[0].ID
		if id < 1_000_000 {
			t.Errorf("first id of %s = %d, want a large one", s, id)
		}
		if other, ok := seen[id]; ok {
			t.Errorf("first id of %s = %d, same as %s", s, id, other)
		}
		seen[id] = s
	}
}

func TestSilentRoutes(t *testing.T) {
	for _, path := range []string{
		"/ws/btcusdt@aggTrade",         // the old root
		"/market/ws/BTCUSDT@aggTrade",  // upper-case symbol
		"/market/ws/btcusdt@AGGTRADE",  // upper-case stream type
		"/market/ws/Btcusdt@aggTrade",  // mixed case
		"/market/ws/xyzusdt@aggTrade",  // not listed
		"/market/ws/btcusdt@trade",     // another stream
		"/market/ws/btcusdt@aggTrade/", // trailing slash
	} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			x, srv := newFake(t, Options{})
			x.List("BTCUSDT")
			ws := dial(t, srv, path)
			waitFor(t, "the connection", func() bool { return x.Connections() == 1 })
			if n := x.Subscribers("BTCUSDT"); n != 0 {
				t.Errorf("Subscribers = %d, want 0", n)
			}
			x.Publish("BTCUSDT", 3)
			expectSilence(t, ws)
			if a := x.Attempts(); len(a) != 1 || a[0].Path != path || a[0].Refused {
				t.Errorf("Attempts = %+v, want one accepted attempt on %s", a, path)
			}
		})
	}
}

func TestUnicodeSymbol(t *testing.T) {
	x, srv := newFake(t, Options{})
	x.List("币安人生USDT")
	path := "/market/ws/" + url.PathEscape("币安人生usdt@aggTrade")
	if !strings.Contains(path, "%E5") {
		t.Fatalf("path %s is not percent-encoded", path)
	}
	ws := dial(t, srv, path)
	waitFor(t, "a subscriber", func() bool { return x.Subscribers("币安人生USDT") == 1 })
	tr := x.Publish("币安人生USDT", 1)[0]
	var got wireTrade
	if err := json.Unmarshal(readFrame(t, ws), &got); err != nil {
		t.Fatal(err)
	}
	if got.Symbol != "币安人生USDT" || got.ID != tr.ID {
		t.Errorf("frame s=%q a=%d, want 币安人生USDT %d", got.Symbol, got.ID, tr.ID)
	}
	if a := x.Attempts(); a[0].Path != "/market/ws/币安人生usdt@aggTrade" {
		t.Errorf("Attempts[0].Path = %q, want it unescaped", a[0].Path)
	}
	status, _, body := get(t, srv, "symbol="+url.QueryEscape("币安人生usdt")+"&limit=1")
	if status != http.StatusOK || len(decodeRows(t, body)) != 1 {
		t.Errorf("REST for 币安人生usdt = %d %s, want one row", status, body)
	}
}

func TestServerCloses(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     Options
		action   func(x *Exchange)
		wantCode int
		wantText string
	}{
		{"drop", Options{}, func(x *Exchange) { x.Drop("BTCUSDT") }, gorillaws.CloseAbnormalClosure, ""},
		{"close with 1008", Options{}, func(x *Exchange) { x.CloseWith("BTCUSDT", 1008, "Too many requests") }, 1008, "Too many requests"},
		{"max age", Options{MaxConnAge: 300 * time.Millisecond}, func(*Exchange) {}, gorillaws.CloseGoingAway, "max age"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, srv := newFake(t, tc.opts)
			x.List("BTCUSDT")
			ws := dial(t, srv, "/market/ws/btcusdt@aggTrade")
			waitFor(t, "a subscriber", func() bool { return x.Subscribers("BTCUSDT") == 1 })
			x.Publish("BTCUSDT", 2)
			tc.action(x)
			for range 2 { // frames queued before the close still arrive
				readFrame(t, ws)
			}
			ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err := ws.ReadMessage()
			var ce *gorillaws.CloseError
			if !errors.As(err, &ce) || ce.Code != tc.wantCode || (tc.wantText != "" && ce.Text != tc.wantText) {
				t.Fatalf("read after close = %v, want close %d %q", err, tc.wantCode, tc.wantText)
			}
			waitFor(t, "no connections", func() bool { return x.Connections() == 0 })
			if n := x.Subscribers("BTCUSDT"); n != 0 {
				t.Errorf("Subscribers = %d, want 0", n)
			}
		})
	}
}

func TestStall(t *testing.T) {
	x, srv := newFake(t, Options{PingInterval: 20 * time.Millisecond})
	x.List("BTCUSDT")
	ws := dial(t, srv, "/market/ws/btcusdt@aggTrade")
	waitFor(t, "a subscriber", func() bool { return x.Subscribers("BTCUSDT") == 1 })
	var pings atomic.Int32
	ws.SetPingHandler(func(string) error { pings.Add(1); return nil })

	x.Stall("BTCUSDT")
	pings.Store(0)
	x.Publish("BTCUSDT", 3)
	x.SendRaw("BTCUSDT", []byte(`{"result":null,"id":1}`))
	expectSilence(t, ws)
	if n := pings.Load(); n > 1 { // one may have been on the wire before the stall
		t.Errorf("stalled connection got %d pings, want none", n)
	}
	if n, c := x.Subscribers("BTCUSDT"), x.Connections(); n != 0 || c != 1 {
		t.Errorf("Subscribers, Connections = %d, %d; want 0, 1 (half-open)", n, c)
	}
	if n := len(x.Trades("BTCUSDT")); n != 3 {
		t.Errorf("Trades = %d, want 3: publishing goes on", n)
	}

	fresh := dial(t, srv, "/market/ws/btcusdt@aggTrade")
	waitFor(t, "a new subscriber", func() bool { return x.Subscribers("BTCUSDT") == 1 })
	tr := x.Publish("BTCUSDT", 1)[0]
	if got := readFrame(t, fresh); !bytes.Contains(got, []byte(`"a":`+strconv.FormatInt(tr.ID, 10)+`,`)) {
		t.Errorf("new connection got %s, want trade %d", got, tr.ID)
	}
}

func TestSendRaw(t *testing.T) {
	x, srv := newFake(t, Options{})
	x.List("BTCUSDT")
	ws := dial(t, srv, "/market/ws/btcusdt@aggTrade")
	waitFor(t, "a subscriber", func() bool { return x.Subscribers("BTCUSDT") == 1 })
	for _, frame := range []string{`{"result":null,"id":1}`, `not json`, strings.Repeat("x", 2<<20)} {
		x.SendRaw("BTCUSDT", []byte(frame))
		if got := readFrame(t, ws); string(got) != frame {
			t.Errorf("got %.40q (%d bytes), want %.40q", got, len(got), frame)
		}
	}
}

func TestRefuseHandshakes(t *testing.T) {
	x, srv := newFake(t, Options{})
	x.List("BTCUSDT")
	x.RefuseHandshakes(2)
	for _, path := range []string{"/market/ws/btcusdt@aggTrade", "/ws/btcusdt@aggTrade"} {
		_, resp, err := gorillaws.DefaultDialer.Dial(wsURL(srv, path), nil)
		if !errors.Is(err, gorillaws.ErrBadHandshake) || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("dial %s = %v, want a 503 handshake error", path, err)
		}
		resp.Body.Close()
	}
	dial(t, srv, "/market/ws/btcusdt@aggTrade")
	var refused []bool
	for _, a := range x.Attempts() {
		refused = append(refused, a.Refused)
	}
	if fmt.Sprint(refused) != "[true true false]" {
		t.Errorf("Attempts refused = %v, want [true true false]", refused)
	}
}

func TestPings(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  Options
		pings func(x *Exchange)
	}{
		{"periodic", Options{PingInterval: 20 * time.Millisecond}, func(*Exchange) {}},
		{"PingNow", Options{}, func(x *Exchange) { x.PingNow("BTCUSDT"); x.PingNow("BTCUSDT") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, srv := newFake(t, tc.opts)
			x.List("BTCUSDT")
			ws := dial(t, srv, "/market/ws/btcusdt@aggTrade")
			waitFor(t, "a subscriber", func() bool { return x.Subscribers("BTCUSDT") == 1 })
			payloads := make(chan string, 100)
			ws.SetPingHandler(func(p string) error {
				payloads <- p
				return ws.WriteControl(gorillaws.PongMessage, []byte(p), time.Now().Add(time.Second))
			})
			done := make(chan struct{})
			go func() { // the ping handler runs inside reads
				defer close(done)
				for {
					if _, _, err := ws.ReadMessage(); err != nil {
						return
					}
				}
			}()
			tc.pings(x)
			waitFor(t, "two pongs", func() bool { return x.Pongs("BTCUSDT") >= 2 })
			p := <-payloads
			ms, err := strconv.ParseInt(p, 10, 64)
			if err != nil || time.Since(time.UnixMilli(ms)).Abs() > time.Minute {
				t.Errorf("ping payload %q, want the current ms timestamp", p)
			}
			ws.Close()
			<-done
		})
	}
}

func TestSlowSubscriberIsCut(t *testing.T) {
	x, srv := newFake(t, Options{})
	x.List("BTCUSDT")
	dial(t, srv, "/market/ws/btcusdt@aggTrade") // never read
	waitFor(t, "a subscriber", func() bool { return x.Subscribers("BTCUSDT") == 1 })
	for i := 0; x.Subscribers("BTCUSDT") == 1; i++ {
		if i == 1000 {
			t.Fatal("a subscriber that never reads was not cut")
		}
		x.Publish("BTCUSDT", 1000)
	}
	waitFor(t, "the connection closed", func() bool { return x.Connections() == 0 })
}

func TestCloseEndsConnectionsAndRun(t *testing.T) {
	x := New(Options{})
	srv := httptest.NewServer(x)
	defer srv.Close()
	x.List("BTCUSDT")
	live := dial(t, srv, "/market/ws/btcusdt@aggTrade")
	silent := dial(t, srv, "/ws/btcusdt@aggTrade")
	waitFor(t, "two connections", func() bool { return x.Connections() == 2 })
	ran := make(chan struct{})
	go func() {
		x.Run(context.Background(), 1000, "BTCUSDT", "ETHUSDT")
		close(ran)
	}()
	waitFor(t, "Run to publish", func() bool { return len(x.Trades("ETHUSDT")) >= 5 })

	x.Close()
	x.Close()
	<-ran
	for _, ws := range []*gorillaws.Conn{live, silent} {
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		var err error
		for err == nil {
			_, _, err = ws.ReadMessage()
		}
		if !gorillaws.IsCloseError(err, gorillaws.CloseAbnormalClosure) {
			t.Errorf("read after Close = %v, want 1006", err)
		}
	}
	_, resp, err := gorillaws.DefaultDialer.Dial(wsURL(srv, "/market/ws/btcusdt@aggTrade"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Close = %v, want 503", err)
	}
	if resp != nil {
		resp.Body.Close()
	}
}

func TestRunStopsWithContext(t *testing.T) {
	x := New(Options{})
	defer x.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		x.Run(ctx, 500, "BTCUSDT")
		close(ran)
	}()
	waitFor(t, "Run to publish", func() bool { return len(x.Trades("BTCUSDT")) >= 5 })
	cancel()
	<-ran
}

// get calls the aggTrades endpoint with query and returns status, headers and body.
func get(t *testing.T, srv *httptest.Server, query string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(srv.URL + "/fapi/v1/aggTrades?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

func decodeRows(t *testing.T, body []byte) []wireTrade {
	t.Helper()
	var rows []wireTrade
	if err := json.Unmarshal(body, &rows); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return rows
}

func TestRESTPaging(t *testing.T) {
	x, srv := newFake(t, Options{})
	x.List("BTCUSDT")
	trades := x.Publish("BTCUSDT", 5)
	x.Skip("BTCUSDT", 3)
	trades = append(trades, x.Publish("BTCUSDT", 5)...)
	base := trades[0].ID // ids base..base+4, then base+8..base+12

	page := func(symbol string, from int64, limit int) string {
		q := "symbol=" + symbol + "&fromId=" + strconv.FormatInt(from, 10)
		if limit > 0 {
			q += "&limit=" + strconv.Itoa(limit)
		}
		return q
	}
	for _, tc := range []struct {
		name  string
		query string
		want  []int64 // offsets from base
	}{
		{"fromId first page", page("BTCUSDT", base, 3), []int64{0, 1, 2}},
		{"fromId across the hole", page("BTCUSDT", base+3, 3), []int64{3, 4, 8}},
		{"fromId inside the hole", page("BTCUSDT", base+6, 2), []int64{8, 9}},
		{"fromId before the first trade", page("BTCUSDT", 1, 1), []int64{0}},
		{"fromId past the last trade", page("BTCUSDT", base+13, 0), nil},
		{"lower-case symbol, default limit", page("btcusdt", base, 0), []int64{0, 1, 2, 3, 4, 8, 9, 10, 11, 12}},
		{"latest without fromId", "symbol=BTCUSDT&limit=2", []int64{11, 12}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := get(t, srv, tc.query)
			if status != http.StatusOK {
				t.Fatalf("GET ?%s = %d %s", tc.query, status, body)
			}
			var got []int64
			for _, r := range decodeRows(t, body) {
				got = append(got, r.ID-base)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("GET ?%s ids = %v, want %v (offsets from the first id)", tc.query, got, tc.want)
			}
		})
	}

	_, _, body := get(t, srv, page("BTCUSDT", base, 1))
	want := appendRow([]byte("["), trades[0])
	if string(body) != string(want)+"]" {
		t.Errorf("body = %s, want %s]", body, want)
	}
	if got, want := strings.Join(keys(t, want[1:]), ","), strings.Join(keys(t, []byte(fixtureRow)), ","); got != want {
		t.Errorf("row keys = %s, want %s as in the fixture", got, want)
	}
}

func TestRESTErrors(t *testing.T) {
	clk := &clock{t: time.Date(2026, 10, 7, 12, 0, 0, 0, time.UTC)}
	x, srv := newFake(t, Options{Now: clk.Now})
	x.List("BTCUSDT")
	old := x.Publish("BTCUSDT", 1)[0]
	clk.Set(clk.Now().Add(49 * time.Hour))
	recent := x.Publish("BTCUSDT", 1)[0]

	for _, tc := range []struct {
		name       string
		query      string
		wantStatus int
		wantCode   int // 0: a JSON array
	}{
		{"unknown symbol", "symbol=XYZUSDT", 400, -1121},
		{"no symbol", "limit=5", 400, -1102},
		{"limit over 1000", "symbol=BTCUSDT&limit=1001", 400, -1130},
		{"limit not a number", "symbol=BTCUSDT&limit=ten", 400, -1100},
		{"fromId older than retention", fmt.Sprintf("symbol=BTCUSDT&fromId=%d", old.ID), 400, -4166},
		{"fromId within retention", fmt.Sprintf("symbol=BTCUSDT&fromId=%d", recent.ID), 200, 0},
		{"latest even when old", "symbol=BTCUSDT", 200, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, h, body := get(t, srv, tc.query)
			if status != tc.wantStatus {
				t.Fatalf("GET ?%s = %d %s, want %d", tc.query, status, body, tc.wantStatus)
			}
			if h.Get("X-MBX-USED-WEIGHT-1M") == "" {
				t.Errorf("no weight header")
			}
			if tc.wantCode == 0 {
				decodeRows(t, body)
				return
			}
			var e struct {
				Code int    `json:"code"`
				Msg  string `json:"msg"`
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Code != tc.wantCode || e.Msg == "" {
				t.Errorf("GET ?%s body = %s, want code %d", tc.query, body, tc.wantCode)
			}
		})
	}
	if got := string(apiError(-1121, "Invalid symbol.")); got != `{"code":-1121,"msg":"Invalid symbol."}` {
		t.Errorf("apiError = %s, not as in the fixture", got)
	}

	resp, err := http.Get(srv.URL + "/fapi/v1/trades?symbol=BTCUSDT")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("other path = %d, want 404", resp.StatusCode)
	}
}

func TestFailREST(t *testing.T) {
	for _, tc := range []struct {
		status         int
		retryAfter     time.Duration
		wantRetryAfter string
	}{
		{429, 2500 * time.Millisecond, "3"},
		{418, 120 * time.Second, "120"},
		{429, 0, ""},
	} {
		t.Run(fmt.Sprint(tc.status, tc.retryAfter), func(t *testing.T) {
			x, srv := newFake(t, Options{})
			x.List("BTCUSDT")
			x.FailREST(tc.status, tc.retryAfter, 2)
			for range 2 {
				status, h, body := get(t, srv, "symbol=BTCUSDT")
				if status != tc.status || h.Get("Retry-After") != tc.wantRetryAfter || !bytes.HasPrefix(body, []byte(`{"code":-1003,"msg":"`)) {
					t.Errorf("got %d Retry-After %q %s, want %d Retry-After %q code -1003",
						status, h.Get("Retry-After"), body, tc.status, tc.wantRetryAfter)
				}
			}
			if status, _, _ := get(t, srv, "symbol=BTCUSDT"); status != http.StatusOK {
				t.Errorf("third call = %d, want 200", status)
			}
			var statuses []int
			for _, c := range x.RESTCalls() {
				statuses = append(statuses, c.Status)
				if c.Query != "symbol=BTCUSDT" {
					t.Errorf("RESTCall.Query = %q", c.Query)
				}
			}
			if want := fmt.Sprint([]int{tc.status, tc.status, 200}); fmt.Sprint(statuses) != want {
				t.Errorf("RESTCalls statuses = %v, want %s", statuses, want)
			}
		})
	}
}

func TestWeightHeader(t *testing.T) {
	clk := &clock{t: time.Date(2026, 10, 7, 12, 0, 10, 0, time.UTC)}
	x, srv := newFake(t, Options{Now: clk.Now})
	x.List("BTCUSDT")
	for _, step := range []struct {
		at    string // time of day
		query string
		want  string
	}{
		{"12:00:10", "symbol=BTCUSDT", "20"},
		{"12:00:30", "symbol=NOPE", "40"}, // errors cost weight too
		{"12:00:59", "symbol=BTCUSDT", "60"},
		{"12:01:00", "symbol=BTCUSDT", "20"},
		{"12:01:59", "symbol=BTCUSDT", "40"},
		{"12:03:00", "symbol=BTCUSDT", "20"},
	} {
		tod, err := time.Parse("15:04:05", step.at)
		if err != nil {
			t.Fatal(err)
		}
		clk.Set(time.Date(2026, 10, 7, tod.Hour(), tod.Minute(), tod.Second(), 0, time.UTC))
		if _, h, _ := get(t, srv, step.query); h.Get("X-MBX-USED-WEIGHT-1M") != step.want {
			t.Errorf("at %s: weight %q, want %s", step.at, h.Get("X-MBX-USED-WEIGHT-1M"), step.want)
		}
	}
}
