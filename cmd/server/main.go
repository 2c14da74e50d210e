// Command server records the aggTrade ticks of the symbols enabled in
// symbol_settings into SQLite and serves a status page.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"binance-symbol-tick-store/internal/config"
	"binance-symbol-tick-store/internal/database"
	tickhttp "binance-symbol-tick-store/internal/http"
	"binance-symbol-tick-store/internal/limit"
	"binance-symbol-tick-store/internal/metrics"
	"binance-symbol-tick-store/internal/rest"
	"binance-symbol-tick-store/internal/settings"
	"binance-symbol-tick-store/internal/websocket"
)

// shutdownTimeout bounds the HTTP server's graceful stop; streams and the
// database close after it, well inside Docker's 10 s stop grace period.
const shutdownTimeout = 3 * time.Second

func main() {
	if err := run(context.Background(), os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tick store:", err)
		os.Exit(1)
	}
}

// run starts the store and blocks until ctx is cancelled or the process gets
// SIGINT or SIGTERM, then stops the streams, the HTTP server and the
// database, in that order. It returns an error when start-up fails or the
// HTTP server dies.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	started := time.Now()
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stdout, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	db, err := database.Open(ctx, cfg.DBPath)
	if err != nil {
		return fmt.Errorf("DB_PATH=%q: %w", cfg.DBPath, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.HTTPPort)))
	if err != nil {
		db.Close()
		return fmt.Errorf("HTTP_PORT=%d: %w", cfg.HTTPPort, err)
	}

	// Process-wide limits, shared by every symbol. Binance counts connection
	// attempts per IP (300 per 5 minutes) and REST weight per IP and UTC
	// minute; the windows are a little wider than Binance's so that network
	// jitter cannot push two attempts into one of its windows.
	attempts := limit.NewWindow(limit.Real(),
		limit.Rule{N: 300, Per: 5*time.Minute + 2*time.Second},
		limit.Rule{N: 10, Per: time.Second + 100*time.Millisecond})
	weight := limit.NewWeight(limit.Real(), cfg.RESTWeight)
	restClient := rest.New(cfg.RESTURL, weight, logger)
	var watcher *settings.Watcher
	m := metrics.New(metrics.Sources{
		Streams: func() map[string]websocket.Stats {
			out := make(map[string]websocket.Stats)
			for sym, s := range watcher.Streams() {
				out[sym] = s.(*websocket.Client).Stats()
			}
			return out
		},
		RESTWeight: weight.Used,
		DBPath:     cfg.DBPath,
	})
	watcher = settings.New(db, func(sym string) settings.Stream {
		return websocket.New(websocket.Config{
			Symbol:         sym,
			BaseURL:        cfg.WSURL,
			StaleTimeout:   cfg.StaleTimeout,
			MaxAge:         cfg.MaxAge,
			SilenceTimeout: cfg.SilenceTimeout,
			Store:          db,
			REST:           restClient,
			Attempts:       countedWaiter{attempts, m.Attempts},
			WriteLatency:   m.WriteLatency,
			Logger:         logger,
		})
	}, cfg.PollInterval, logger)
	srv := tickhttp.NewServer(tickhttp.NewHandler(db, watcher, started, time.Now, logger, m.Handler()), logger)

	logger.Info("tick store started", "db_path", cfg.DBPath, "http_addr", ln.Addr().String(),
		"ws_url", cfg.WSURL, "rest_url", cfg.RESTURL, "poll_interval", cfg.PollInterval)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		watcher.Run(ctx)
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
		stop()
	}
	logger.Info("tick store stopping")
	<-watcherDone // streams closed, no write in flight
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("http shutdown", "error", err)
	}
	if err := db.Close(); err != nil {
		logger.Error("close database", "error", err)
	}
	logger.Info("tick store stopped", "uptime", time.Since(started).Round(time.Second))
	return runErr
}

// countedWaiter counts the connection attempts a limiter admits.
type countedWaiter struct {
	w interface{ Wait(context.Context) error }
	n interface{ Inc() }
}

func (c countedWaiter) Wait(ctx context.Context) error {
	if err := c.w.Wait(ctx); err != nil {
		return err
	}
	c.n.Inc()
	return nil
}
