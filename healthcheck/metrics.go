package healthcheck

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	checks   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	targets  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_healthcheck_attempts_total",
			Help: "Health check attempts, by type and result (ok, failed).",
		}, []string{"type", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keepvip_healthcheck_attempt_seconds",
			Help:    "Duration of health check attempts.",
			Buckets: []float64{.0005, .001, .005, .01, .05, .1, .5, 1, 5},
		}, []string{"type"}),
		targets: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keepvip_healthcheck_targets",
			Help: "Health-checked real servers, by state (healthy, unhealthy).",
		}, []string{"state"}),
	}
	if reg != nil {
		reg.MustRegister(m.checks, m.duration, m.targets)
	}
	return m
}

func (m *metrics) observe(k Kind, err error, d time.Duration) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	m.checks.WithLabelValues(k.String(), result).Inc()
	m.duration.WithLabelValues(k.String()).Observe(d.Seconds())
}

func (m *metrics) setCounts(healthy, total int) {
	m.targets.WithLabelValues("healthy").Set(float64(healthy))
	m.targets.WithLabelValues("unhealthy").Set(float64(total - healthy))
}
