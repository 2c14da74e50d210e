// Command fakebinance runs the fake Binance USD-M futures exchange on its own, publishing trades at a steady rate.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"binance-symbol-tick-store/internal/fakebinance"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fakebinance:", err)
		os.Exit(1)
	}
}

// run serves the fake on -addr until ctx ends or SIGINT/SIGTERM arrives.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fakebinance", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", "127.0.0.1:9443", "listen address")
	symbols := fs.String("symbols", "BTCUSDT,ETHUSDT", "comma-separated symbols to list and trade")
	rate := fs.Float64("rate", 5, "trades per second per symbol")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return fmt.Errorf("parse flags: %w", err)
	}
	var syms []string
	for s := range strings.SplitSeq(*symbols, ",") {
		if s = strings.TrimSpace(s); s != "" {
			syms = append(syms, s)
		}
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(stdout, nil))

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	x := fakebinance.New(fakebinance.Options{})
	defer x.Close()
	x.List(syms...)
	srv := &http.Server{Handler: x, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	host := ln.Addr().String()
	logger.Info("fake binance listening", "ws_url", "ws://"+host+"/market/ws", "rest_url", "http://"+host,
		"symbols", strings.Join(syms, ","), "rate", *rate)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan struct{})
	go func() {
		x.Run(runCtx, *rate, syms...)
		close(ran)
	}()
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	cancel()
	<-ran

	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if shutErr := srv.Shutdown(shutdownCtx); shutErr != nil && err == nil {
		err = shutErr
	}
	x.Close() // WebSocket connections are hijacked: Shutdown leaves them to us
	logger.Info("fake binance stopped")
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
