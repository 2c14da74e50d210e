// Package fakebinance is an in-process fake of Binance USD-M futures (aggTrade WebSocket streams and the aggTrades REST endpoint) for tests.
package fakebinance

import (
	"context"
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Trade is one aggregate trade as Binance reports it.
type Trade struct {
	ID         int64  // aggregate trade id "a"
	Time       int64  // trade time "T", ms since epoch
	Price      string // decimal string "p", e.g. "83091.70"
	Qty        string // "q" (and "nq")
	FirstID    int64  // "f"
	LastID     int64  // "l"
	BuyerMaker bool   // "m"
}

// Options configure an Exchange. The zero value behaves like Binance.
type Options struct {
	// PingInterval is the period of server pings on every connection that is not stalled, silent
	// routes included; 0 means 3 minutes.
	PingInterval time.Duration
	// MaxConnAge, when positive, closes each connection that is not stalled with 1001 "max age"
	// once it is that old, like Binance's 24-hour cut. It runs on the real clock, not on Now.
	MaxConnAge time.Duration
	// Retention is how far back REST can fetch by fromId (-4166 beyond it); 0 means 48 hours.
	Retention time.Duration
	// Now is the clock for trade times, ping payloads, retention and the weight minute; nil means time.Now.
	Now func() time.Time
}

// Exchange is a fake Binance USD-M futures exchange. It is an http.Handler serving both the
// WebSocket routes and REST; all methods are safe for concurrent use.
type Exchange struct {
	opts Options
	quit chan struct{} // closed by Close; ends Run
	wg   sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	markets   map[string]*market
	conns     map[*conn]struct{} // every open WebSocket connection, routed or silent
	attempts  []Attempt
	refuse    int // handshakes still to refuse
	rng       *rand.Rand
	restCalls []RESTCall
	fail      restFailure
	weightMin int64 // UTC minute (unix seconds / 60) that weight belongs to
	weight    int
}

// market is one listed symbol: its id counters, price walk, history and subscribers.
type market struct {
	symbol  string
	nextID  int64 // next aggregate trade id
	nextRaw int64 // next raw trade id ("f")
	cents   int64 // last price in hundredths
	lastT   int64
	trades  []Trade
	conns   map[*conn]struct{} // correctly routed connections, stalled ones included
	pongs   int
}

// New returns an Exchange with no symbols listed. Call Close when done with it.
func New(opts Options) *Exchange {
	if opts.PingInterval <= 0 {
		opts.PingInterval = 3 * time.Minute
	}
	if opts.Retention <= 0 {
		opts.Retention = 48 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Exchange{
		opts:    opts,
		quit:    make(chan struct{}),
		markets: make(map[string]*market),
		conns:   make(map[*conn]struct{}),
		rng:     rand.New(rand.NewPCG(1, 2)),
	}
}

// ServeHTTP serves /fapi/v1/aggTrades, WebSocket handshakes on any other path, and 404 otherwise.
func (x *Exchange) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/fapi/v1/aggTrades":
		x.serveAggTrades(w, r)
	case isUpgrade(r):
		x.serveWS(w, r)
	default:
		http.NotFound(w, r)
	}
}

// Close closes every WebSocket connection without a close frame and waits for every goroutine the
// Exchange started. Later handshakes are refused with 503; REST keeps answering. Safe to call twice.
func (x *Exchange) Close() {
	x.mu.Lock()
	if !x.closed {
		x.closed = true
		close(x.quit)
		for c := range x.conns {
			c.shutdown()
		}
	}
	x.mu.Unlock()
	x.wg.Wait()
}

// List marks symbols as listed. Symbols are taken in canonical form (ASCII upper-cased here) and
// must consist of letters, digits and '_'; List panics otherwise. Listing a listed symbol does nothing.
// Each newly listed symbol starts at its own large first id (1e9 times its listing position).
func (x *Exchange) List(symbols ...string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, s := range symbols {
		s = upperASCII(s)
		if !validSymbol(s) {
			panic("fakebinance: invalid symbol " + s)
		}
		if x.markets[s] != nil {
			continue
		}
		n := int64(len(x.markets) + 1)
		h := fnv.New32a()
		h.Write([]byte(s))
		x.markets[s] = &market{
			symbol:  s,
			nextID:  n * 1_000_000_000,
			nextRaw: n * 3_000_000_000,
			cents:   100_00 + int64(h.Sum32()%10_000_000), // 100.00 .. 100099.99
			conns:   make(map[*conn]struct{}),
		}
	}
}

// Publish generates n trades of a listed symbol (ids +1 each, times non-decreasing, a random-walk
// price), appends them to the history, queues each as one text frame to every live, non-stalled
// subscriber in order, and returns them. A subscriber whose queue is full is dropped (TCP closed)
// rather than blocking Publish. Publish panics if symbol is not listed.
func (x *Exchange) Publish(symbol string, n int) []Trade {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.mustMarket(symbol)
	now := x.opts.Now().UnixMilli()
	out := make([]Trade, 0, n)
	for range n {
		t := x.nextTrade(m, now)
		m.trades = append(m.trades, t)
		out = append(out, t)
		frame := appendFrame(nil, m.symbol, t, t.Time+1+x.rng.Int64N(9))
		x.deliver(m, outMsg{kind: msgText, data: frame})
	}
	return out
}

