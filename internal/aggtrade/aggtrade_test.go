package aggtrade

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"binance-symbol-tick-store/internal/database"
)

// fixtureFrames returns the recorded combined-stream frames and, for each,
// its bare data object as the raw /market/ws route sends it.
func fixtureFrames(t testing.TB) (envelopes, raws [][]byte) {
	t.Helper()
	f, err := os.Open("testdata/ws_aggtrade_envelope.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := append([]byte(nil), sc.Bytes()...)
		var env struct{ Data json.RawMessage }
		if err := json.Unmarshal(line, &env); err != nil {
			t.Fatal(err)
		}
		envelopes = append(envelopes, line)
		raws = append(raws, env.Data)
	}
	if len(envelopes) == 0 {
		t.Fatal("no fixture frames")
	}
	return envelopes, raws
}

func TestParseFrameFixtures(t *testing.T) {
	envelopes, raws := fixtureFrames(t)
	for i := range envelopes {
		want := decodeStd(t, raws[i])
		for _, frame := range [][]byte{raws[i], envelopes[i]} {
			got, err := ParseFrame(frame, "")
			if err != nil || got != want {
				t.Errorf("ParseFrame(%s) = %+v, %v; want %+v", frame, got, err, want)
			}
		}
	}
}

// decodeStd is the reference decoder: encoding/json into a map, which keeps
// keys exact (a struct would let "E" fill a field tagged "e").
func decodeStd(t testing.TB, frame []byte) database.Tick {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(frame, &m); err != nil {
		t.Fatalf("reference decode of %q: %v", frame, err)
	}
	if _, ok := m["e"]; !ok && m["data"] != nil {
		return decodeStd(t, m["data"])
	}
	var tick database.Tick
	var price string
	for key, dst := range map[string]any{"a": &tick.ID, "T": &tick.Timestamp, "p": &price} {
		if err := json.Unmarshal(m[key], dst); err != nil {
			t.Fatalf("reference decode of %q, field %s: %v", frame, key, err)
		}
	}
	var err error
	if tick.Price, err = strconv.ParseFloat(price, 64); err != nil {
		t.Fatalf("reference decode of %q: %v", frame, err)
	}
	return tick
}

