// Package http serves the store's plain-text status page and health check.
//
// Importers name it tickhttp, to keep net/http's name free.
package http

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"binance-symbol-tick-store/internal/database"
	"binance-symbol-tick-store/internal/symbol"
)

// Source is the read side of the database the pages need.
type Source interface {
	Settings(ctx context.Context) ([]database.Setting, error)
	TableSymbols(ctx context.Context) ([]string, error)
	Range(ctx context.Context, sym string) (first, last int64, ok bool, err error)
	Ping(ctx context.Context) error
}

// Streams tells whether a symbol's stream is connected now.
type Streams interface {
	Connected(sym string) bool
}

// Handler serves GET /status, GET /healthz and, if given, GET /metrics;
// every other path is 404 and every other method 405.
type Handler struct {
	src     Source
	streams Streams
	started time.Time
	now     func() time.Time
	log     *slog.Logger
	mux     *http.ServeMux
}

// NewHandler returns the handler; started is the process start, now the
// clock, metrics the /metrics page (nil: none).
func NewHandler(src Source, streams Streams, started time.Time, now func() time.Time, logger *slog.Logger, metrics http.Handler) *Handler {
	h := &Handler{src: src, streams: streams, started: started, now: now, log: logger, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /status", h.status)
	h.mux.HandleFunc("GET /healthz", h.healthz)
	if metrics != nil {
		h.mux.Handle("GET /metrics", metrics)
	}
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// NewServer wraps handler in a server with timeouts and size limits set, so
// slow or greedy clients cannot hold connections open.
func NewServer(handler http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := h.src.Ping(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "database: %v\n", err)
		return
	}
	io.WriteString(w, "ok\n")
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	rows, err := h.rows(r.Context())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		h.log.Error("status page failed", "error", err)
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, "Binance Tick Store\n\nStatus:     error (%v)\n", err)
		return
	}
	writeStatus(w, h.now().Sub(h.started), rows)
}

// row is one line of the symbol table on the status page.
type row struct {
	name        string // normalised symbol, or the quoted raw name when invalid
	on          bool
	invalid     bool
	hasData     bool
	first, last int64 // Unix ms
}

// rows lists the symbols in symbol_settings order, then those that only have
// a table left.
func (h *Handler) rows(ctx context.Context) ([]row, error) {
	settings, err := h.src.Settings(ctx)
	if err != nil {
		return nil, err
	}
	tables, err := h.src.TableSymbols(ctx)
	if err != nil {
		return nil, err
	}
	var out []row
	index := make(map[string]int) // symbol -> position in out
	for _, s := range settings {
		sym, err := symbol.Normalize(s.Symbol)
		if err != nil {
			out = append(out, row{name: symbol.Quote(s.Symbol), invalid: true})
			continue
		}
		if i, ok := index[sym]; ok { // 'btcusdt' and 'BTCUSDT': one symbol
			out[i].on = out[i].on || s.Enabled && h.streams.Connected(sym)
			continue
		}
		index[sym] = len(out)
		out = append(out, row{name: sym, on: s.Enabled && h.streams.Connected(sym)})
	}
	for _, sym := range tables {
		if _, ok := index[sym]; !ok {
			if n, err := symbol.Normalize(sym); err == nil && n == sym {
				index[sym] = len(out)
				out = append(out, row{name: sym})
			}
		}
	}
	for i := range out {
		if out[i].invalid {
			continue
		}
		out[i].first, out[i].last, out[i].hasData, err = h.src.Range(ctx, out[i].name)
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// writeStatus renders the page: a header, the uptime, and one aligned line
// per symbol with its first and last tick in UTC.
func writeStatus(w io.Writer, uptime time.Duration, rows []row) {
	var b strings.Builder
	b.WriteString("Binance Tick Store\n\nStatus:     running\nUptime:     ")
	b.WriteString(formatUptime(uptime))
	b.WriteString("\n")
	if len(rows) > 0 {
		b.WriteString("\n")
	}
	width := 12
	for _, r := range rows {
		width = max(width, displayWidth(r.name)+2)
	}
	for _, r := range rows {
		b.WriteString(r.name)
		b.WriteString(strings.Repeat(" ", width-displayWidth(r.name)))
		state := "off"
		if r.on {
			state = "on"
		}
		fmt.Fprintf(&b, "%-8s", state)
		switch {
		case r.invalid:
			b.WriteString("(invalid symbol, ignored)")
		case r.hasData:
			b.WriteString(formatTime(r.first) + "  ->  " + formatTime(r.last))
		default:
			b.WriteString("(no data yet)")
		}
		b.WriteString("\n")
	}
	io.WriteString(w, b.String())
}

// formatUptime renders d as "2d 14h 32m", leaving out leading zero units.
func formatUptime(d time.Duration) string {
	m := int64(d / time.Minute)
	days, hours, mins := m/(24*60), m/60%24, m%60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh %dm", days, hours, mins)
	case hours > 0:
		return fmt.Sprintf("%dh %dm", hours, mins)
	default:
		return fmt.Sprintf("%dm", mins)
	}
}

func formatTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format(time.DateTime)
}

// displayWidth counts the terminal columns of s: East Asian wide characters
// take two.
func displayWidth(s string) int {
	n := 0
	for _, r := range s {
		n++
		if isWide(r) {
			n++
		}
	}
	return n
}

func isWide(r rune) bool {
	return r >= 0x1100 && r <= 0x115F || // Hangul Jamo
		r >= 0x2E80 && r <= 0xA4CF || // CJK radicals .. Yi
		r >= 0xAC00 && r <= 0xD7A3 || // Hangul syllables
		r >= 0xF900 && r <= 0xFAFF || // CJK compatibility ideographs
		r >= 0xFE30 && r <= 0xFE4F || // CJK compatibility forms
		r >= 0xFF00 && r <= 0xFF60 || // fullwidth forms
		r >= 0xFFE0 && r <= 0xFFE6 ||
		r >= 0x20000 && r <= 0x3FFFD // CJK extensions
}
