package main

// The lease-table model: a sequential specification of what clients may observe of one window's leases, and of
// the fencing counter. It is partitioned: one partition per window (grants, renewals, completions, failures and
// releases of that window's tokens) plus one partition for the fencing counter (every claim that returned leases).
//
// Rules (DESIGN.md section 4, docs/coordinator.md):
//  1. A grant carries a token greater than every token granted before it, in the window and in the whole table.
//  2. A window that is done (or failed for good) is not granted again, unless it was completed before it closed:
//     a later job re-opens such a window for the bars closed since (docs/coordinator.md). Completion happens after
//     the completing lease's grant, so a re-grant is legal only if that grant came before the window's end.
//  3. A window has at most one live lease: a new grant is legal only after the previous lease was completed,
//     failed or released, or expired by table time (the new lease's granted_at >= the old lease's expiry).
//  4. renew/complete/fail/release succeed only for the current lease; complete is idempotent for the token that
//     completed the window, and no other token can ever complete it.
//  5. Leases also end without a client operation, when the leader's reaper expires them. The model applies that
//     lazily: an operation that finds the current lease gone (409 lease_lost) is legal only if the lease could
//     have expired by the time the operation returned (wall clock at return >= the lease's last known expiry).
//  6. Operations whose outcome is unknown (timeouts, 5xx, connection errors) may or may not have taken effect:
//     their step returns both states, and porcupine gives them an infinite return time.
//  7. Reads (issue 15: linearizable by default on every node). A lease listing that shows token t for a window
//     is legal only while t is that window's live lease in the model: a listing that still shows a lease after
//     its completion, failure or release was acknowledged, or after a newer grant, is a stale read. A job has
//     its own partition ("#job:<id>"): once a submit was acknowledged or a read found the job, a read answering
//     404 is a stale read (jobs are never deleted).

