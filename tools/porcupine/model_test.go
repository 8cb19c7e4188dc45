package main

import (
	"math"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"
)

func grant(call, ret int64, window string, token, expMs int64) porcupine.Operation {
	return grantEnding(call, ret, window, token, expMs, 500) // windows closed long before their grants
}

func grantEnding(call, ret int64, window string, token, expMs, endMs int64) porcupine.Operation {
	return porcupine.Operation{Call: call, Return: ret,
		Input:  input{Key: window, Kind: "grant", Token: token, TTLMs: 3000, EndMs: endMs},
		Output: output{Outcome: outcomeOK, ExpMs: expMs}}
}

func leaseOp(call, ret int64, window, kind string, token int64, outcome string, atMs int64) porcupine.Operation {
	if outcome == outcomeUnknown {
		ret = math.MaxInt64
	}
	return porcupine.Operation{Call: call, Return: ret,
		Input:  input{Key: window, Kind: kind, Token: token, TTLMs: 3000},
		Output: output{Outcome: outcome, AtMs: atMs, State: "pending"}}
}

func read(call, ret int64, window string, token int64) porcupine.Operation {
	return porcupine.Operation{Call: call, Return: ret,
		Input: input{Key: window, Kind: "read", Token: token}, Output: output{Outcome: outcomeOK}}
}

func job(call, ret int64, kind, outcome string) porcupine.Operation {
	return porcupine.Operation{Call: call, Return: ret,
		Input: input{Key: jobKeyPrefix + "job-1", Kind: kind}, Output: output{Outcome: outcome}}
}

func TestModel(t *testing.T) {
	cases := []struct {
		name  string
		ops   []porcupine.Operation
		legal bool
	}{
		{"grant, renew, complete", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), leaseOp(2, 3, "w", "renew", 1, outcomeOK, 1500),
			leaseOp(4, 5, "w", "complete", 1, outcomeOK, 1600)}, true},
		{"regrant after expiry", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), grant(2, 3, "w", 2, 7000)}, true},
		{"regrant before expiry", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), grant(2, 3, "w", 2, 5000)}, false},
		{"concurrent grants may be ordered either way", []porcupine.Operation{
			grant(0, 10, "w", 2, 8000), grant(1, 11, "w", 1, 4000)}, true},
		{"maybe-applied fail explains an early regrant", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), leaseOp(2, 0, "w", "fail", 1, outcomeUnknown, 0), grant(3, 4, "w", 2, 5000)}, true},
		{"stale complete accepted", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), grant(2, 3, "w", 2, 7000), leaseOp(4, 5, "w", "complete", 1, outcomeOK, 4100)}, false},
		{"lost before expiry", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), leaseOp(2, 3, "w", "renew", 1, outcomeLost, 2000)}, false},
		{"done window granted again", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), leaseOp(2, 3, "w", "complete", 1, outcomeOK, 1100), grant(4, 5, "w", 2, 9000)}, false},
		{"window completed before it closed is re-opened", []porcupine.Operation{
			grantEnding(0, 1, "w", 1, 4000, 60000), leaseOp(2, 3, "w", "complete", 1, outcomeOK, 1100),
			grantEnding(4, 5, "w", 2, 70000, 60000), leaseOp(6, 7, "w", "complete", 2, outcomeOK, 67100)}, true},
		{"lost after expiry", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), leaseOp(2, 3, "w", "renew", 1, outcomeLost, 4000)}, true},
		{"listing shows the live lease", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), read(2, 3, "w", 1)}, true},
		{"listing concurrent with the completion may show the lease", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), leaseOp(2, 5, "w", "complete", 1, outcomeOK, 1100), read(3, 6, "w", 1)}, true},
		{"stale listing after an acknowledged completion", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), leaseOp(2, 3, "w", "complete", 1, outcomeOK, 1100), read(4, 5, "w", 1)}, false},
		{"stale listing after a newer grant", []porcupine.Operation{
			grant(0, 1, "w", 1, 4000), grant(2, 3, "w", 2, 7000), read(4, 5, "w", 1)}, false},
		{"job read after its submit", []porcupine.Operation{
			job(0, 1, "submit", outcomeOK), job(2, 3, "read_job", outcomeOK)}, true},
		{"job read concurrent with its submit may miss it", []porcupine.Operation{
			job(0, 3, "submit", outcomeOK), job(1, 2, "read_job", outcomeNotFound)}, true},
		{"job read 404 after an acknowledged submit", []porcupine.Operation{
			job(0, 1, "submit", outcomeOK), job(2, 3, "read_job", outcomeNotFound)}, false},
		{"job read 404 after another read found it", []porcupine.Operation{
			job(0, 1, "read_job", outcomeOK), job(2, 3, "read_job", outcomeNotFound)}, false},
	}
	model := leaseModel()
	for _, c := range cases {
		if got := porcupine.CheckOperations(model, c.ops); got != c.legal {
			t.Errorf("%s: linearizable=%v, want %v", c.name, got, c.legal)
		}
	}
}

func TestTokensMustGrow(t *testing.T) {
	model := leaseModel()
	claims := func(first, second int64) []porcupine.Operation {
		return []porcupine.Operation{
			{Call: 0, Return: 1, Input: input{Key: tokensKey, Kind: "tokens"}, Output: output{Outcome: outcomeOK, Tokens: []int64{first}}},
			{Call: 2, Return: 3, Input: input{Key: tokensKey, Kind: "tokens"}, Output: output{Outcome: outcomeOK, Tokens: []int64{second}}},
		}
	}
	if !porcupine.CheckOperations(model, claims(1, 2)) || porcupine.CheckOperations(model, claims(2, 1)) {
		t.Error("tokens of sequential claims must strictly increase")
	}
}

func TestReadHistoryMapsTokensToWindows(t *testing.T) {
	text := `{"type":"op","id":1,"client":"a","kind":"claim","call_ns":1,"return_ns":2,"at_ms":1,"status":200,` +
		`"request":{},"response":{"leases":[{"window_id":"w_x","token":5,"expires_at_ms":4000}]}}
{"type":"op","id":2,"client":"a","kind":"release","call_ns":3,"return_ns":null,"at_ms":null,"status":null,` +
		`"request":{"lease_id":"lease-5"},"response":null}
`
	h, err := readHistory(strings.NewReader(text), 3000)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.ops) != 3 {
		t.Fatalf("want grant + tokens + release, got %d ops", len(h.ops))
	}
	release := h.ops[2]
	if in := release.Input.(input); in.Key != "w_x" || in.Token != 5 || release.Return != math.MaxInt64 {
		t.Errorf("release mapped to %+v, return %d", in, release.Return)
	}
}
