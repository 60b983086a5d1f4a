package vrrp

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the VRRP counters and gauges, registered on the registry given
// to NewMetrics. One Metrics serves every instance of a process.
type Metrics struct {
	state       *prometheus.GaugeVec
	transitions *prometheus.CounterVec
	sent        *prometheus.CounterVec
	received    *prometheus.CounterVec
	dropped     *prometheus.CounterVec
	announced   *prometheus.CounterVec
	mismatch    *prometheus.CounterVec
	errors      *prometheus.CounterVec
	takeover    *prometheus.HistogramVec
	failover    *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them on reg. A nil reg
// gives metrics that count but are not exported.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keepvip_vrrp_state",
			Help: "State of each VRRP instance: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT.",
		}, []string{"instance", "interface", "vrid", "family"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_vrrp_transitions_total",
			Help: "State changes of each VRRP instance.",
		}, []string{"instance", "from", "to"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_vrrp_adverts_sent_total",
			Help: "VRRP advertisements sent (one per destination).",
		}, []string{"instance"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_vrrp_adverts_received_total",
			Help: "Valid VRRP advertisements received.",
		}, []string{"instance"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_vrrp_packets_dropped_total",
			Help: "Received VRRP packets dropped, by reason.",
		}, []string{"interface", "family", "vrid", "reason"}),
		announced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_vrrp_announcements_sent_total",
			Help: "Gratuitous ARP and unsolicited neighbour advertisements sent.",
		}, []string{"instance"}),
		mismatch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_vrrp_address_list_mismatch_total",
			Help: "Adverts accepted whose address list differs from the configured VIPs.",
		}, []string{"instance"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_vrrp_errors_total",
			Help: "Failed operations: send, vip-add, vip-delete, announce; backlog: an expired timer acted on before the socket reader handed over adverts it had.",
		}, []string{"instance", "op"}),
		failover: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keepvip_vrrp_takeover_seconds",
			Help:    "A backup's takeover as it saw it: from the last advert it heard (or from when it began to listen) to its VIPs installed and its first GARP/NA sent.",
			Buckets: []float64{.01, .02, .05, .1, .2, .35, .5, 1, 2, 3.5, 5, 10},
		}, []string{"instance"}),
		takeover: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keepvip_vrrp_become_master_seconds",
			Help:    "Time from the decision to become master to VIPs installed and the first GARP/NA sent.",
			Buckets: []float64{.0001, .0005, .001, .002, .005, .01, .02, .05, .1, .5},
		}, []string{"instance"}),
	}
	if reg != nil {
		reg.MustRegister(m.state, m.transitions, m.sent, m.received, m.dropped, m.announced, m.mismatch, m.errors, m.takeover, m.failover)
	}
	return m
}

func (m *Metrics) drop(ifname string, fam Family, vrid uint8, r DropReason) {
	v := ""
	if vrid != 0 {
		v = strconv.Itoa(int(vrid))
	}
	m.dropped.WithLabelValues(ifname, fam.String(), v, string(r)).Inc()
}

// forget removes the series of an instance that no longer exists.
func (m *Metrics) forget(c *Config) {
	m.state.DeleteLabelValues(c.Name, c.Interface, strconv.Itoa(int(c.VRID)), c.Family().String())
	m.sent.DeleteLabelValues(c.Name)
	m.received.DeleteLabelValues(c.Name)
	m.announced.DeleteLabelValues(c.Name)
	m.mismatch.DeleteLabelValues(c.Name)
	m.takeover.DeleteLabelValues(c.Name)
	m.failover.DeleteLabelValues(c.Name)
	m.transitions.DeletePartialMatch(prometheus.Labels{"instance": c.Name})
	m.errors.DeletePartialMatch(prometheus.Labels{"instance": c.Name})
}
