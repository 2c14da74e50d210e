// Package websocket keeps one symbol's Binance aggTrade stream flowing into
// the database: it dials, reads and parses frames, stores each trade, spots
// the ids it missed and hands them to gap repair, and reconnects for as long
// as it runs.
package websocket

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gorillaws "github.com/gorilla/websocket"

	"binance-symbol-tick-store/internal/aggtrade"
	"binance-symbol-tick-store/internal/backfill"
	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/limit"
	"binance-symbol-tick-store/internal/rest"
	"binance-symbol-tick-store/internal/symbol"
)

const (
	maxFrameBytes    = 1 << 20          // a larger frame closes the connection
	handshakeTimeout = 10 * time.Second // dial plus WebSocket handshake
	writeWait        = time.Second      // for pongs and the close frame
	logEvery         = time.Minute      // repeated warnings are summarised at this pace
	auditWindow      = 48 * time.Hour   // how far back Binance serves trades by id
	auditEvery       = 24 * time.Hour   // the start-up audit is repeated this often
	rotateRetry      = time.Minute      // a failed rotation dial is retried after this
	unlistedEvery    = time.Hour        // "not listed" is logged at most this often
	deliveryGrace    = 3 * time.Second  // how late a streamed trade may be before it counts as missed
	startCheckAfter  = 15 * time.Second // after a restart, silence this long is worth a REST call
)

// Store is where trades go (a *database.DB).
type Store interface {
	CreateTable(ctx context.Context, sym string) error
	Insert(ctx context.Context, sym string, t database.Tick) error
	InsertBatch(ctx context.Context, sym string, ticks []database.Tick) (int, error)
	MaxID(ctx context.Context, sym string) (int64, error)
	Holes(ctx context.Context, sym string, since, maxID int64) ([]database.Hole, error)
}

// REST is the part of Binance's REST API the client uses (a *rest.Client).
type REST interface {
	backfill.Fetcher
	Latest(ctx context.Context, sym string) (database.Tick, bool, error)
}

// Waiter admits connection attempts (a process-wide *limit.Window).
type Waiter interface {
	Wait(ctx context.Context) error
}

// Observer records a duration in seconds (a prometheus.Histogram).
type Observer interface {
	Observe(seconds float64)
}

// Config is what one Client needs. Symbol must be normalised; Store, REST
// and Logger are required; zero durations take Binance-sized defaults.
type Config struct {
	Symbol         string
	BaseURL        string        // e.g. wss://fstream.binance.com/market/ws
	StaleTimeout   time.Duration // no frame, pings included, for this long: the socket is dead
	MaxAge         time.Duration // replace a connection this old, overlap first
	SilenceTimeout time.Duration // no trade for this long: ask REST whether the market is really quiet
	Store          Store
	REST           REST
	Attempts       Waiter   // nil: no limit
	WriteLatency   Observer // nil: not measured; sees every live Insert
	Logger         *slog.Logger
	Dialer         *gorillaws.Dialer                                // nil: a dialer with a 10 s handshake timeout
	Sleep          func(ctx context.Context, d time.Duration) error // reconnect delays; nil: a timer (tests inject a clock)
}

// Client streams one symbol. Run does the work; the other methods may be
// called from any goroutine.
type Client struct {
	cfg    Config
	url    string
	log    *slog.Logger
	filler *backfill.Filler
	open   atomic.Int32 // connections open now
	checks chan silenceResult

	stored, writeErrors, dials atomic.Int64
	lastTrade                  atomic.Int64 // trade time of the last stored tick, Unix ms

	mu         sync.Mutex // guards the fields below, shared by the readers of overlapping connections
	last       int64      // highest trade id known: stored, or queued for repair; 0 before the first
	lastTime   int64      // its trade time, Unix ms
	streamed   int64      // highest trade id that arrived on a stream
	lastFrame  time.Time  // when the last trade arrived
	lastCheck  time.Time  // when REST was last asked about silence
	checking   bool
	checkSoon  bool      // restarted, no frame yet: check after startCheckAfter, not SilenceTimeout
	unlisted   time.Time // when "not listed" was last logged
	badFrames  throttle
	failWrites throttle
}

