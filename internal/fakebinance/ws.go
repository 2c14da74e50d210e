package fakebinance

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gorillaws "github.com/gorilla/websocket"
)

// Attempt is one WebSocket handshake seen by the Exchange.
type Attempt struct {
	At      time.Time // by Options.Now
	Path    string    // unescaped request path
	Refused bool      // answered 503 without upgrade
}

const (
	queueLen  = 4096             // frames a subscriber may lag behind before it is cut
	writeWait = 10 * time.Second // for one frame to reach a client
	closeWait = time.Second      // for the client's close reply after our close frame
)

type msgKind int

const (
	msgText  msgKind = iota
	msgPing          // ping with the current ms timestamp
	msgClose         // close frame, then close the connection
	msgDrop          // close the connection without a close frame
)

// outMsg is one entry of a connection's outbound queue; the queue keeps frames and closes in order.
type outMsg struct {
	kind msgKind
	data []byte
	code int
	text string
}

// conn is one accepted WebSocket connection, served by a reader (the handler goroutine) and a writer.
type conn struct {
	ws      *gorillaws.Conn
	market  *market // nil for a silent connection (wrong route, stream name or symbol)
	out     chan outMsg
	done    chan struct{} // closed by shutdown
	once    sync.Once
	stalled atomic.Bool
}

// shutdown closes the TCP connection without a close frame; both goroutines then end.
func (c *conn) shutdown() {
	c.once.Do(func() {
		close(c.done)
		c.ws.Close()
	})
}

func isUpgrade(r *http.Request) bool { return gorillaws.IsWebSocketUpgrade(r) }

// serveWS accepts a handshake on any path (unless refused) and, for "/market/ws/<lower>@aggTrade"
// of a symbol listed at that moment, subscribes the connection to it. Every other connection stays
// silent: it gets pings and the max-age cut, never a frame or an error.
func (x *Exchange) serveWS(w http.ResponseWriter, r *http.Request) {
	at := x.opts.Now()
	x.mu.Lock()
	refused := x.closed || x.refuse > 0
	if refused && !x.closed {
		x.refuse--
	}
	x.attempts = append(x.attempts, Attempt{At: at, Path: r.URL.Path, Refused: refused})
	if !refused {
		x.wg.Add(1)
	}
	x.mu.Unlock()
	if refused {
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
		return
	}
	defer x.wg.Done()

	up := gorillaws.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered the client
	}
	c := x.register(ws, r.URL.Path)
	if c == nil {
		ws.Close()
		return
	}
	go x.writeLoop(c)
	for {
		// Client messages are read only to see pongs and the end of the connection.
		if _, _, err := ws.NextReader(); err != nil {
			break
		}
	}
	c.shutdown()
	x.mu.Lock()
	delete(x.conns, c)
	x.detach(c)
	x.mu.Unlock()
}

// register records a new connection and routes it; it returns nil once the Exchange is closed.
func (x *Exchange) register(ws *gorillaws.Conn, path string) *conn {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return nil
	}
	c := &conn{ws: ws, market: x.route(path), out: make(chan outMsg, queueLen), done: make(chan struct{})}
	x.conns[c] = struct{}{}
	if m := c.market; m != nil {
		m.conns[c] = struct{}{}
		ws.SetPongHandler(func(string) error {
			x.mu.Lock()
			m.pongs++
			x.mu.Unlock()
			return nil
		})
	}
	x.wg.Add(1) // for writeLoop
	return c
}

// route returns the market a handshake path subscribes to, or nil for a silent connection.
// Callers hold x.mu.
func (x *Exchange) route(path string) *market {
	stream, ok := strings.CutPrefix(path, "/market/ws/")
	if !ok {
		return nil
	}
	name, ok := strings.CutSuffix(stream, "@aggTrade")
	if !ok || name != lowerASCII(name) {
		return nil
	}
	return x.markets[upperASCII(name)]
}

// detach removes c from its market so that nothing more is routed to it. Callers hold x.mu.
func (x *Exchange) detach(c *conn) {
	if c.market != nil {
		delete(c.market.conns, c)
	}
}

// deliver queues msg to every non-stalled subscriber of m. Callers hold x.mu.
func (x *Exchange) deliver(m *market, msg outMsg) {
	for c := range m.conns {
		if !c.stalled.Load() {
			x.send(c, msg)
		}
	}
}

// send queues msg to c without blocking; a connection whose queue is full is cut (TCP closed,
// no close frame), as a lagging client would be. Callers hold x.mu.
func (x *Exchange) send(c *conn, msg outMsg) {
	select {
	case c.out <- msg:
	default:
		x.detach(c)
		c.shutdown()
	}
}

