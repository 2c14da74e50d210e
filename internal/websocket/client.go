// Package websocket keeps one symbol's Binance aggTrade stream flowing into
// the database: it dials, reads and parses frames, stores each trade, and
// reconnects for as long as it runs.
package websocket

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	gorillaws "github.com/gorilla/websocket"

	"binance-symbol-tick-store/internal/aggtrade"
	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/symbol"
)

const (
	maxFrameBytes    = 1 << 20          // a larger frame closes the connection
	handshakeTimeout = 10 * time.Second // dial plus WebSocket handshake
	writeWait        = time.Second      // for pongs and the close frame
	logEvery         = time.Minute      // repeated warnings are summarised at this pace
)

// Store is where trades go. Insert must store the tick or return an error; it
// is called from the client's goroutine, one tick at a time.
type Store interface {
	CreateTable(ctx context.Context, sym string) error
	Insert(ctx context.Context, sym string, t database.Tick) error
}

// Config is what one Client needs. Symbol must be normalised.
type Config struct {
	Symbol       string
	BaseURL      string        // e.g. wss://fstream.binance.com/market/ws
	StaleTimeout time.Duration // silence, pings included, after which the socket is dead
	Store        Store
	Logger       *slog.Logger
	Dialer       *gorillaws.Dialer                                // nil: a dialer with a 10 s handshake timeout
	Sleep        func(ctx context.Context, d time.Duration) error // nil: a timer; tests inject their own clock
}

// Client streams one symbol. Run does the work; Connected may be called from
// any goroutine.
type Client struct {
	cfg        Config
	url        string
	log        *slog.Logger
	connected  atomic.Bool
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
	u := cfg.BaseURL + "/" + symbol.Stream(cfg.Symbol)
	return &Client{
		cfg:        cfg,
		url:        u,
		log:        cfg.Logger.With("symbol", cfg.Symbol),
		badFrames:  throttle{every: logEvery},
		failWrites: throttle{every: logEvery},
	}
}

// URL is the stream URL the client dials.
func (c *Client) URL() string { return c.url }

// Connected reports whether a stream connection is open right now.
func (c *Client) Connected() bool { return c.connected.Load() }

// Run creates the symbol's table, then connects and stores trades until ctx
// is cancelled, reconnecting after every failure: at once after a connection
// that delivered trades, otherwise after a back-off of 1, 2, 4, 8, 16 and
// then 30 s, reset as soon as trades flow again. On return the connection is
// closed (with a close frame) and no write is in flight.
func (c *Client) Run(ctx context.Context) {
	// A failure here is not fatal: Insert creates a missing table too.
	if err := c.cfg.Store.CreateTable(ctx, c.cfg.Symbol); err != nil {
		c.log.Error("cannot create table", "error", err)
	}
	var b backoff
	for {
		delivered := c.session(ctx)
		if ctx.Err() != nil {
			return
		}
		var delay time.Duration
		if delivered {
			b.reset()
		} else {
			delay = b.next()
		}
		c.log.Info("websocket reconnecting", "delay", delay)
		if c.cfg.Sleep(ctx, delay) != nil {
			return
		}
	}
}

// session runs one connection until it fails or ctx ends, and reports
// whether it delivered at least one trade.
func (c *Client) session(ctx context.Context) (delivered bool) {
	conn, resp, err := c.cfg.Dialer.DialContext(ctx, c.url, nil)
	if err != nil {
		if ctx.Err() == nil {
			attrs := []any{"url", c.url, "error", err}
			if resp != nil {
				attrs = append(attrs, "http_status", resp.StatusCode)
			}
			c.log.Warn("websocket dial failed", attrs...)
		}
		return false
	}
	defer conn.Close()
	c.connected.Store(true)
	defer c.connected.Store(false)
	c.log.Info("websocket connected", "url", c.url)

	// Stopping sends a close frame and unblocks the read below.
	stop := context.AfterFunc(ctx, func() {
		_ = conn.WriteControl(gorillaws.CloseMessage,
			gorillaws.FormatCloseMessage(gorillaws.CloseNormalClosure, ""), time.Now().Add(writeWait))
		_ = conn.SetReadDeadline(time.Now())
	})
	defer stop()

	conn.SetReadLimit(maxFrameBytes)
	alive := func() { _ = conn.SetReadDeadline(time.Now().Add(c.cfg.StaleTimeout)) }
	alive()
	conn.SetPingHandler(func(payload string) error {
		alive()
		err := conn.WriteControl(gorillaws.PongMessage, []byte(payload), time.Now().Add(writeWait))
		if err != nil && !errors.Is(err, gorillaws.ErrCloseSent) && !isTimeout(err) {
			return err
		}
		return nil
	})

	var buf bytes.Buffer
	trades := 0
	for {
		_, r, err := conn.NextReader()
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			if ctx.Err() == nil {
				c.logDisconnect(err, trades)
			} else {
				c.log.Info("websocket closed", "trades", trades)
			}
			return trades > 0
		}
		alive()
		if c.handle(ctx, buf.Bytes()) {
			trades++
		}
	}
}

// handle parses and stores one frame and reports whether it was a trade.
func (c *Client) handle(ctx context.Context, frame []byte) bool {
	tick, err := aggtrade.ParseFrame(frame)
	if errors.Is(err, aggtrade.ErrNotTrade) {
		c.log.Debug("frame ignored", "frame", aggtrade.Clip(frame))
		return false
	}
	if err != nil {
		if n, ok := c.badFrames.allow(time.Now()); ok {
			c.log.Warn("bad frame skipped", "error", err, "frame", aggtrade.Clip(frame), "skipped_before", n)
		}
		return false
	}
	c.log.Debug("trade", "id", tick.ID, "time", tick.Timestamp, "price", tick.Price)
	if err := c.cfg.Store.Insert(ctx, c.cfg.Symbol, tick); err != nil {
		if n, ok := c.failWrites.allow(time.Now()); ok {
			c.log.Error("tick not stored", "error", err, "id", tick.ID, "skipped_before", n)
		}
	}
	return true
}

func (c *Client) logDisconnect(err error, trades int) {
	attrs := []any{"trades", trades, "error", err}
	var ce *gorillaws.CloseError
	switch {
	case errors.As(err, &ce):
		attrs = append(attrs, "close_code", ce.Code)
	case isTimeout(err):
		attrs = append(attrs, "reason", "stale: no frame or ping within "+c.cfg.StaleTimeout.String())
	case errors.Is(err, gorillaws.ErrReadLimit):
		attrs = append(attrs, "reason", "frame over 1 MiB")
	}
	c.log.Warn("websocket disconnected", attrs...)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		strings.Contains(err.Error(), "i/o timeout")
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
// counts the ones it held back. Used from one goroutine.
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

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