// New returns a client for cfg.Symbol; it does not connect until Run.
func New(cfg Config) *Client {
	if cfg.Dialer == nil {
		cfg.Dialer = &gorillaws.Dialer{Proxy: http.ProxyFromEnvironment, HandshakeTimeout: handshakeTimeout}
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleep
	}
	cfg.StaleTimeout = cmp.Or(cfg.StaleTimeout, 5*time.Minute)
	cfg.MaxAge = cmp.Or(cfg.MaxAge, 23*time.Hour+50*time.Minute)
	cfg.SilenceTimeout = cmp.Or(cfg.SilenceTimeout, 5*time.Minute)
	return &Client{
		cfg:        cfg,
		url:        cfg.BaseURL + "/" + symbol.Stream(cfg.Symbol),
		log:        cfg.Logger.With("symbol", cfg.Symbol),
		filler:     backfill.New(cfg.Symbol, cfg.REST, cfg.Store, cfg.Logger, sleep),
		checks:     make(chan silenceResult, 1),
		badFrames:  throttle{every: logEvery},
		failWrites: throttle{every: logEvery},
	}
}

// URL is the stream URL the client dials.
func (c *Client) URL() string { return c.url }

// Connected reports whether a stream connection is open right now.
func (c *Client) Connected() bool { return c.open.Load() > 0 }

// Stats are a client's running totals, for metrics.
type Stats struct {
	backfill.Stats
	Connected       bool
	TicksStored     int64 // live ticks written (a redelivered one counts again)
	WriteErrors     int64 // live ticks whose write failed (queued for repair)
	Reconnects      int64 // connection attempts after the first
	LastTradeMillis int64 // trade time of the last stored live tick; 0 before one
	PendingIDs      int64 // ids queued for repair
}

// Stats returns the running totals.
func (c *Client) Stats() Stats {
	return Stats{
		Stats:           c.filler.Stats(),
		Connected:       c.Connected(),
		TicksStored:     c.stored.Load(),
		WriteErrors:     c.writeErrors.Load(),
		Reconnects:      max(c.dials.Load()-1, 0),
		LastTradeMillis: c.lastTrade.Load(),
		PendingIDs:      c.filler.Pending(),
	}
}

// Run creates the symbol's table, repairs the holes of the last 48 hours and
// streams trades until ctx is cancelled, reconnecting after every failure: at
// once after a connection that delivered trades, otherwise after a back-off
// of 1, 2, 4, 8, 16 and then 30 s, reset as soon as trades flow again. On
// return every connection is closed (with a close frame) and no write is in
// flight.
func (c *Client) Run(ctx context.Context) {
	// A failure here is not fatal: Insert creates a missing table too.
	if err := c.cfg.Store.CreateTable(ctx, c.cfg.Symbol); err != nil {
		c.log.Error("cannot create table", "error", err)
	}
	last, err := c.cfg.Store.MaxID(ctx, c.cfg.Symbol)
	if err != nil {
		c.log.Error("cannot read the last stored id; the restart gap will not be repaired", "error", err)
	}
	c.mu.Lock()
	c.last = last
	// After a restart, the first frame reveals the trades made while the
	// store was down. On a quiet market it may not come for long: then ask
	// REST soon instead of after the full silence timeout.
	c.checkSoon = last > 0
	c.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() { c.filler.Run(ctx) })
	wg.Go(func() { c.audit(ctx, last) })
	c.stream(ctx, &wg)
	wg.Wait()
}

// audit queues the holes among the stored ids of the last 48 hours up to
// maxID (what a repair cut short by a restart left behind), now and then
// once a day, up to the last id known then. A new symbol (maxID 0) has
// nothing to audit at first.
func (c *Client) audit(ctx context.Context, maxID int64) {
	for {
		since := time.Now().Add(-auditWindow).UnixMilli()
		holes, err := c.cfg.Store.Holes(ctx, c.cfg.Symbol, since, maxID)
		if err != nil && ctx.Err() == nil {
			c.log.Error("audit of stored ids failed", "error", err)
		}
		for _, h := range holes {
			c.filler.Add(backfill.Gap{From: h.From, To: h.To, After: h.After, Before: h.Before, Cause: "audit"})
		}
		if sleep(ctx, auditEvery) != nil {
			return
		}
		c.mu.Lock()
		maxID = c.last
		c.mu.Unlock()
	}
}