// writeLoop is the only goroutine writing frames to c: queued messages in order, pings every
// PingInterval (none while stalled) and the MaxConnAge cut.
func (x *Exchange) writeLoop(c *conn) {
	defer x.wg.Done()
	defer c.shutdown()
	ping := time.NewTicker(x.opts.PingInterval)
	defer ping.Stop()
	var maxAge <-chan time.Time
	if x.opts.MaxConnAge > 0 {
		t := time.NewTimer(x.opts.MaxConnAge)
		defer t.Stop()
		maxAge = t.C
	}
	for {
		var err error
		select {
		case <-c.done:
			return
		case msg := <-c.out:
			switch msg.kind {
			case msgText:
				c.ws.SetWriteDeadline(time.Now().Add(writeWait))
				err = c.ws.WriteMessage(gorillaws.TextMessage, msg.data)
			case msgPing:
				err = x.ping(c)
			case msgClose:
				closeHandshake(c, msg.code, msg.text)
				return
			case msgDrop:
				return
			}
		case <-ping.C:
			if !c.stalled.Load() {
				err = x.ping(c)
			}
		case <-maxAge:
			if c.stalled.Load() {
				maxAge = nil // a half-open connection does not even see its cut
				continue
			}
			x.mu.Lock()
			x.detach(c)
			x.mu.Unlock()
			closeHandshake(c, gorillaws.CloseGoingAway, "max age")
			return
		}
		if err != nil {
			return
		}
	}
}

func (x *Exchange) ping(c *conn) error {
	payload := strconv.AppendInt(nil, x.opts.Now().UnixMilli(), 10)
	return c.ws.WriteControl(gorillaws.PingMessage, payload, time.Now().Add(writeWait))
}

// closeHandshake sends a close frame and gives the client a moment to answer before the
// caller closes the TCP connection.
func closeHandshake(c *conn, code int, text string) {
	msg := gorillaws.FormatCloseMessage(code, text)
	if c.ws.WriteControl(gorillaws.CloseMessage, msg, time.Now().Add(writeWait)) != nil {
		return
	}
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
	}
}

// Subscribers returns how many live, correctly routed, non-stalled connections symbol has now.
func (x *Exchange) Subscribers(symbol string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	if m := x.markets[upperASCII(symbol)]; m != nil {
		for c := range m.conns {
			if !c.stalled.Load() {
				n++
			}
		}
	}
	return n
}

// Connections returns how many WebSocket connections are open now, on any route, stalled or not.
func (x *Exchange) Connections() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.conns)
}

// Drop closes the TCP connection of every subscriber of symbol, stalled ones included, without a
// close frame (the client sees 1006), after the frames already queued to it.
func (x *Exchange) Drop(symbol string) {
	x.forEach(symbol, true, func(c *conn) {
		x.detach(c)
		x.send(c, outMsg{kind: msgDrop})
	})
}

// CloseWith sends a close frame with code and text to every non-stalled subscriber of symbol,
// after the frames already queued to it, then closes the connection.
func (x *Exchange) CloseWith(symbol string, code int, text string) {
	x.forEach(symbol, false, func(c *conn) {
		x.detach(c)
		x.send(c, outMsg{kind: msgClose, code: code, text: text})
	})
}

// Stall makes the current subscribers of symbol half-open: they get no more frames and no pings,
// and their TCP connection stays open. Later connections are served normally.
func (x *Exchange) Stall(symbol string) {
	x.forEach(symbol, false, func(c *conn) { c.stalled.Store(true) })
}

// SendRaw sends frame, unchanged, as one text frame to every non-stalled subscriber of symbol.
func (x *Exchange) SendRaw(symbol string, frame []byte) {
	frame = append([]byte(nil), frame...)
	x.forEach(symbol, false, func(c *conn) { x.send(c, outMsg{kind: msgText, data: frame}) })
}

// PingNow sends a ping (payload: the current ms timestamp) to every non-stalled subscriber of symbol.
func (x *Exchange) PingNow(symbol string) {
	x.forEach(symbol, false, func(c *conn) { x.send(c, outMsg{kind: msgPing}) })
}

// Pongs returns how many pongs subscribers of symbol have sent so far, over all connections.
func (x *Exchange) Pongs(symbol string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	if m := x.markets[upperASCII(symbol)]; m != nil {
		return m.pongs
	}
	return 0
}

// RefuseHandshakes makes the next n WebSocket handshakes, on any path, fail with HTTP 503.
// It replaces any count still pending.
func (x *Exchange) RefuseHandshakes(n int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.refuse = n
}

// Attempts returns every WebSocket handshake seen so far, in order.
func (x *Exchange) Attempts() []Attempt {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]Attempt(nil), x.attempts...)
}

// forEach calls f under x.mu for every subscriber of symbol (stalled ones only if withStalled).
func (x *Exchange) forEach(symbol string, withStalled bool, f func(*conn)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := x.markets[upperASCII(symbol)]
	if m == nil {
		return
	}
	for c := range m.conns {
		if withStalled || !c.stalled.Load() {
			f(c)
		}
	}
}
