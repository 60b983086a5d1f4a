package bfd

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reg         prometheus.Registerer
	up          *prometheus.GaugeVec
	transitions *prometheus.CounterVec
	detection   *prometheus.GaugeVec
	txInterval  *prometheus.GaugeVec
	sent        *prometheus.CounterVec
	received    *prometheus.CounterVec
	sendErrors  *prometheus.CounterVec
	dropped     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	peer := []string{"peer"}
	m := &metrics{
		reg: reg,
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keepvip_bfd_session_up",
			Help: "1 while the BFD session with the peer is Up.",
		}, peer),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_bfd_session_transitions_total",
			Help: "BFD session state changes, by peer and the state entered (down, init, up, admindown).",
		}, []string{"peer", "state"}),
		detection: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keepvip_bfd_detection_time_seconds",
			Help: "How long the session waits for the peer's packets before it declares the peer down (0 before the first).",
		}, peer),
		txInterval: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keepvip_bfd_tx_interval_seconds",
			Help: "The negotiated interval between this node's BFD packets to the peer, before jitter.",
		}, peer),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_bfd_packets_sent_total",
			Help: "BFD control packets sent to the peer.",
		}, peer),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_bfd_packets_received_total",
			Help: "BFD control packets from the peer its session took.",
		}, peer),
		sendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_bfd_send_errors_total",
			Help: "BFD control packets to the peer the kernel refused.",
		}, peer),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_bfd_packets_dropped_total",
			Help: "BFD packets dropped, by reason: malformed, ttl (not 255 on a single-hop session), unknown (no session), address (not from the session's peer), hop (single-hop packet for a multihop session or the reverse), backlog, session (the session refused it: discriminator, authentication, no discriminator once Up), read (the socket failed).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.collectors()...)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.up, m.transitions, m.detection, m.txInterval, m.sent, m.received, m.sendErrors, m.dropped}
}

// forget removes a peer's series when its session goes.
func (m *metrics) forget(peer string) {
	for _, v := range []*prometheus.MetricVec{m.up.MetricVec, m.detection.MetricVec, m.txInterval.MetricVec, m.sent.MetricVec, m.received.MetricVec, m.sendErrors.MetricVec} {
		v.DeleteLabelValues(peer)
	}
	m.transitions.DeletePartialMatch(prometheus.Labels{"peer": peer})
}

// unregister removes the metrics, so that a new Server can register them
// on the same registry.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
