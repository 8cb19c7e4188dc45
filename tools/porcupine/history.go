package main

// Reading a recorded history: JSON lines written by tests/chaos (one logical client operation per line, after
// merging the HTTP retries of one (X-Client-Id, X-Request-Id)), turned into porcupine operations.
//
// Line shapes:
//
//	{"type": "op", "id": 7, "client": "w1", "kind": "claim|renew|complete|fail|release",
//	 "call_ns": 1, "return_ns": 2 or null, "at_ms": epoch ms at return or null, "status": 200 or null,
//	 "request": {...body, "lease_id" for release...}, "response": {...body} or null}
//	{"type": "annotation", "tag": "fault", "start_ns": 1, "end_ns": 2, "description": "kill -9 leader n1"}
//
// Reads and submits use the same op shape with kind "submit" (POST /v1/jobs: response {"job": {"job_id"}}),
// "read_job" (GET /v1/jobs/{id}: request {"job_id"}), "list_jobs" (GET /v1/jobs: every listed job was found) and
// "list_leases" (GET /v1/leases: response {"leases": [{"kind", "window_id", "token"}]}). A listing becomes one "read" per window lease whose grant some claim
// answer showed (a lease granted by a claim of unknown outcome cannot be judged); reads of unknown outcome and
// submits of unknown outcome (no job id) are left out: they change nothing a later operation could contradict.
//
// A claim whose outcome is unknown names no window, so it is left out: an unseen grant is indistinguishable from
// a grant that expired unseen, which the model allows anyway. Other operations of unknown outcome get an
// infinite return time (porcupine's way of saying "maybe applied, at any time after the call").

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/anishathalye/porcupine"
)

type rawLine struct {
	Type        string          `json:"type"`
	ID          int             `json:"id"`
	Client      string          `json:"client"`
	Kind        string          `json:"kind"`
	CallNs      int64           `json:"call_ns"`
	ReturnNs    *int64          `json:"return_ns"`
	AtMs        *int64          `json:"at_ms"`
	Status      *int            `json:"status"`
	Request     json.RawMessage `json:"request"`
	Response    json.RawMessage `json:"response"`
	Tag         string          `json:"tag"`
	StartNs     int64           `json:"start_ns"`
	EndNs       int64           `json:"end_ns"`
	Description string          `json:"description"`
}

type leaseBody struct {
	LeaseID string      `json:"lease_id"`
	Token   json.Number `json:"token"`
}

type listedLease struct {
	Kind     string `json:"kind"`
	WindowID string `json:"window_id"`
	Token    int64  `json:"token"`
}

type jobBody struct {
	JobID string `json:"job_id"`
}

type answerBody struct {
	ExpiresAtMs int64    `json:"expires_at_ms"`
	State       string   `json:"state"`
	Job         *jobBody `json:"job"`
	Leases      []struct {
		WindowID    string `json:"window_id"`
		Token       int64  `json:"token"`
		ExpiresAtMs int64  `json:"expires_at_ms"`
		End         int64  `json:"end"`
	} `json:"leases"`
	Error *struct {
		Code string `json:"code"`
	} `json:"error"`
}

// history is a parsed history file.
type history struct {
	ops         []porcupine.Operation
	annotations []porcupine.Annotation
	lines       int
}

func outcomeOf(status *int, answer answerBody) string {
	switch {
	case status == nil || *status >= 500:
		return outcomeUnknown
	case *status >= 200 && *status < 300:
		return outcomeOK
	case *status == 409 && answer.Error != nil && answer.Error.Code == "lease_lost":
		return outcomeLost
	case *status == 404:
		return outcomeNotFound
	}
	return outcomeRejected
}

func tokenOf(body leaseBody) (int64, error) {
	if body.Token != "" {
		return strconv.ParseInt(string(body.Token), 10, 64)
	}
	digits, ok := strings.CutPrefix(body.LeaseID, "lease-")
	if !ok {
		return 0, fmt.Errorf("lease_id %q is not lease-<token>", body.LeaseID)
	}
	return strconv.ParseInt(digits, 10, 64)
}

