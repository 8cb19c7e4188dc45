// Command lease-check checks a recorded history of coordinator client operations for linearizability against
// the lease-table model (model.go), with porcupine (github.com/anishathalye/porcupine).
//
//	lease-check -history history.jsonl -ttl-ms 3000 -visualize out.html [-timeout 60s]
//
// It prints one JSON summary line and exits 0 when the history is linearizable, 1 on a violation (the HTML
// visualization of the violating partitions is written to -visualize), 2 on bad input, 3 when the check timed out.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/anishathalye/porcupine"
)

type summary struct {
	Result        string   `json:"result"`
	Lines         int      `json:"lines"`
	Operations    int      `json:"operations"`
	Partitions    int      `json:"partitions"`
	Illegal       []string `json:"illegal_partitions"`
	TimedOut      []string `json:"timed_out_partitions"`
	Visualization string   `json:"visualization,omitempty"`
	ElapsedMs     int64    `json:"elapsed_ms"`
}

func main() {
	os.Exit(run())
}

func run() int {
	historyPath := flag.String("history", "", "JSON-lines history (required)")
	visualize := flag.String("visualize", "", "write porcupine's HTML visualization here on a violation")
	always := flag.Bool("visualize-always", false, "write the visualization even when the history is linearizable")
	ttlMs := flag.Int64("ttl-ms", 0, "lease TTL of the cluster in ms (required)")
	timeout := flag.Duration("timeout", 60*time.Second, "give up (exit 3) after this long per partition")
	flag.Parse()
	if *historyPath == "" || *ttlMs <= 0 {
		fmt.Fprintln(os.Stderr, "lease-check: -history and -ttl-ms are required")
		flag.Usage()
		return 2
	}
	started := time.Now()
	file, err := os.Open(*historyPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lease-check: %v\n", err)
		return 2
	}
	h, err := readHistory(file, *ttlMs)
	file.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "lease-check: %s: %v\n", *historyPath, err)
		return 2
	}
	model := leaseModel()
	single := model
	single.Partition = nil // each partition is checked on its own, to name the violating ones
	parts := partition(h.ops)
	out := summary{Result: string(porcupine.Ok), Lines: h.lines, Operations: len(h.ops), Partitions: len(parts),
		Illegal: []string{}, TimedOut: []string{}}
	var bad []porcupine.Operation
	for _, part := range parts {
		key := part[0].Input.(input).Key
		switch porcupine.CheckOperationsTimeout(single, part, *timeout) {
		case porcupine.Illegal:
			out.Illegal = append(out.Illegal, key)
			bad = append(bad, part...)
		case porcupine.Unknown:
			out.TimedOut = append(out.TimedOut, key)
		}
	}
	code := 0
	switch {
	case len(out.Illegal) > 0:
		out.Result, code = string(porcupine.Illegal), 1
	case len(out.TimedOut) > 0:
		out.Result, code = string(porcupine.Unknown), 3
	}
	if *visualize != "" && (code == 1 || *always) {
		shown := bad
		if code != 1 {
			shown = h.ops
		}
		_, info := porcupine.CheckOperationsVerbose(model, shown, *timeout)
		info.AddAnnotations(h.annotations)
		if err := porcupine.VisualizePath(model, info, *visualize); err != nil {
			fmt.Fprintf(os.Stderr, "lease-check: visualization: %v\n", err)
		} else {
			out.Visualization = *visualize
		}
	}
	out.ElapsedMs = time.Since(started).Milliseconds()
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	return code
}
