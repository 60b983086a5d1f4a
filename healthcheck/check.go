package healthcheck

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Kind is a kind of health check.
type Kind uint8

// The kinds of check.
const (
	TCP  Kind = iota + 1 // a TCP connection is accepted (keepalived TCP_CHECK)
	HTTP                 // an HTTP GET answers with the expected status (HTTP_GET)
)

func (k Kind) String() string {
	switch k {
	case TCP:
		return "tcp"
	case HTTP:
		return "http"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind reads "tcp" or "http".
func ParseKind(s string) (Kind, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "http":
		return HTTP, nil
	}
	return 0, fmt.Errorf("%q is not a health check (tcp or http)", s)
}

// Check is how a target is checked, with keepalived's TCP_CHECK meaning
// plus rise/fall hysteresis.
type Check struct {
	Kind Kind
	// Interval is the time between the starts of two rounds (delay_loop).
	Interval time.Duration
	// Timeout bounds one attempt: the connection, and for HTTP the whole
	// request (connect_timeout).
	Timeout time.Duration
	// Retries is how many more attempts a failed round makes before it
	// counts as failed (retry), DelayBeforeRetry apart.
	Retries          int
	DelayBeforeRetry time.Duration
	// Rise and Fall are how many rounds in a row must succeed or fail to
	// change a target's state.
	Rise, Fall int
	// Path and Status: the HTTP GET path and the status it must answer.
	Path   string
	Status int
	// Host is the HTTP Host header; empty: the target's address.
	Host string
}

// DefaultCheck returns keepalived's TCP_CHECK defaults with rise and fall
// of 1: a round every 5 s (delay_loop 5, as kube-keepalived-vip used), 3 s
// to connect, one retry 1 s later.
func DefaultCheck() Check {
	return Check{Kind: TCP, Interval: 5 * time.Second, Timeout: 3 * time.Second, Retries: 1,
		DelayBeforeRetry: time.Second, Rise: 1, Fall: 1, Path: "/", Status: 200}
}

// FieldError is a problem with one field; the names are those of the
// keepvip configuration file.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Validate returns every problem with c, each naming its field.
func (c *Check) Validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	if c.Kind != TCP && c.Kind != HTTP {
		bad("type", "%v: want tcp or http", c.Kind)
	}
	// Fields bounded by the interval are compared with it only when it
	// is valid itself, so that one mistake is reported once.
	interval := c.Interval
	if interval < 100*time.Millisecond || interval > time.Hour {
		bad("interval", "%v is outside 100ms-1h", c.Interval)
		interval = time.Hour
	}
	if c.Timeout < 10*time.Millisecond || c.Timeout > interval {
		bad("timeout", "%v must be at least 10ms and at most the interval (%v)", c.Timeout, c.Interval)
	}
	if c.Retries < 0 || c.Retries > 10 {
		bad("retries", "%d is outside 0-10", c.Retries)
	}
	if c.DelayBeforeRetry < 0 || c.DelayBeforeRetry > interval {
		bad("delayBeforeRetry", "%v is outside 0 and the interval (%v)", c.DelayBeforeRetry, c.Interval)
	}
	if c.Rise < 1 || c.Rise > 100 {
		bad("rise", "%d is outside 1-100", c.Rise)
	}
	if c.Fall < 1 || c.Fall > 100 {
		bad("fall", "%d is outside 1-100", c.Fall)
	}
	if c.Kind == HTTP {
		if !strings.HasPrefix(c.Path, "/") {
			bad("path", "%q must start with /", c.Path)
		}
		if c.Status < 100 || c.Status > 599 {
			bad("status", "%d is not an HTTP status", c.Status)
		}
	}
	return errs
}

// Target is something to check: an address and the check to run.
type Target struct {
	// Key identifies the target for its owner (for example the virtual
	// service and real server); results are reported under it.
	Key  string
	Addr netip.AddrPort
	Check
}

// Result is what is known of a target.
type Result struct {
	Key     string         `json:"key"`
	Addr    netip.AddrPort `json:"address"`
	Kind    string         `json:"type"`
	Healthy bool           `json:"healthy"`
	// Checked is when the last round ended, Changed when Healthy last
	// changed (zero: not since the target was added).
	Checked time.Time `json:"lastCheck"`
	Changed time.Time `json:"lastChange"`
	// Reason says why the last round failed, or "ok".
	Reason string `json:"reason"`
	// Streak counts the rounds in a row with the last round's result.
	Streak int `json:"streak"`
}
