// Package aggtrade reads Binance's aggregate trade wire format: stream
// frames and REST rows, reduced to the fields the store keeps.
package aggtrade

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"binance-symbol-tick-store/internal/database"
)

// ErrNotTrade marks frames that are not trades and not errors either, such as
// the {"result":null,"id":1} reply to a subscription request. They are skipped
// without a warning.
var ErrNotTrade = errors.New("not an event frame")

// ParseFrame extracts the stored fields of one aggTrade frame: a (id), T
// (trade time, ms) and p (price). It accepts the raw frame and the combined
// stream envelope {"stream":..,"data":{..}}, ignores every other field, and
// rejects a frame whose fields are missing or out of range. Keys match
// exactly: encoding/json would also let "E" (event time) fill a field tagged
// "e", and Binance keeps adding fields.
//
// When sym is not empty, a frame whose "s" names another symbol is refused:
// a misrouted trade would land in the wrong table under a foreign id.
func ParseFrame(b []byte, sym string) (database.Tick, error) {
	if !json.Valid(b) {
		return database.Tick{}, errors.New("malformed JSON")
	}
	return parseObject(b, sym, true)
}

// parseObject parses one valid JSON object; unwrap allows one level of
// envelope, no more.
func parseObject(b []byte, sym string, unwrap bool) (database.Tick, error) {
	m, err := collect(b)
	if err != nil {
		return database.Tick{}, err
	}
	if m.event == nil && unwrap && m.data != nil && m.data[0] == '{' {
		return parseObject(m.data, sym, false)
	}
	if m.event == nil {
		return database.Tick{}, ErrNotTrade
	}
	if string(m.event) != `"aggTrade"` {
		return database.Tick{}, fmt.Errorf("event type %s is not aggTrade", Clip(m.event))
	}
	if sym != "" && m.symbol != nil && !isString(m.symbol, sym) {
		return database.Tick{}, fmt.Errorf("frame for symbol %s, not %s", Clip(m.symbol), sym)
	}
	return m.tick()
}

// isString reports whether the JSON value v is the string s. The common
// case, no escapes, costs no allocation.
func isString(v []byte, s string) bool {
	if len(v) >= 2 && v[0] == '"' && !bytes.ContainsRune(v, '\\') {
		return string(v[1:len(v)-1]) == s
	}
	var got string
	return json.Unmarshal(v, &got) == nil && got == s
}

// ParseRows parses a REST /fapi/v1/aggTrades answer: a JSON array of rows
// with the same a, T and p as a frame. Every row must be valid; rows are
// returned in the order given.
func ParseRows(b []byte) ([]database.Tick, error) {
	if !json.Valid(b) {
		return nil, errors.New("malformed JSON")
	}
	i := skipSpace(b, 0)
	if b[i] != '[' {
		return nil, errors.New("not a JSON array")
	}
	var out []database.Tick
	for i = skipSpace(b, i+1); b[i] != ']'; {
		end := skipValue(b, i)
		m, err := collect(b[i:end])
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", len(out), err)
		}
		t, err := m.tick()
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", len(out), err)
		}
		out = append(out, t)
		if i = skipSpace(b, end); b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return out, nil
}

// members holds the raw values of the keys the store reads; nil means absent.
type members struct{ event, symbol, id, time, price, data []byte }

// collect picks the members out of one valid JSON object. Keys match
// exactly; a repeated key keeps its last value, as in encoding/json.
func collect(b []byte) (members, error) {
	var m members
	err := eachMember(b, func(key, val []byte) {
		switch string(key) {
		case "e":
			m.event = val
		case "s":
			m.symbol = val
		case "a":
			m.id = val
		case "T":
			m.time = val
		case "p":
			m.price = val
		case "data":
			m.data = val
		}
	})
	return m, err
}

// tick checks and converts the three stored fields.
func (m members) tick() (database.Tick, error) {
	var t database.Tick
	var errs [3]error
	t.ID, errs[0] = positiveInt("a", m.id)
	t.Timestamp, errs[1] = positiveInt("T", m.time)
	t.Price, errs[2] = positivePrice(m.price)
	if err := errors.Join(errs[:]...); err != nil {
		return database.Tick{}, err
	}
	return t, nil
}

// positiveInt parses a JSON number that must be a plain positive integer.
func positiveInt(field string, v []byte) (int64, error) {
	if v == nil {
		return 0, fmt.Errorf("missing field %s", field)
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("field %s: want a positive integer, got %s", field, Clip(v))
	}
	return n, nil
}

// positivePrice parses the price, a JSON string of digits with at most one
// decimal point. ParseFloat alone would also take "NaN", "Inf" and hex.
func positivePrice(v []byte) (float64, error) {
	if v == nil {
		return 0, errors.New("missing field p")
	}
	bad := func() (float64, error) {
		return 0, fmt.Errorf("field p: want a positive decimal string, got %s", Clip(v))
	}
	if len(v) < 3 || v[0] != '"' {
		return bad()
	}
	s := v[1 : len(v)-1]
	dots, digits := 0, 0
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return bad()
		}
	}
	if digits == 0 || dots > 1 {
		return bad()
	}
	p, err := strconv.ParseFloat(string(s), 64)
	if err != nil || p <= 0 || math.IsInf(p, 0) {
		return bad()
	}
	return p, nil
}

// eachMember calls fn with the raw key (without quotes) and raw value of each
// member of the JSON object b, which must already be valid JSON.
func eachMember(b []byte, fn func(key, val []byte)) error {
	i := skipSpace(b, 0)
	if b[i] != '{' {
		return errors.New("not a JSON object")
	}
	i = skipSpace(b, i+1)
	for b[i] != '}' {
		end := skipString(b, i)
		key := b[i+1 : end-1]
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // ':'
		end = skipValue(b, i)
		fn(key, b[i:end])
		i = skipSpace(b, end)
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; b[i] != '"'; i++ {
		if b[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
	default:
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' &&
			b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
			i++
		}
		return i
	}
}

// Clip renders a fragment of a frame for a log line: quoted and short.
func Clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "..."
	}
	return strconv.Quote(string(b))
}