func (x *Exchange) nextTrade(m *market, now int64) Trade {
	m.lastT = max(m.lastT, now)
	m.cents = max(1, m.cents+x.rng.Int64N(21)-10)
	qty := appendFixed(nil, 1+x.rng.Int64N(5000), 3)
	t := Trade{
		ID:         m.nextID,
		Time:       m.lastT,
		Price:      string(appendFixed(nil, m.cents, 2)),
		Qty:        string(qty),
		FirstID:    m.nextRaw,
		LastID:     m.nextRaw + x.rng.Int64N(3),
		BuyerMaker: x.rng.IntN(2) == 0,
	}
	m.nextID++
	m.nextRaw = t.LastID + 1
	return t
}

// Skip advances the id counter of a listed symbol by n without trades, leaving a hole in the
// exchange's own history. Skip panics if symbol is not listed.
func (x *Exchange) Skip(symbol string, n int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.mustMarket(symbol)
	m.nextID += int64(n)
	m.nextRaw += int64(n)
}

// Trades returns a copy of every trade generated for symbol, in id order (nil if not listed).
func (x *Exchange) Trades(symbol string) []Trade {
	x.mu.Lock()
	defer x.mu.Unlock()
	if m := x.markets[upperASCII(symbol)]; m != nil {
		return append([]Trade(nil), m.trades...)
	}
	return nil
}

// Run lists symbols and publishes rate trades per second to each of them until ctx is done or
// the Exchange is closed. It paces on the real clock, publishing in small batches.
func (x *Exchange) Run(ctx context.Context, rate float64, symbols ...string) {
	x.List(symbols...)
	if rate <= 0 {
		select {
		case <-ctx.Done():
		case <-x.quit:
		}
		return
	}
	tick := time.NewTicker(max(10*time.Millisecond, time.Duration(float64(time.Second)/rate)))
	defer tick.Stop()
	start, sent := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-x.quit:
			return
		case now := <-tick.C:
			due := int(now.Sub(start).Seconds()*rate) - sent
			if due <= 0 {
				continue
			}
			for _, s := range symbols {
				x.Publish(s, due)
			}
			sent += due
		}
	}
}

// mustMarket returns the listed market of symbol or panics. Callers hold x.mu.
func (x *Exchange) mustMarket(symbol string) *market {
	m := x.markets[upperASCII(symbol)]
	if m == nil {
		panic("fakebinance: symbol not listed: " + symbol)
	}
	return m
}

// appendFrame appends the raw-mode aggTrade frame of t, fields in the order Binance sends them.
func appendFrame(b []byte, symbol string, t Trade, eventTime int64) []byte {
	b = append(b, `{"e":"aggTrade","E":`...)
	b = appendInt(b, eventTime)
	b = append(b, `,"a":`...)
	b = appendInt(b, t.ID)
	b = append(b, `,"s":"`...)
	b = append(b, symbol...)
	b = append(b, `",`...)
	b = appendTradeTail(b, t)
	return append(b, `,"st":1}`...)
}

// appendRow appends t as one row of the REST aggTrades answer.
func appendRow(b []byte, t Trade) []byte {
	b = append(b, `{"a":`...)
	b = appendInt(b, t.ID)
	b = append(b, ',')
	b = appendTradeTail(b, t)
	return append(b, '}')
}

// appendTradeTail appends the fields p through m, which frames and REST rows share.
func appendTradeTail(b []byte, t Trade) []byte {
	b = append(b, `"p":"`...)
	b = append(b, t.Price...)
	b = append(b, `","q":"`...)
	b = append(b, t.Qty...)
	b = append(b, `","nq":"`...)
	b = append(b, t.Qty...)
	b = append(b, `","f":`...)
	b = appendInt(b, t.FirstID)
	b = append(b, `,"l":`...)
	b = appendInt(b, t.LastID)
	b = append(b, `,"T":`...)
	b = appendInt(b, t.Time)
	b = append(b, `,"m":`...)
	if t.BuyerMaker {
		return append(b, "true"...)
	}
	return append(b, "false"...)
}

// appendFixed appends v/10^decimals with exactly that many decimals; v must not be negative.
func appendFixed(b []byte, v int64, decimals int) []byte {
	div := int64(1)
	for range decimals {
		div *= 10
	}
	b = appendInt(b, v/div)
	b = append(b, '.')
	frac := appendInt(nil, div+v%div) // leading "1" keeps the zero padding
	return append(b, frac[1:]...)
}

// upperASCII upper-cases ASCII letters only, as Binance does with symbols.
func upperASCII(s string) string {
	return strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}, s)
}

// lowerASCII lower-cases ASCII letters only, as Binance stream names require.
func lowerASCII(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r - 'A' + 'a'
		}
		return r
	}, s)
}

func validSymbol(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			return false
		}
	}
	return true
}

func appendInt(b []byte, v int64) []byte { return strconv.AppendInt(b, v, 10) }