// stream keeps a connection open until ctx ends.
func (c *Client) stream(ctx context.Context, wg *sync.WaitGroup) {
	var b backoff
	for {
		cn, err := c.dial(ctx, wg)
		var delay time.Duration
		if err == nil {
			if c.serve(ctx, cn, wg) {
				b.reset()
			} else {
				delay = b.next()
			}
		} else {
			delay = b.next()
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Info("websocket reconnecting", "delay", delay)
		if c.cfg.Sleep(ctx, delay) != nil {
			return
		}
	}
}

// conn is one open stream connection and its reader goroutine.
type conn struct {
	ws        *gorillaws.Conn
	opened    time.Time
	trades    atomic.Int64
	delivered chan struct{} // closed at the first trade
	ended     chan struct{} // closed when the reader has returned
	err       error         // why the reader returned; read after ended
}

// close sends a close frame and makes the reader return.
func (cn *conn) close() {
	_ = cn.ws.WriteControl(gorillaws.CloseMessage,
		gorillaws.FormatCloseMessage(gorillaws.CloseNormalClosure, ""), time.Now().Add(writeWait))
	_ = cn.ws.SetReadDeadline(time.Now())
}

// dial opens a connection, within the process-wide attempt limit, and
// starts its reader.
func (c *Client) dial(ctx context.Context, wg *sync.WaitGroup) (*conn, error) {
	if c.cfg.Attempts != nil {
		if err := c.cfg.Attempts.Wait(ctx); err != nil {
			return nil, err
		}
	}
	c.dials.Add(1)
	ws, resp, err := c.cfg.Dialer.DialContext(ctx, c.url, nil)
	if err != nil {
		if ctx.Err() == nil {
			attrs := []any{"url", c.url, "error", err}
			if resp != nil {
				attrs = append(attrs, "http_status", resp.StatusCode)
			}
			c.log.Warn("websocket dial failed", attrs...)
		}
		return nil, err
	}
	cn := &conn{ws: ws, opened: time.Now(), delivered: make(chan struct{}), ended: make(chan struct{})}
	c.open.Add(1)
	c.log.Info("websocket connected", "url", c.url)
	ws.SetReadLimit(maxFrameBytes)
	alive := func() { _ = ws.SetReadDeadline(time.Now().Add(c.cfg.StaleTimeout)) }
	alive()
	ws.SetPingHandler(func(payload string) error {
		alive()
		err := ws.WriteControl(gorillaws.PongMessage, []byte(payload), time.Now().Add(writeWait))
		if err != nil && !errors.Is(err, gorillaws.ErrCloseSent) && !isTimeout(err) {
			return err
		}
		return nil
	})
	wg.Go(func() {
		defer close(cn.ended)
		defer c.open.Add(-1)
		defer ws.Close()
		cn.err = c.read(ctx, cn, alive)
	})
	return cn, nil
}

// read handles frames until the connection fails or is closed.
func (c *Client) read(ctx context.Context, cn *conn, alive func()) error {
	var buf bytes.Buffer
	for {
		_, r, err := cn.ws.NextReader()
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			return err
		}
		alive()
		c.handle(ctx, cn, buf.Bytes())
	}
}

// serve watches one connection (and its replacement at rotation) until it
// ends, or ctx does; it reports whether the connection that ended had
// delivered trades.
func (c *Client) serve(ctx context.Context, cn *conn, wg *sync.WaitGroup) (healthy bool) {
	var next *conn // the replacement, during a rotation
	defer func() {
		for _, x := range []*conn{cn, next} {
			if x != nil {
				x.close()
				<-x.ended
			}
		}
	}()
	rotate := time.NewTimer(c.cfg.MaxAge)
	defer rotate.Stop()
	silence := time.NewTicker(min(c.cfg.SilenceTimeout/4, startCheckAfter))
	defer silence.Stop()
	for {
		var nextDelivered, nextEnded <-chan struct{}
		if next != nil {
			nextDelivered, nextEnded = next.delivered, next.ended
		}
		select {
		case <-ctx.Done():
			c.log.Info("websocket closed", "trades", cn.trades.Load())
			return false
		case <-cn.ended:
			c.logDisconnect(cn)
			if next == nil {
				healthy, cn = cn.trades.Load() > 0, nil
				return healthy
			}
			cn, next = next, nil // cut before the replacement delivered: it takes over
			rotate.Reset(c.cfg.MaxAge - time.Since(cn.opened))
		case <-rotate.C:
			c.log.Info("websocket rotating: opening the replacement first", "age", time.Since(cn.opened).Round(time.Second))
			var err error
			if next, err = c.dial(ctx, wg); err != nil {
				next = nil
				rotate.Reset(rotateRetry)
			}
		case <-nextDelivered:
			old := cn
			cn, next = next, nil
			old.close()
			<-old.ended
			c.log.Info("websocket rotated", "old_trades", old.trades.Load())
			rotate.Reset(c.cfg.MaxAge - time.Since(cn.opened))
		case <-nextEnded:
			c.logDisconnect(next)
			next = nil
			rotate.Reset(rotateRetry)
		case <-silence.C:
			c.flushSummaries()
			c.maybeCheckSilence(ctx, cn, wg)
		case res := <-c.checks:
			if res.dead && res.conn == cn {
				c.log.Warn("websocket delivers nothing while binance trades: reconnecting",
					"binance_last_id", res.latest, "silent_for", time.Since(cn.opened).Round(time.Second))
				cn.close()
			}
		}
	}
}