func readHistory(r io.Reader, ttlMs int64) (*history, error) {
	var raws []rawLine
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for n := 1; scanner.Scan(); n++ {
		text := strings.TrimSpace(scanner.Text())
		if text == "" {
			continue
		}
		var line rawLine
		if err := json.Unmarshal([]byte(text), &line); err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		raws = append(raws, line)
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	h := &history{lines: len(raws)}
	windowOf := map[int64]string{}
	// First pass: grants name the window of every token a client can know.
	for _, line := range raws {
		if line.Type == "op" && line.Kind == "claim" {
			var answer answerBody
			_ = json.Unmarshal(line.Response, &answer)
			for _, lease := range answer.Leases {
				windowOf[lease.Token] = lease.WindowID
			}
		}
	}
	for i, line := range raws {
		switch line.Type {
		case "annotation":
			h.annotations = append(h.annotations, porcupine.Annotation{
				Tag: line.Tag, Start: line.StartNs, End: line.EndNs, Description: line.Description,
				BackgroundColor: "#fde2e1",
			})
		case "op":
			ops, err := convert(line, windowOf, ttlMs)
			if err != nil {
				return nil, fmt.Errorf("history line %d (op %d): %v", i+1, line.ID, err)
			}
			h.ops = append(h.ops, ops...)
		default:
			return nil, fmt.Errorf("history line %d: unknown type %q", i+1, line.Type)
		}
	}
	sort.SliceStable(h.ops, func(a, b int) bool { return h.ops[a].Call < h.ops[b].Call })
	return h, nil
}

func convert(line rawLine, windowOf map[int64]string, ttlMs int64) ([]porcupine.Operation, error) {
	var answer answerBody
	if len(line.Response) > 0 && string(line.Response) != "null" {
		if err := json.Unmarshal(line.Response, &answer); err != nil {
			return nil, fmt.Errorf("response: %v", err)
		}
	}
	outcome := outcomeOf(line.Status, answer)
	ret := int64(math.MaxInt64)
	if line.ReturnNs != nil && outcome != outcomeUnknown {
		ret = *line.ReturnNs
	}
	var atMs int64
	if line.AtMs != nil {
		atMs = *line.AtMs
	}
	meta := fmt.Sprintf("op %d by %s", line.ID, line.Client)
	op := func(in input, out output) porcupine.Operation {
		in.Client, in.Op = line.Client, line.ID
		return porcupine.Operation{Input: in, Output: out, Call: line.CallNs, Return: ret, Metadata: meta}
	}
	if line.Kind == "claim" {
		if outcome != outcomeOK || len(answer.Leases) == 0 {
			return nil, nil
		}
		var ops []porcupine.Operation
		tokens := make([]int64, 0, len(answer.Leases))
		for _, lease := range answer.Leases {
			tokens = append(tokens, lease.Token)
			grant := input{Key: lease.WindowID, Kind: "grant", Token: lease.Token, TTLMs: ttlMs, EndMs: lease.End}
			ops = append(ops, op(grant,
				output{Outcome: outcome, ExpMs: lease.ExpiresAtMs, AtMs: atMs}))
		}
		sort.Slice(tokens, func(a, b int) bool { return tokens[a] < tokens[b] })
		ops = append(ops, op(input{Key: tokensKey, Kind: "tokens"}, output{Outcome: outcome, Tokens: tokens, AtMs: atMs}))
		return ops, nil
	}
	switch line.Kind {
	case "submit", "read_job", "list_jobs", "list_leases":
		return convertRead(line, outcome, windowOf, op)
	case "renew", "complete", "fail", "release":
	default:
		return nil, fmt.Errorf("unknown kind %q", line.Kind)
	}
	var body leaseBody
	if err := json.Unmarshal(line.Request, &body); err != nil {
		return nil, fmt.Errorf("request: %v", err)
	}
	token, err := tokenOf(body)
	if err != nil {
		return nil, err
	}
	key, known := windowOf[token]
	if !known {
		key = fmt.Sprintf("#never-granted-t%d", token) // accepting such a token is a violation in itself
	}
	out := output{Outcome: outcome, ExpMs: answer.ExpiresAtMs, AtMs: atMs, State: answer.State}
	return []porcupine.Operation{op(input{Key: key, Kind: line.Kind, Token: token, TTLMs: ttlMs}, out)}, nil
}

// convertRead turns a submit, a job read or a lease listing into operations of the job and window partitions.
func convertRead(line rawLine, outcome string, windowOf map[int64]string,
	op func(input, output) porcupine.Operation) ([]porcupine.Operation, error) {
	if outcome != outcomeOK && !(outcome == outcomeNotFound && line.Kind == "read_job") {
		return nil, nil
	}
	switch line.Kind {
	case "submit":
		var answer answerBody
		if err := json.Unmarshal(line.Response, &answer); err != nil || answer.Job == nil || answer.Job.JobID == "" {
			return nil, fmt.Errorf("submit answer names no job: %s", line.Response)
		}
		return []porcupine.Operation{op(input{Key: jobKeyPrefix + answer.Job.JobID, Kind: "submit"},
			output{Outcome: outcome})}, nil
	case "read_job":
		var request jobBody
		if err := json.Unmarshal(line.Request, &request); err != nil || request.JobID == "" {
			return nil, fmt.Errorf("read_job request names no job_id: %s", line.Request)
		}
		return []porcupine.Operation{op(input{Key: jobKeyPrefix + request.JobID, Kind: "read_job"},
			output{Outcome: outcome})}, nil
	}
	var listing struct {
		Leases []listedLease `json:"leases"`
		Jobs   []jobBody     `json:"jobs"`
	}
	if err := json.Unmarshal(line.Response, &listing); err != nil {
		return nil, fmt.Errorf("listing: %v", err)
	}
	var ops []porcupine.Operation
	for _, job := range listing.Jobs {
		ops = append(ops, op(input{Key: jobKeyPrefix + job.JobID, Kind: "read_job"}, output{Outcome: outcome}))
	}
	for _, lease := range listing.Leases {
		if lease.Kind != "window" || windowOf[lease.Token] != lease.WindowID {
			continue
		}
		ops = append(ops, op(input{Key: lease.WindowID, Kind: "read", Token: lease.Token}, output{Outcome: outcome}))
	}
	return ops, nil
}
