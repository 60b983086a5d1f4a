package balancer

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	updateFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		updateFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keepvip_balancer_ipvs_update_failures_total",
			Help: "Writes of health changes to IPVS that failed (each is tried again after a backoff).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.updateFailures)
	}
	return m
}