func TestParseFrame(t *testing.T) {
	ok := database.Tick{ID: 3477868433, Timestamp: 1791382992338, Price: 83091.7}
	tests := []struct {
		name    string
		frame   string
		want    database.Tick
		wantErr string // substring; "" means success
		sym     string // the stream's symbol; "" skips the check
	}{
		{"own symbol", `{"e":"aggTrade","a":1,"s":"BTCUSDT","T":2,"p":"5"}`, database.Tick{ID: 1, Timestamp: 2, Price: 5}, "", "BTCUSDT"},
		{"own unicode symbol, escaped", `{"e":"aggTrade","a":1,"s":"\u5e01USDT","T":2,"p":"5"}`, database.Tick{ID: 1, Timestamp: 2, Price: 5}, "", "币USDT"},
		{"no symbol field", `{"e":"aggTrade","a":1,"T":2,"p":"5"}`, database.Tick{ID: 1, Timestamp: 2, Price: 5}, "", "BTCUSDT"},
		{"another symbol", `{"e":"aggTrade","a":1,"s":"ETHUSDT","T":2,"p":"5"}`, database.Tick{}, "frame for symbol", "BTCUSDT"},
		{"symbol not a string", `{"e":"aggTrade","a":1,"s":7,"T":2,"p":"5"}`, database.Tick{}, "frame for symbol", "BTCUSDT"},
		{"today's raw frame", `{"e":"aggTrade","E":1791382992488,"a":3477868433,"s":"BTCUSDT","p":"83091.70","q":"0.022","nq":"0.022","f":8153634393,"l":8153634394,"T":1791382992338,"m":false,"st":1}`, ok, "", ""},
		{"unknown fields and nested values", `{"e":"aggTrade","x":{"a":1,"p":"[}"},"y":[1,{"T":2}],"a":3477868433,"T":1791382992338,"p":"83091.70","z":null}`, ok, "", ""},
		{"white space", " {\n \"e\" : \"aggTrade\" ,\t\"a\":3477868433 , \"T\" : 1791382992338, \"p\":\"83091.70\" }\n", ok, "", ""},
		{"integer price", `{"e":"aggTrade","a":1,"T":2,"p":"5"}`, database.Tick{ID: 1, Timestamp: 2, Price: 5}, "", ""},
		{"future key A does not shadow a", `{"e":"aggTrade","A":99,"a":1,"T":2,"P":"x","p":"5"}`, database.Tick{ID: 1, Timestamp: 2, Price: 5}, "", ""},
		{"subscription reply", `{"result":null,"id":1}`, database.Tick{}, "not an event frame", ""},
		{"other event", `{"e":"markPriceUpdate","a":1,"T":2,"p":"5"}`, database.Tick{}, "not aggTrade", ""},
		{"event in wrong case", `{"e":"AGGTRADE","a":1,"T":2,"p":"5"}`, database.Tick{}, "not aggTrade", ""},
		{"malformed JSON", `{"e":"aggTrade","a":1,`, database.Tick{}, "malformed JSON", ""},
		{"empty", ``, database.Tick{}, "malformed JSON", ""},
		{"array", `[1,2]`, database.Tick{}, "not a JSON object", ""},
		{"string", `"aggTrade"`, database.Tick{}, "not a JSON object", ""},
		{"missing a", `{"e":"aggTrade","T":2,"p":"5"}`, database.Tick{}, "missing field a", ""},
		{"missing T", `{"e":"aggTrade","a":1,"p":"5"}`, database.Tick{}, "missing field T", ""},
		{"missing p", `{"e":"aggTrade","a":1,"T":2}`, database.Tick{}, "missing field p", ""},
		{"a as string", `{"e":"aggTrade","a":"1","T":2,"p":"5"}`, database.Tick{}, "field a", ""},
		{"a negative", `{"e":"aggTrade","a":-1,"T":2,"p":"5"}`, database.Tick{}, "field a", ""},
		{"a zero", `{"e":"aggTrade","a":0,"T":2,"p":"5"}`, database.Tick{}, "field a", ""},
		{"a fractional", `{"e":"aggTrade","a":1.5,"T":2,"p":"5"}`, database.Tick{}, "field a", ""},
		{"a exponent", `{"e":"aggTrade","a":1e3,"T":2,"p":"5"}`, database.Tick{}, "field a", ""},
		{"a overflows int64", `{"e":"aggTrade","a":99999999999999999999,"T":2,"p":"5"}`, database.Tick{}, "field a", ""},
		{"T null", `{"e":"aggTrade","a":1,"T":null,"p":"5"}`, database.Tick{}, "field T", ""},
		{"price number", `{"e":"aggTrade","a":1,"T":2,"p":5}`, database.Tick{}, "field p", ""},
		{"price zero", `{"e":"aggTrade","a":1,"T":2,"p":"0.000"}`, database.Tick{}, "field p", ""},
		{"price negative", `{"e":"aggTrade","a":1,"T":2,"p":"-5"}`, database.Tick{}, "field p", ""},
		{"price NaN", `{"e":"aggTrade","a":1,"T":2,"p":"NaN"}`, database.Tick{}, "field p", ""},
		{"price Inf", `{"e":"aggTrade","a":1,"T":2,"p":"Inf"}`, database.Tick{}, "field p", ""},
		{"price hex", `{"e":"aggTrade","a":1,"T":2,"p":"0x1p3"}`, database.Tick{}, "field p", ""},
		{"price exponent", `{"e":"aggTrade","a":1,"T":2,"p":"1e5"}`, database.Tick{}, "field p", ""},
		{"price two dots", `{"e":"aggTrade","a":1,"T":2,"p":"1.2.3"}`, database.Tick{}, "field p", ""},
		{"price only dot", `{"e":"aggTrade","a":1,"T":2,"p":"."}`, database.Tick{}, "field p", ""},
		{"price empty", `{"e":"aggTrade","a":1,"T":2,"p":""}`, database.Tick{}, "field p", ""},
		{"price escaped", `{"e":"aggTrade","a":1,"T":2,"p":"\u0035"}`, database.Tick{}, "field p", ""},
		{"price out of range", `{"e":"aggTrade","a":1,"T":2,"p":"` + strings.Repeat("9", 400) + `"}`, database.Tick{}, "field p", ""},
		{"envelope twice is not unwrapped", `{"data":{"data":{"e":"aggTrade","a":1,"T":2,"p":"5"}}}`, database.Tick{}, "not an event frame", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFrame([]byte(tt.frame), tt.sym)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Errorf("ParseFrame(%q) = %+v, %v; want %+v, nil", tt.frame, got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseFrame(%q) error = %v, want one containing %q", tt.frame, err, tt.wantErr)
			}
		})
	}
}