// handle parses and stores one frame, and queues the ids it reveals missing.
func (c *Client) handle(ctx context.Context, cn *conn, frame []byte) {
	tick, err := aggtrade.ParseFrame(frame, c.cfg.Symbol)
	if errors.Is(err, aggtrade.ErrNotTrade) {
		c.log.Debug("frame ignored", "frame", aggtrade.Clip(frame))
		return
	}
	now := time.Now()
	if err != nil {
		c.mu.Lock()
		n, ok := c.badFrames.allow(now)
		c.mu.Unlock()
		if ok {
			c.log.Warn("bad frame skipped", "error", err, "frame", aggtrade.Clip(frame), "skipped_before", n)
		}
		return
	}
	if c.log.Enabled(ctx, slog.LevelDebug) { // the arguments would escape on every frame
		c.log.Debug("trade", "id", tick.ID, "time", tick.Timestamp, "price", tick.Price)
	}
	first := cn.trades.Add(1) == 1
	if first {
		close(cn.delivered)
	}

	c.mu.Lock()
	var gap backfill.Gap
	if c.last > 0 && tick.ID > c.last+1 {
		gap = backfill.Gap{From: c.last + 1, To: tick.ID - 1, After: c.lastTime, Before: tick.Timestamp, Cause: "missed frames"}
		if first {
			gap.Cause = "reconnect"
		}
	}
	if tick.ID > c.last {
		c.last, c.lastTime = tick.ID, tick.Timestamp
	}
	c.streamed = max(c.streamed, tick.ID)
	c.lastFrame = now
	c.checkSoon = false // this frame revealed the restart gap, if any
	c.mu.Unlock()
	if gap.From > 0 {
		c.filler.Add(gap)
	}

	if ctx.Err() != nil {
		return // stopping: the next start repairs this id rather than delay the exit
	}
	start := time.Now()
	err = c.cfg.Store.Insert(ctx, c.cfg.Symbol, tick)
	if c.cfg.WriteLatency != nil {
		c.cfg.WriteLatency.Observe(time.Since(start).Seconds())
	}
	if err == nil {
		c.stored.Add(1)
		c.lastTrade.Store(tick.Timestamp)
	} else {
		// Spec: log and skip, no retry. The skipped id is a gap like any other.
		c.writeErrors.Add(1)
		c.filler.AddQuiet(backfill.Gap{From: tick.ID, To: tick.ID, Cause: "write failed"})
		c.mu.Lock()
		n, ok := c.failWrites.allow(now)
		c.mu.Unlock()
		if ok {
			c.log.Error("tick not stored, queued for repair", "error", err, "id", tick.ID, "skipped_before", n)
		}
	}
}

// flushSummaries logs the count of warnings held back by the throttles once
// their period is over, so a flood that stops is still accounted for.
func (c *Client) flushSummaries() {
	now := time.Now()
	c.mu.Lock()
	frames, framesOK := c.badFrames.flush(now)
	writes, writesOK := c.failWrites.flush(now)
	c.mu.Unlock()
	if framesOK {
		c.log.Warn("bad frames skipped since the last report", "count", frames)
	}
	if writesOK {
		c.log.Error("ticks not stored since the last report, queued for repair", "count", writes)
	}
}

// silenceResult is what REST said about a quiet connection.
type silenceResult struct {
	conn   *conn
	dead   bool
	latest int64
}

// maybeCheckSilence asks REST, in the background and at most once per
// SilenceTimeout, whether Binance traded while cn delivered nothing.
func (c *Client) maybeCheckSilence(ctx context.Context, cn *conn, wg *sync.WaitGroup) {
	now := time.Now()
	c.mu.Lock()
	quietSince := c.lastFrame
	if quietSince.Before(cn.opened) {
		quietSince = cn.opened
	}
	wait := c.cfg.SilenceTimeout
	if c.checkSoon {
		wait = min(wait, startCheckAfter)
	}
	due := !c.checking && now.Sub(quietSince) >= wait && now.Sub(c.lastCheck) >= wait
	if due {
		c.checking, c.checkSoon, c.lastCheck = true, false, now
	}
	c.mu.Unlock()
	if !due {
		return
	}
	wg.Go(func() {
		res := c.checkSilence(ctx, cn)
		c.mu.Lock()
		c.checking = false
		c.mu.Unlock()
		select {
		case c.checks <- res:
		default:
		}
	})
}

