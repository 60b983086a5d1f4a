package main

import (
	"flag"
	"log/slog"
)

// kkvFlag is a flag of kube-keepalived-vip that keepvip has none of the
// same name and meaning for. `keepvip run` takes them all, so that a
// DaemonSet's args carry over, and logs for each one given what replaces
// it.
type kkvFlag struct {
	name   string
	isBool bool
	// instead says what replaces the flag, or why it is meaningless now.
	instead string
}

// kkvFlags are those flags, from github.com/aledbf/kube-keepalived-vip:
// pkg/cmd/main.go, main.go before 2017 (--interface,
// --use-kubernetes-cluster-service, --v) and the glog flags it took
// (flags.AddGoFlagSet(flag.CommandLine)). keepvip's own --kubeconfig,
// --services-configmap, --vrid, --use-unicast and --interface are
// kube-keepalived-vip's too and mean the same; --iface and
// --apiserver-host are used (runDaemon binds them), the others are
// ignored.
var kkvFlags = []kkvFlag{
	{name: "iface", instead: "used as --interface, its name in keepvip"},
	{name: "apiserver-host", instead: "used as the API server's address in Kubernetes mode, as kube-keepalived-vip did; keepvip's way is --kubeconfig (a kubeconfig naming the server)"},
	{name: "watch-namespace", instead: "ignored: keepvip follows the Services the vip-configmap names, in whatever namespace they are"},
	{name: "proxy-protocol-mode", isBool: true, instead: "ignored: keepvip has no HAProxy and no PROXY protocol mode; IPVS forwards the connections (NAT, DR or TUN, per vip-configmap entry)"},
	{name: "http-port", instead: "ignored: keepvip serves /healthz, /readyz and /metrics on --metrics-addr; point the livenessProbe (kube-keepalived-vip's /health) at /healthz there"},
	{name: "release-vips", isBool: true, instead: "ignored: keepvip always removes its VIPs when it stops, after handing them off to the new master"},
	{name: "use-kubernetes-cluster-service", isBool: true, instead: "ignored: keepvip uses the pod's ServiceAccount unless --kubeconfig is given"},
	{name: "v", instead: "ignored: use --log-level (debug, info, warn or error)"},
	{name: "logtostderr", isBool: true, instead: "ignored: keepvip always logs to standard error (--log-format text or json)"},
	{name: "alsologtostderr", isBool: true, instead: "ignored: keepvip always logs to standard error (--log-format text or json)"},
	{name: "stderrthreshold", instead: "ignored: use --log-level (debug, info, warn or error)"},
	{name: "vmodule", instead: "ignored: use --log-level (debug, info, warn or error)"},
	{name: "log_backtrace_at", instead: "ignored: keepvip has no stack traces on log lines"},
	{name: "log_dir", instead: "ignored: keepvip logs to standard error only"},
}

// kkvCompat is the kube-keepalived-vip flags defined on a FlagSet.
type kkvCompat struct {
	fs      *flag.FlagSet
	instead map[string]string
	// apiHost is --apiserver-host.
	apiHost string
}

// addKkvFlags defines kkvFlags on fs: --iface into iface, --apiserver-host
// into the returned kkvCompat's apiHost, the others into nothing.
func addKkvFlags(fs *flag.FlagSet, iface *string) *kkvCompat {
	c := &kkvCompat{fs: fs, instead: map[string]string{}}
	for _, f := range kkvFlags {
		c.instead[f.name] = f.instead
		usage := "kube-keepalived-vip's flag, " + f.instead
		switch {
		case f.name == "iface":
			fs.StringVar(iface, f.name, "", usage)
		case f.name == "apiserver-host":
			fs.StringVar(&c.apiHost, f.name, "", usage)
		case f.isBool:
			fs.Bool(f.name, false, usage)
		default:
			fs.String(f.name, "", usage)
		}
	}
	return c
}

// warn logs, for each kube-keepalived-vip flag given, what replaces it.
// Call once fs is parsed.
func (c *kkvCompat) warn(log *slog.Logger) {
	c.fs.Visit(func(f *flag.Flag) {
		if instead, ok := c.instead[f.Name]; ok {
			log.Warn("kube-keepalived-vip flag", "flag", "--"+f.Name, "value", f.Value.String(), "now", instead)
		}
	})
}
