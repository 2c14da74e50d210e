package aggtrade

import (
	"encoding/json"
	"strconv"
	"testing"
)

// go test -run '^$' -bench . -benchmem ./internal/aggtrade/

// BenchmarkParseFrame parses the first recorded frame in raw mode, as the
// /market/ws route delivers it: the per-frame cost on the live path.
func BenchmarkParseFrame(b *testing.B) {
	_, raws := fixtureFrames(b)
	frame := raws[0]
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseFrame(frame, "BTCUSDT"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseFrameEnvelope parses the same frame inside the combined
// stream envelope.
func BenchmarkParseFrameEnvelope(b *testing.B) {
	envs, _ := fixtureFrames(b)
	frame := envs[0]
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseFrame(frame, "BTCUSDT"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshalStruct is the usual alternative, for context:
// encoding/json into a struct with the three stored fields and the symbol,
// then the price string converted. It has no event type field: encoding/json
// matches keys case-insensitively, so "E" (a number) would land in a field
// tagged "e" and fail. Nor does it do ParseFrame's checks (positive values,
// decimal price).
func BenchmarkUnmarshalStruct(b *testing.B) {
	_, raws := fixtureFrames(b)
	frame := raws[0]
	var v struct {
		Symbol string `json:"s"`
		ID     int64  `json:"a"`
		Time   int64  `json:"T"`
		Price  string `json:"p"`
	}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if err := json.Unmarshal(frame, &v); err != nil {
			b.Fatal(err)
		}
		if _, err := strconv.ParseFloat(v.Price, 64); err != nil {
			b.Fatal(err)
		}
	}
}