import (
	"fmt"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Outcomes of an operation as the client saw it.
const (
	outcomeOK       = "ok"
	outcomeLost     = "lost"     // 409 lease_lost
	outcomeNotFound = "notfound" // 404: the token is unknown, so the fencing counter went backwards
	outcomeUnknown  = "unknown"  // timeout, 5xx, connection error: maybe applied
	outcomeRejected = "rejected" // any other 4xx: refused before it could change anything
)

// tokensKey is the partition of the fencing counter.
const tokensKey = "#tokens"

// jobKeyPrefix starts the partition key of one job.
const jobKeyPrefix = "#job:"

// input is what a client asked (one partition's view of it).
type input struct {
	Key    string // window id, or tokensKey
	Kind   string // grant, renew, complete, fail, release, tokens
	Token  int64  // the lease's token (grant, renew, complete, fail, release)
	TTLMs  int64  // lease TTL, for grants
	EndMs  int64  // grant: the window's end (epoch ms)
	Client string
	Op     int // id of the history line
}

// output is what the client got back.
type output struct {
	Outcome string
	ExpMs   int64   // grant, renew: expires_at_ms
	AtMs    int64   // wall clock (epoch ms) when the answer came back; 0 when unknown
	State   string  // fail: the window's state afterwards
	Tokens  []int64 // tokens: every token of one claim, ascending
}

// leaseState is one window's state, or (in the tokens partition) just MaxTok. It is comparable with ==.
type leaseState struct {
	Cur    int64 // token of the live lease, 0 when none
	CurExp int64 // its last known expiry (epoch ms); 0 when unknown (a renewal of unknown outcome)
	Done   int64 // the token that completed the window, 0 when not done
	Failed bool  // failed for good (fail with state "failed")
	MaxTok int64 // the largest token granted so far
	CurAt  int64 // when the live lease was granted (table ms)
	Reopen bool  // done, but possibly before the window closed: a later job may re-open it
	EndMs  int64 // the window's end, from its grants
	Exists bool  // job partitions: the job is known to exist
}

// stepRead: a lease listing showed in.Token as the window's lease (rule 7).
func stepRead(s leaseState, in input) []interface{} {
	if s.Cur != in.Token {
		return nil
	}
	return []interface{}{s}
}

// stepJob: a job was submitted (ok) or read (found: ok, or notfound) (rule 7).
func stepJob(s leaseState, in input, out output) []interface{} {
	switch out.Outcome {
	case outcomeOK:
		s.Exists = true
		return []interface{}{s}
	case outcomeNotFound:
		if in.Kind == "read_job" && !s.Exists {
			return []interface{}{s}
		}
	}
	return nil
}

func stepTokens(s leaseState, out output) []interface{} {
	if len(out.Tokens) == 0 || out.Tokens[0] <= s.MaxTok {
		return nil
	}
	s.MaxTok = out.Tokens[len(out.Tokens)-1]
	return []interface{}{s}
}

func stepGrant(s leaseState, in input, out output) []interface{} {
	if in.Token <= s.MaxTok || s.Failed || (s.Done != 0 && !s.Reopen) {
		return nil
	}
	s.Done, s.Reopen = 0, false // a re-opened window starts over
	if s.Cur != 0 && s.CurExp != 0 && out.ExpMs-in.TTLMs < s.CurExp {
		return nil // the previous lease was still live when this one was granted
	}
	s.Cur, s.CurExp, s.MaxTok, s.CurAt, s.EndMs = in.Token, out.ExpMs, in.Token, out.ExpMs-in.TTLMs, in.EndMs
	return []interface{}{s}
}

// stepLost: the client was told its lease is gone.
func stepLost(s leaseState, token int64, atMs int64) []interface{} {
	if s.Cur != token {
		return []interface{}{s}
	}
	if s.CurExp != 0 && (atMs == 0 || atMs < s.CurExp) {
		return nil // reported lost before it could have expired, and nothing else ended it
	}
	s.Cur, s.CurExp = 0, 0
	return []interface{}{s}
}

func stepRenew(s leaseState, in input, out output) []interface{} {
	switch out.Outcome {
	case outcomeOK:
		if s.Cur != in.Token {
			return nil
		}
		s.CurExp = out.ExpMs
		return []interface{}{s}
	case outcomeLost:
		return stepLost(s, in.Token, out.AtMs)
	case outcomeUnknown:
		if s.Cur == in.Token {
			s.CurExp = 0 // maybe extended to an unknown expiry: the weakest assumption covers both cases
		}
		return []interface{}{s}
	case outcomeRejected:
		return []interface{}{s}
	}
	return nil
}

func stepComplete(s leaseState, in input, out output) []interface{} {
	done := s
	done.Cur, done.CurExp, done.Done = 0, 0, in.Token
	done.Reopen = s.EndMs > 0 && s.CurAt < s.EndMs
	switch out.Outcome {
	case outcomeOK:
		if s.Cur == in.Token {
			return []interface{}{done}
		}
		if s.Done == in.Token {
			return []interface{}{s} // idempotent repeat
		}
		return nil // a stale token completed the window, or a second token did
	case outcomeLost:
		if s.Done == in.Token {
			return nil // the completing token must keep succeeding
		}
		return stepLost(s, in.Token, out.AtMs)
	case outcomeUnknown:
		if s.Cur == in.Token {
			return []interface{}{s, done}
		}
		return []interface{}{s}
	case outcomeRejected:
		return []interface{}{s}
	}
	return nil
}

// stepEnd: fail and release end the current lease without completing the window.
func stepEnd(s leaseState, in input, out output) []interface{} {
	ended := s
	ended.Cur, ended.CurExp = 0, 0
	switch out.Outcome {
	case outcomeOK:
		if s.Cur != in.Token {
			return nil
		}
		ended.Failed = in.Kind == "fail" && out.State == "failed"
		return []interface{}{ended}
	case outcomeLost:
		return stepLost(s, in.Token, out.AtMs)
	case outcomeUnknown:
		if s.Cur == in.Token {
			return []interface{}{s, ended}
		}
		return []interface{}{s}
	case outcomeRejected:
		return []interface{}{s}
	}
	return nil
}

func step(state, in, out interface{}) []interface{} {
	s, i, o := state.(leaseState), in.(input), out.(output)
	switch i.Kind {
	case "tokens":
		return stepTokens(s, o)
	case "grant":
		return stepGrant(s, i, o)
	case "renew":
		return stepRenew(s, i, o)
	case "complete":
		return stepComplete(s, i, o)
	case "fail", "release":
		return stepEnd(s, i, o)
	case "read":
		return stepRead(s, i)
	case "submit", "read_job":
		return stepJob(s, i, o)
	}
	return nil
}

// partition groups operations by key and gives each partition its own client lanes (for the visualization).
func partition(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var keys []string
	for _, op := range history {
		key := op.Input.(input).Key
		if _, seen := byKey[key]; !seen {
			keys = append(keys, key)
		}
		byKey[key] = append(byKey[key], op)
	}
	sort.Strings(keys)
	out := make([][]porcupine.Operation, 0, len(keys))
	for _, key := range keys {
		out = append(out, assignLanes(byKey[key]))
	}
	return out
}

// assignLanes gives overlapping operations different ClientIds (greedy interval colouring).
func assignLanes(ops []porcupine.Operation) []porcupine.Operation {
	sorted := append([]porcupine.Operation(nil), ops...)
	sort.SliceStable(sorted, func(a, b int) bool { return sorted[a].Call < sorted[b].Call })
	var laneEnds []int64
	for i := range sorted {
		lane := -1
		for l, end := range laneEnds {
			if end < sorted[i].Call {
				lane = l
				break
			}
		}
		if lane < 0 {
			laneEnds = append(laneEnds, 0)
			lane = len(laneEnds) - 1
		}
		laneEnds[lane] = sorted[i].Return
		sorted[i].ClientId = lane
	}
	return sorted
}

func describeOperation(in, out interface{}) string {
	i, o := in.(input), out.(output)
	switch i.Kind {
	case "tokens":
		return fmt.Sprintf("claim -> tokens %v", o.Tokens)
	case "grant":
		return fmt.Sprintf("grant t%d exp=%d", i.Token, o.ExpMs)
	case "renew":
		if o.Outcome == outcomeOK {
			return fmt.Sprintf("renew t%d -> exp=%d", i.Token, o.ExpMs)
		}
	case "fail":
		if o.Outcome == outcomeOK {
			return fmt.Sprintf("fail t%d -> %s", i.Token, o.State)
		}
	case "read":
		return fmt.Sprintf("listing shows t%d", i.Token)
	case "submit", "read_job":
		return fmt.Sprintf("%s %s -> %s", i.Kind, strings.TrimPrefix(i.Key, jobKeyPrefix), o.Outcome)
	}
	return fmt.Sprintf("%s t%d -> %s", i.Kind, i.Token, o.Outcome)
}

func describeState(state interface{}) string {
	s := state.(leaseState)
	var parts []string
	if s.Cur != 0 {
		parts = append(parts, fmt.Sprintf("lease t%d exp=%d", s.Cur, s.CurExp))
	}
	if s.Done != 0 {
		parts = append(parts, fmt.Sprintf("done by t%d", s.Done))
	}
	if s.Failed {
		parts = append(parts, "failed")
	}
	if s.Exists {
		return "job exists"
	}
	parts = append(parts, fmt.Sprintf("max token %d", s.MaxTok))
	return strings.Join(parts, ", ")
}

func describeMetadata(info interface{}) string {
	if info == nil {
		return ""
	}
	return fmt.Sprint(info)
}

// leaseModel is the porcupine model of the lease table.
func leaseModel() porcupine.Model {
	nd := porcupine.NondeterministicModel{
		Partition:                 partition,
		Init:                      func() []interface{} { return []interface{}{leaseState{}} },
		Step:                      step,
		DescribeOperation:         describeOperation,
		DescribeState:             describeState,
		DescribeOperationMetadata: describeMetadata,
	}
	return nd.ToModel()
}