// checkSilence compares Binance's latest trade with the last one seen. Trades
// Binance made since cn opened that never arrived mean cn is dead. Trades
// older than that were missed while no connection was open (a restart on a
// quiet market): they are queued for repair.
func (c *Client) checkSilence(ctx context.Context, cn *conn) silenceResult {
	latest, ok, err := c.cfg.REST.Latest(ctx, c.cfg.Symbol)
	switch {
	case errors.Is(err, rest.ErrUnknownSymbol):
		c.mu.Lock()
		logIt := time.Since(c.unlisted) >= unlistedEvery
		if logIt {
			c.unlisted = time.Now()
		}
		c.mu.Unlock()
		if logIt {
			c.log.Error("binance does not list this symbol on USD-M futures: the stream will stay silent", "error", err)
		}
		return silenceResult{conn: cn}
	case err != nil:
		if ctx.Err() == nil {
			c.log.Warn("silence check failed", "error", err)
		}
		return silenceResult{conn: cn}
	case !ok:
		return silenceResult{conn: cn}
	}
	c.mu.Lock()
	last, lastTime, streamed := c.last, c.lastTime, c.streamed
	if latest.ID > last {
		c.last, c.lastTime = latest.ID, latest.Timestamp
	}
	c.mu.Unlock()
	if latest.ID > last && last > 0 {
		c.filler.Add(backfill.Gap{From: last + 1, To: latest.ID, After: lastTime, Before: latest.Timestamp + 1, Cause: "silence check"})
	}
	// Dead: Binance traded after cn opened, long enough ago that the trade
	// should have arrived, and it did not.
	grace := min(deliveryGrace, c.cfg.SilenceTimeout/2)
	dead := latest.ID > streamed && latest.Timestamp >= cn.opened.UnixMilli() &&
		time.Since(time.UnixMilli(latest.Timestamp)) > grace
	if !dead {
		c.log.Debug("silence check: market quiet", "binance_last_id", latest.ID)
	}
	return silenceResult{conn: cn, dead: dead, latest: latest.ID}
}

func (c *Client) logDisconnect(cn *conn) {
	err := cn.err
	attrs := []any{"trades", cn.trades.Load(), "error", err}
	var ce *gorillaws.CloseError
	switch {
	case errors.As(err, &ce):
		attrs = append(attrs, "close_code", ce.Code)
	case isTimeout(err):
		attrs = append(attrs, "reason", "no frame or ping within "+c.cfg.StaleTimeout.String())
	case errors.Is(err, gorillaws.ErrReadLimit):
		attrs = append(attrs, "reason", "frame over 1 MiB")
	}
	c.log.Warn("websocket disconnected", attrs...)
}

func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && (errors.As(err, &ne) && ne.Timeout() || strings.Contains(err.Error(), "i/o timeout"))
}

// backoff yields 1, 2, 4, 8, 16, 30, 30, ... seconds until reset.
type backoff struct{ d time.Duration }

func (b *backoff) next() time.Duration {
	switch {
	case b.d == 0:
		b.d = time.Second
	case b.d < 30*time.Second:
		b.d = min(2*b.d, 30*time.Second)
	}
	return b.d
}

func (b *backoff) reset() { b.d = 0 }

// throttle lets a repeating log line through at most once per period and
// counts the ones it held back. Not safe for concurrent use.
type throttle struct {
	every      time.Duration
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many were held back since the
// last line that was logged.
func (t *throttle) allow(now time.Time) (suppressed int, ok bool) {
	if !t.last.IsZero() && now.Sub(t.last) < t.every {
		t.suppressed++
		return 0, false
	}
	n := t.suppressed
	t.last, t.suppressed = now, 0
	return n, true
}

// flush reports the lines held back once the period since the last logged
// one is over, and starts a new period.
func (t *throttle) flush(now time.Time) (suppressed int, ok bool) {
	if t.suppressed == 0 || now.Sub(t.last) < t.every {
		return 0, false
	}
	n := t.suppressed
	t.last, t.suppressed = now, 0
	return n, true
}

// sleep waits d on the real clock, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error { return limit.Sleep(ctx, limit.Real(), d) }
