package healthcheck

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// netProber runs real checks.
type netProber struct{}

func (netProber) Probe(ctx context.Context, t *Target) error {
	switch t.Kind {
	case TCP:
		return probeTCP(ctx, t)
	case HTTP:
		return probeHTTP(ctx, t)
	}
	return fmt.Errorf("unknown check %v", t.Kind)
}

// probeTCP succeeds when the connection is accepted, as TCP_CHECK.
func probeTCP(ctx context.Context, t *Target) error {
	// No keepalive: the connection is closed at once (saves its
	// setsockopt calls on every check).
	d := net.Dialer{KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", t.Addr.String())
	if err != nil {
		return shortErr(err)
	}
	return c.Close()
}

// probeHTTP succeeds when GET answers with the expected status, as
// HTTP_GET. The body is read (a little) and discarded.
func probeHTTP(ctx context.Context, t *Target) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.Addr.String()+t.Path, nil)
	if err != nil {
		return err
	}
	if t.Host != "" {
		req.Host = t.Host
	}
	req.Header.Set("User-Agent", "keepvip-healthcheck")
	client := http.Client{
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is a status like any other
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return shortErr(err)
	}
	defer resp.Body.Close()
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	if resp.StatusCode != t.Status {
		return fmt.Errorf("HTTP %d, want %d", resp.StatusCode, t.Status)
	}
	return nil
}

// shortErr keeps the part of a network error that says what happened
// ("connection refused", "i/o timeout") for the status command.
func shortErr(err error) error {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	if strings.Contains(msg, "deadline exceeded") || strings.Contains(msg, "i/o timeout") {
		msg = "timed out"
	}
	return fmt.Errorf("%s", msg)
}
