package websocket

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"binance-symbol-tick-store/internal/database"
)

// errNotTrade marks frames that are not trades and not errors either, such as
// the {"result":null,"id":1} reply to a subscription request. They are skipped
// without a warning.
var errNotTrade = errors.New("not an event frame")

// parseFrame extracts the stored fields of one aggTrade frame: a (id), T
// (trade time, ms) and p (price). It accepts the raw frame and the combined
// stream envelope {"stream":..,"data":{..}}, ignores every other field, and
// rejects a frame whose fields are missing or out of range. Keys match
// exactly: encoding/json would also let "E" (event time) fill a field tagged
// "e", and Binance keeps adding fields.
func parseFrame(b []byte) (database.Tick, error) {
	if !json.Valid(b) {
		return database.Tick{}, errors.New("malformed JSON")
	}
	return parseObject(b, true)
}

// parseObject parses one valid JSON object; unwrap allows one level of
// envelope, no more.
func parseObject(b []byte, unwrap bool) (database.Tick, error) {
	var (
		t                      database.Tick
		event, id, time, price []byte
		data                   []byte
	)
	err := eachMember(b, func(key, val []byte) {
		switch string(key) {
		case "e":
			event = val
		case "a":
			id = val
		case "T":
			time = val
		case "p":
			price = val
		case "data":
			data = val
		}
	})
	if err != nil {
		return t, err
	}
	if event == nil && unwrap && data != nil && data[0] == '{' {
		return parseObject(data, false)
	}
	if event == nil {
		return t, errNotTrade
	}
	if string(event) != `"aggTrade"` {
		return database.Tick{}, fmt.Errorf("event type %s is not aggTrade", clip(event))
	}
	var errs [3]error
	t.ID, errs[0] = positiveInt("a", id)
	t.Timestamp, errs[1] = positiveInt("T", time)
	t.Price, errs[2] = positivePrice(price)
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
		return 0, fmt.Errorf("field %s: want a positive integer, got %s", field, clip(v))
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
		return 0, fmt.Errorf("field p: want a positive decimal string, got %s", clip(v))
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

// clip renders a fragment of a frame for a log line: quoted and short.
func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "..."
	}
	return strconv.Quote(string(b))
}
