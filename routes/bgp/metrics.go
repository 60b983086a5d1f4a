package bgp

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reg         prometheus.Registerer
	established *prometheus.GaugeVec
	transitions *prometheus.CounterVec
	announced   prometheus.Gauge
	updates     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reg: reg,
		established: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keepvip_bgp_session_established",
			Help: "1 while the BGP session with the peer is established.",
		}, []string{"peer"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_bgp_session_transitions_total",
			Help: "BGP sessions going to or from established, by peer and the state entered.",
		}, []string{"peer", "state"}),
		announced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keepvip_bgp_announced_prefixes",
			Help: "Prefixes this node announces over BGP.",
		}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keepvip_bgp_route_changes_total",
			Help: "Routes announced, changed or withdrawn.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.established, m.transitions, m.announced, m.updates)
	}
	return m
}

// unregister removes the metrics, so that a new Speaker can register
// them on the same registry.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{m.established, m.transitions, m.announced, m.updates} {
		m.reg.Unregister(c)
	}
}
