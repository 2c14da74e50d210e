package fakebinance

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"
)

// RESTCall is one /fapi/v1/aggTrades request seen by the Exchange.
type RESTCall struct {
	At     time.Time // by Options.Now
	Query  string    // raw query string
	Status int       // HTTP status answered
}

// restFailure is what FailREST asked for: the next n calls answer status.
type restFailure struct {
	status     int
	retryAfter time.Duration
	n          int
}

const (
	weightPerCall = 20   // Binance's weight of aggTrades, errors included
	defaultLimit  = 500  // rows when limit is absent
	maxLimit      = 1000 // a larger limit is refused with -1130, not clamped
)

// FailREST makes the next n aggTrades calls answer status (meant for 429 or 418) with a -1003
// body, and a Retry-After header in whole seconds (rounded up) when retryAfter > 0.
// It replaces any failure still pending.
func (x *Exchange) FailREST(status int, retryAfter time.Duration, n int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.fail = restFailure{status: status, retryAfter: retryAfter, n: n}
}

// RESTCalls returns every aggTrades request seen so far, in order.
func (x *Exchange) RESTCalls() []RESTCall {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]RESTCall(nil), x.restCalls...)
}

// serveAggTrades answers GET /fapi/v1/aggTrades. Every answer, errors included, costs 20 weight
// and reports the weight used in the current UTC minute in X-MBX-USED-WEIGHT-1M.
func (x *Exchange) serveAggTrades(w http.ResponseWriter, r *http.Request) {
	now := x.opts.Now()
	x.mu.Lock()
	if minute := now.Unix() / 60; minute != x.weightMin {
		x.weightMin, x.weight = minute, 0
	}
	x.weight += weightPerCall
	weight := x.weight
	status, body, retryAfter := x.aggTrades(r.URL.Query(), now)
	x.restCalls = append(x.restCalls, RESTCall{At: now, Query: r.URL.RawQuery, Status: status})
	x.mu.Unlock()

	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-MBX-USED-WEIGHT-1M", strconv.Itoa(weight))
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(retryAfter.Seconds()))))
	}
	w.WriteHeader(status)
	w.Write(body)
}

// aggTrades computes the answer to one call. With fromId it returns trades with id >= fromId,
// oldest first (a hole is skipped), and -4166 when the first of them is older than Retention;
// without fromId it returns the latest limit trades, oldest first. Callers hold x.mu.
func (x *Exchange) aggTrades(q url.Values, now time.Time) (status int, body []byte, retryAfter time.Duration) {
	if f := &x.fail; f.n > 0 {
		f.n--
		msg := "Too many requests; current limit is 2400 request weight per 1 MINUTE. Please use the websocket for live updates to avoid polling the API."
		if f.status == http.StatusTeapot {
			until := now.Add(max(f.retryAfter, 2*time.Minute)).UnixMilli()
			msg = fmt.Sprintf("Way too many requests; IP banned until %d. Please use the websocket for live updates to avoid bans.", until)
		}
		return f.status, apiError(-1003, msg), f.retryAfter
	}
	symbol := q.Get("symbol")
	if symbol == "" {
		return http.StatusBadRequest, apiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."), 0
	}
	m := x.markets[upperASCII(symbol)]
	if m == nil {
		return http.StatusBadRequest, apiError(-1121, "Invalid symbol."), 0
	}
	limit := defaultLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return http.StatusBadRequest, apiError(-1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'."), 0
		}
		if n < 1 || n > maxLimit {
			return http.StatusBadRequest, apiError(-1130, "Data sent for parameter 'limit' is not valid."), 0
		}
		limit = n
	}

	rows := m.trades[max(0, len(m.trades)-limit):]
	if s := q.Get("fromId"); s != "" {
		from, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return http.StatusBadRequest, apiError(-1100, "Illegal characters found in parameter 'fromId'; legal range is '^[0-9]{1,20}$'."), 0
		}
		i := sort.Search(len(m.trades), func(i int) bool { return m.trades[i].ID >= from })
		rows = m.trades[i:min(len(m.trades), i+limit)]
		if len(rows) > 0 && rows[0].Time < now.Add(-x.opts.Retention).UnixMilli() {
			return http.StatusBadRequest, apiError(-4166, "Search window is restricted to recent 2 days only."), 0
		}
	}

	body = append(body, '[')
	for i, t := range rows {
		if i > 0 {
			body = append(body, ',')
		}
		body = appendRow(body, t)
	}
	return http.StatusOK, append(body, ']'), 0
}

// apiError is Binance's error body, {"code":...,"msg":...}.
func apiError(code int, msg string) []byte {
	b, _ := json.Marshal(struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}{code, msg})
	return b
}
