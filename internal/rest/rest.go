// Package rest is the store's client of Binance's REST API: the aggTrades
// endpoint, within a shared weight budget, obeying 429 and 418.
package rest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"binance-symbol-tick-store/internal/aggtrade"
	"binance-symbol-tick-store/internal/database"
)

// Binance's terms for GET /fapi/v1/aggTrades.
const (
	CallWeight = 20   // weight of every call, errors included
	MaxLimit   = 1000 // most rows one call returns
	minBan     = 2 * time.Minute
)

var (
	// ErrUnknownSymbol is Binance's -1121: the symbol is not listed.
	ErrUnknownSymbol = errors.New("symbol not listed on Binance USD-M futures (-1121)")
	// ErrTooOld is Binance's -4166: fromId lies beyond the ~48 h REST window.
	ErrTooOld = errors.New("ids older than Binance's REST window (-4166)")
)

// Budget is the process-wide REST weight limiter (a *limit.Weight).
type Budget interface {
	Take(ctx context.Context, cost int) error
	Observe(used int)
	Block(until time.Time)
}

// Client calls Binance REST. Safe for concurrent use.
type Client struct {
	base   string
	hc     *http.Client
	budget Budget
	log    *slog.Logger
	now    func() time.Time
}

// New returns a client of the API at base (e.g. https://fapi.binance.com).
func New(base string, budget Budget, logger *slog.Logger) *Client {
	return &Client{
		base:   base,
		hc:     &http.Client{Timeout: 30 * time.Second},
		budget: budget,
		log:    logger,
		now:    time.Now,
	}
}

// AggTrades returns up to limit trades of sym with id >= fromID, oldest
// first. Rate-limit answers are waited out inside; ErrUnknownSymbol and
// ErrTooOld are returned as such, other failures wrapped.
func (c *Client) AggTrades(ctx context.Context, sym string, fromID int64, limit int) ([]database.Tick, error) {
	q := url.Values{"symbol": {sym}, "fromId": {strconv.FormatInt(fromID, 10)}, "limit": {strconv.Itoa(limit)}}
	return c.get(ctx, q)
}

// Latest returns the most recent trade of sym; ok is false if it has none.
func (c *Client) Latest(ctx context.Context, sym string) (t database.Tick, ok bool, err error) {
	rows, err := c.get(ctx, url.Values{"symbol": {sym}, "limit": {"1"}})
	if err != nil || len(rows) == 0 {
		return database.Tick{}, false, err
	}
	return rows[len(rows)-1], true, nil
}

func (c *Client) get(ctx context.Context, q url.Values) ([]database.Tick, error) {
	u := c.base + "/fapi/v1/aggTrades?" + q.Encode()
	for {
		if err := c.budget.Take(ctx, CallWeight); err != nil {
			return nil, err
		}
		status, header, body, err := c.do(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("aggTrades %s: %w", q.Get("symbol"), err)
		}
		if used, err := strconv.Atoi(header.Get("X-MBX-USED-WEIGHT-1M")); err == nil {
			c.budget.Observe(used)
		}
		switch status {
		case http.StatusOK:
			rows, err := aggtrade.ParseRows(body)
			if err != nil {
				return nil, fmt.Errorf("aggTrades %s: %w", q.Get("symbol"), err)
			}
			return rows, nil
		case http.StatusTooManyRequests, http.StatusTeapot:
			until := c.blockedUntil(status, header, body)
			c.budget.Block(until)
			c.log.Warn("binance rest rate limit, pausing rest calls", "http_status", status,
				"until", until.UTC().Format(time.DateTime), "body", aggtrade.Clip(body))
			continue // Take waits for the block to end
		}
		code, msg := apiError(body)
		switch code {
		case -1121:
			return nil, ErrUnknownSymbol
		case -4166:
			return nil, ErrTooOld
		}
		return nil, fmt.Errorf("aggTrades %s: HTTP %d, code %d: %s", q.Get("symbol"), status, code, msg)
	}
}

func (c *Client) do(ctx context.Context, u string) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, resp.Header, body, err
}

var bannedUntil = regexp.MustCompile(`banned until (\d+)`)

// blockedUntil works out when REST may be called again: Retry-After if
// given, the ban end a 418 names, the next minute for a bare 429. A ban
// lasts at least two minutes.
func (c *Client) blockedUntil(status int, header http.Header, body []byte) time.Time {
	now := c.now()
	until := now.Truncate(time.Minute).Add(time.Minute + time.Second)
	if s, err := strconv.Atoi(strings.TrimSpace(header.Get("Retry-After"))); err == nil && s > 0 {
		until = now.Add(time.Duration(s) * time.Second)
	}
	if status == http.StatusTeapot {
		if m := bannedUntil.FindSubmatch(body); m != nil {
			if ms, err := strconv.ParseInt(string(m[1]), 10, 64); err == nil {
				until = later(until, time.UnixMilli(ms))
			}
		}
		until = later(until, now.Add(minBan))
	}
	return until
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// apiError reads Binance's {"code":-1121,"msg":"..."} error body.
func apiError(body []byte) (int, string) {
	var e struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return 0, aggtrade.Clip(body)
	}
	return e.Code, e.Msg
}