func TestParseFrameDeepNesting(t *testing.T) {
	deep := `{"e":"aggTrade","a":1,"T":2,"p":"5","x":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`
	if got, err := ParseFrame([]byte(deep), ""); err != nil || got.ID != 1 {
		t.Errorf("ParseFrame(5000-deep) = %+v, %v", got, err)
	}
	tooDeep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	if _, err := ParseFrame([]byte(tooDeep), ""); err == nil {
		t.Error("ParseFrame(20000-deep) succeeded, want an error")
	}
}

// FuzzParseFrame checks that the parser never panics, accepts only valid
// JSON with in-range fields, and agrees with encoding/json on what it accepts.
func FuzzParseFrame(f *testing.F) {
	envelopes, raws := fixtureFrames(f)
	for i := range envelopes {
		f.Add(envelopes[i])
		f.Add(raws[i])
	}
	f.Add([]byte(`{"result":null,"id":1}`))
	f.Add([]byte(`{"e":"aggTrade","a":1,"T":2,"p":"1e5"}`))
	f.Add([]byte(`{"e":"aggTrade","A":1,"a":1,"T":2,"p":"5","p":"6"}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		got, err := ParseFrame(frame, "")
		if err != nil {
			if got != (database.Tick{}) {
				t.Errorf("ParseFrame(%q) = %+v with error %v, want the zero Tick", frame, got, err)
			}
			return
		}
		if !json.Valid(frame) {
			t.Fatalf("parseFrame accepted invalid JSON %q", frame)
		}
		if got.ID <= 0 || got.Timestamp <= 0 || !(got.Price > 0) || math.IsInf(got.Price, 0) {
			t.Fatalf("ParseFrame(%q) = %+v: out of range", frame, got)
		}
		if want := decodeStd(t, frame); got != want {
			t.Fatalf("ParseFrame(%q) = %+v, encoding/json says %+v", frame, got, want)
		}
	})
}

func TestParseRows(t *testing.T) {
	fixture, err := os.ReadFile("testdata/rest_aggtrades.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseRows(fixture)
	want := []database.Tick{{ID: 3477868380, Timestamp: 1791382990569, Price: 83084.3},
		{ID: 3477868381, Timestamp: 1791382990794, Price: 83084.4}, {ID: 3477868382, Timestamp: 1791382990860, Price: 83084.3}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseRows(fixture) = %+v, %v\nwant %+v", got, err, want)
	}
	for _, tt := range []struct{ in, wantErr string }{
		{`[]`, ""},
		{` [ ] `, ""},
		{`{"code":-1121,"msg":"Invalid symbol."}`, "not a JSON array"},
		{`[{"a":1,"T":2,"p":"3"},{"a":2,"T":2}]`, "row 1: missing field p"},
		{`[{"a":1,"T":2,"p":"3"},7]`, "row 1: not a JSON object"},
		{`[{"a":1,"T":2,"p":"3"}`, "malformed JSON"},
	} {
		_, err := ParseRows([]byte(tt.in))
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ParseRows(%q) error = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

func FuzzParseRows(f *testing.F) {
	fixture, err := os.ReadFile("testdata/rest_aggtrades.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(fixture)
	f.Add([]byte(`[{"a":1,"T":2,"p":"3"},{}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rows, err := ParseRows(b)
		if err != nil {
			return
		}
		var std []map[string]json.RawMessage
		if err := json.Unmarshal(b, &std); err != nil || len(std) != len(rows) {
			t.Fatalf("ParseRows(%q) accepted %d rows; encoding/json: %d rows, %v", b, len(rows), len(std), err)
		}
		for i, row := range std {
			delete(row, "data") // rows have no envelope; keep the reference from unwrapping one
			obj, _ := json.Marshal(row)
			if want := decodeStd(t, obj); rows[i] != want {
				t.Fatalf("ParseRows(%q)[%d] = %+v, encoding/json says %+v", b, i, rows[i], want)
			}
		}
	})
}
