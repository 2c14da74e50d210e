// Package settings keeps the set of running streams equal to the enabled
// symbols of symbol_settings, polling the table and starting and stopping one
// stream per symbol.
package settings

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/symbol"
)

// Source reads symbol_settings.
type Source interface {
	Settings(ctx context.Context) ([]database.Setting, error)
}

// Stream is one symbol's running stream (a *websocket.Client).
type Stream interface {
	Run(ctx context.Context) // returns once ctx is cancelled and the stream is closed
	Connected() bool
}

// Watcher owns the running streams. Run and Connected are safe to call
// concurrently; Run must be called once.
type Watcher struct {
	src       Source
	newStream func(sym string) Stream
	interval  time.Duration
	log       *slog.Logger

	mu      sync.Mutex
	running map[string]*running

	invalid map[string]bool // raw names already reported as invalid; Run's goroutine only
}

type running struct {
	stream Stream
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a watcher that reads src every interval and makes a stream for
// each enabled symbol with newStream. Symbols handed to newStream are
// normalised and valid.
func New(src Source, newStream func(sym string) Stream, interval time.Duration, logger *slog.Logger) *Watcher {
	return &Watcher{
		src:       src,
		newStream: newStream,
		interval:  interval,
		log:       logger,
		running:   make(map[string]*running),
		invalid:   make(map[string]bool),
	}
}

// Run applies symbol_settings at once and then every interval until ctx is
// cancelled; then it stops every stream and returns once all have returned.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.poll(ctx)
		select {
		case <-ctx.Done():
			w.stopAll()
			return
		case <-t.C:
		}
	}
}

// Connected reports whether sym has a stream that is connected now.
func (w *Watcher) Connected(sym string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.running[sym]
	return ok && r.stream.Connected()
}

// Streams returns the running streams by symbol, in a new map.
func (w *Watcher) Streams() map[string]Stream {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]Stream, len(w.running))
	for sym, r := range w.running {
		out[sym] = r.stream
	}
	return out
}

// poll reads the settings once and starts and stops streams to match. Polls
// run one after another and a stopped stream has returned before poll does,
// so a symbol never has two streams.
func (w *Watcher) poll(ctx context.Context) {
	rows, err := w.src.Settings(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Error("cannot read symbol_settings, keeping running streams", "error", err, "running", w.count())
		}
		return
	}
	want := w.desired(rows)
	w.mu.Lock()
	var stopped []*running
	for sym, r := range w.running {
		if enabled, listed := want[sym]; !enabled {
			delete(w.running, sym)
			stopped = append(stopped, r)
			r.cancel()
			if listed {
				w.log.Info("symbol disabled, stopping stream", "symbol", sym)
			} else {
				w.log.Info("symbol removed, stopping stream", "symbol", sym)
			}
		}
	}
	w.mu.Unlock()
	for _, r := range stopped {
		<-r.done
	}
	if ctx.Err() != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, row := range rows {
		sym, err := symbol.Normalize(row.Symbol)
		if err != nil || !want[sym] || w.running[sym] != nil {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		r := &running{stream: w.newStream(sym), cancel: cancel, done: make(chan struct{})}
		w.running[sym] = r
		go func() {
			defer close(r.done)
			r.stream.Run(sctx)
		}()
		w.log.Info("symbol enabled, stream started", "symbol", sym)
	}
}

// desired maps each valid symbol in rows to whether any of its rows is
// enabled ('btcusdt' and 'BTCUSDT' are the same symbol). Invalid names are
// reported once each, not at every poll.
func (w *Watcher) desired(rows []database.Setting) map[string]bool {
	want := make(map[string]bool, len(rows))
	invalid := make(map[string]bool)
	for _, row := range rows {
		sym, err := symbol.Normalize(row.Symbol)
		if err != nil {
			invalid[row.Symbol] = true
			if !w.invalid[row.Symbol] {
				w.log.Error("symbol ignored", "error", err)
			}
			continue
		}
		want[sym] = want[sym] || row.Enabled
	}
	w.invalid = invalid
	return want
}

func (w *Watcher) stopAll() {
	w.mu.Lock()
	all := w.running
	w.running = make(map[string]*running)
	w.mu.Unlock()
	for _, r := range all {
		r.cancel()
	}
	for _, r := range all {
		<-r.done
	}
}

func (w *Watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.running)
}
