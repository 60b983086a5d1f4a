// Package healthcheck checks real servers: TCP connections with keepalived's
// TCP_CHECK semantics (delay_loop, connect_timeout, retry,
// delay_before_retry) and HTTP GETs that must answer a given status, with
// rise/fall hysteresis on top.
//
// A Checker takes the whole set of targets (Sync), runs each one's rounds
// at a fixed phase within its interval so that thousands of targets are
// spread in time, bounds the attempts in flight, keeps every target's last
// result, last change and reason (Results), answers whether a target is
// healthy now (Healthy: the one record of health, which its owner reads
// rather than keeping a copy), and reports changes of health
// (Options.OnChange). It knows nothing of IPVS or Kubernetes:
// internal/balancer gives it the real servers and turns its results into
// IPVS weights.
package healthcheck
