// Package healthcheck will run TCP and HTTP health checks of real servers
// with keepalived's TCP_CHECK semantics. It is built by issue #3; nothing
// here yet.
package healthcheck
