// Command keepvip keeps virtual IPs highly available with VRRP.
//
//	keepvip run --config FILE        run the daemon
//	keepvip status [-o table|json|yaml]
//	keepvip health [--ready]         the probes: healthy (ready)? exit 0 or 1
//	keepvip validate FILE            check a configuration and exit
//	keepvip version
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
	"github.com/keepvip/keepvip/internal/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const defaultSocket = "/run/keepvip/keepvip.sock"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `keepvip keeps virtual IPs highly available with VRRP (RFC 9568).

Usage:
  keepvip run --config FILE [--status-socket PATH] [--metrics-addr ADDR] [--state-dir DIR] [--log-level LEVEL]
  keepvip run --configmap NAMESPACE/NAME --node-name NODE [--kubeconfig FILE] [--vrid N] [--interface IF] [--use-unicast] ...
              (kube-keepalived-vip's flags are taken too, each logged with what replaces it)
  keepvip status [--socket PATH] [-o table|json|yaml]
  keepvip health [--socket PATH] [--ready]      asks keepvip on its status socket: exit 0 if healthy (ready), 1 if not
  keepvip validate FILE
  keepvip cleanup [--state-dir DIR] [--wait]    removes what keepvip owns on this node (uninstall)
  keepvip version

Run 'keepvip COMMAND -h' for the flags of a command.
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runDaemon(args[1:], stderr)
	case "status":
		err = runStatus(args[1:], stdout)
	case "health":
		err = runHealth(args[1:], stdout)
	case "validate":
		err = runValidate(args[1:], stdout)
	case "cleanup":
		err = runCleanup(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "keepvip", buildVersion())
	case "-h", "--help", "help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "keepvip: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "keepvip:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "keepvip:", err)
		return 1
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// envOr returns the environment variable key, or def.
func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func runDaemon(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("keepvip run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("config", envOr("KEEPVIP_CONFIG", ""), "configuration file (env KEEPVIP_CONFIG)")
	sock := fs.String("status-socket", envOr("KEEPVIP_STATUS_SOCKET", defaultSocket), "unix socket for 'keepvip status' and 'keepvip health', in a directory only root may write to (made so if it is root's; a shared one such as /tmp is refused); empty for none (env KEEPVIP_STATUS_SOCKET)")
	metrics := fs.String("metrics-addr", envOr("KEEPVIP_METRICS_ADDR", ""), "HOST:PORT for /metrics, /healthz and /readyz: loopback (127.0.0.1:9742) or the node's address (the DaemonSet gives $(HOST_IP):9742); empty for none. Never answered on a VIP: with a wildcard (:9742), connections to a VIP are closed unanswered (env KEEPVIP_METRICS_ADDR)")
	stateDir := fs.String("state-dir", envOr("KEEPVIP_STATE_DIR", "/var/lib/keepvip"), "directory for state kept across restarts (the IPVS services keepvip created); empty for none (env KEEPVIP_STATE_DIR)")
	procSys := fs.String("proc-sys", envOr("KEEPVIP_PROC_SYS", ""), "where to write kernel settings (ip_vs, ip_nonlocal_bind, arp_*); empty for /proc/sys. In a container, the host's /proc/sys/net mounted read-write (env KEEPVIP_PROC_SYS)")
	level := fs.String("log-level", envOr("KEEPVIP_LOG_LEVEL", "info"), "debug, info, warn or error (env KEEPVIP_LOG_LEVEL)")
	cmName := fs.String("configmap", envOr("KEEPVIP_CONFIGMAP", ""), "Kubernetes mode: the vip-configmap as NAMESPACE/NAME (env KEEPVIP_CONFIGMAP)")
	fs.StringVar(cmName, "services-configmap", *cmName, "kube-keepalived-vip's name for --configmap")
	bgpSecret := fs.String("bgp-secret", envOr("KEEPVIP_BGP_SECRET", "keepvip-bgp"), "Kubernetes mode: the Secret, in the vip-configmap's namespace, that BGP passwords come from (passwordSecretKey) (env KEEPVIP_BGP_SECRET)")
	kubeconfig := fs.String("kubeconfig", "", "Kubernetes mode: kubeconfig file; default the pod's ServiceAccount, else $KUBECONFIG (a list, as kubectl reads it) or ~/.kube/config")
	nodeName := fs.String("node-name", envOr("NODE_NAME", ""), "Kubernetes mode: this node's name (env NODE_NAME, from the downward API)")
	kd := configmap.DefaultDefaults()
	fs.IntVar(&kd.VRID, "vrid", kd.VRID, "Kubernetes mode: VRID of the instance \"vips\" that holds the VIP keys of the ConfigMap")
	fs.StringVar(&kd.Interface, "interface", "", "Kubernetes mode: interface of the instance \"vips\"; default the one holding the node's address")
	fs.BoolVar(&kd.Unicast, "use-unicast", false, "Kubernetes mode: the instance \"vips\" sends adverts to the other nodes instead of multicast")
	fs.StringVar(&kd.AdvertInterval, "advert-interval", kd.AdvertInterval, "Kubernetes mode: advert interval of the instance \"vips\"")
	takeOver := fs.Bool("take-over", envOr("KEEPVIP_TAKE_OVER", "") == "true", "if a keepvip runs on this host already, wait (saying ready) until it stops, and take over its VIPs and virtual servers where they are, without moving them: how deploy/ upgrades a node. Without it, a second keepvip refuses to start (env KEEPVIP_TAKE_OVER=true)")
	format := fs.String("log-format", envOr("KEEPVIP_LOG_FORMAT", "text"), "text or json (env KEEPVIP_LOG_FORMAT)")
	kkv := addKkvFlags(fs, &kd.Interface)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return usageError{fmt.Sprintf("run: --log-level %q: want debug, info, warn or error", *level)}
	}
	hopts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	switch *format {
	case "text":
		h = slog.NewTextHandler(stderr, hopts)
	case "json":
		h = slog.NewJSONHandler(stderr, hopts)
	default:
		return usageError{fmt.Sprintf("run: --log-format %q: want text or json", *format)}
	}
	log := slog.New(h)
	// Before anything else can fail: what a kube-keepalived-vip flag
	// now means may be why.
	kkv.warn(log)
	metricsAddr, err := listenAddr(*metrics)
	if err != nil {
		return usageError{"run: --metrics-addr: " + err.Error()}
	}
	switch {
	case *cfg == "" && *cmName == "":
		return usageError{"run: give --config FILE, or --configmap NAMESPACE/NAME in Kubernetes"}
	case *cfg != "" && *cmName != "":
		return usageError{"run: --config and --configmap exclude each other"}
	}
	var kopts *daemon.KubeOptions
	if *cmName != "" {
		ns, name, ok := strings.Cut(*cmName, "/")
		if !ok || ns == "" || name == "" {
			return usageError{fmt.Sprintf("run: --configmap %q: want NAMESPACE/NAME", *cmName)}
		}
		if *nodeName == "" {
			return usageError{"run: --node-name (or NODE_NAME) is required with --configmap"}
		}
		if err := kd.Check(); err != nil {
			return usageError{"run: " + err.Error()}
		}
		client, err := kubeClient(*kubeconfig, kkv.apiHost)
		if err != nil {
			return err
		}
		kopts = &daemon.KubeOptions{Client: client, Namespace: ns, ConfigMap: name, NodeName: *nodeName, Defaults: kd, BGPSecret: *bgpSecret}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	return daemon.Run(ctx, daemon.Options{
		ConfigFile:   *cfg,
		StatusSocket: *sock,
		MetricsAddr:  metricsAddr,
		StateDir:     *stateDir,
		ProcSys:      *procSys,
		Version:      buildVersion(),
		Logger:       log,
		Reload:       reload,
		Kube:         kopts,
		TakeOver:     *takeOver,
	})
}

// listenAddr checks a HOST:PORT to listen on and returns it as net.Listen
// takes it. An IPv6 address may come without brackets before the port
// ("2001:db8::1:9742"): that is what "$(HOST_IP):9742" in a manifest gives
// on an IPv6 node, and with a port required it has no other reading.
func listenAddr(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		i := strings.LastIndexByte(s, ':')
		if a, aerr := netip.ParseAddr(s[:max(i, 0)]); i < 0 || aerr != nil || !a.Is6() {
			return "", fmt.Errorf("%q: want HOST:PORT, e.g. 127.0.0.1:9742 or [2001:db8::1]:9742", s)
		}
		host, port = s[:i], s[i+1:]
	}
	if strings.Contains(host, "$(") {
		return "", fmt.Errorf("%q: %s was not expanded: define that variable in the container's env, before the one that uses it", s, host)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("%q: port %q is not a number in 0-65535", s, port)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Zone() == "" {
		host = a.Unmap().String()
	}
	return net.JoinHostPort(host, port), nil
}

// kubeClient connects with the kubeconfig given, or as the pod's
// ServiceAccount, or with kubectl's kubeconfig ($KUBECONFIG, which may
// list several files, or ~/.kube/config). apiHost (kube-keepalived-vip's
// --apiserver-host), if set, is the server, with the credentials of the
// kubeconfig given or none, as kube-keepalived-vip did.
func kubeClient(kubeconfig, apiHost string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	switch {
	case apiHost != "":
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: apiHost}}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("configuring the client of API server %s: %w", apiHost, err)
		}
	case kubeconfig != "":
		if rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
			return nil, fmt.Errorf("reading kubeconfig %s: %w", kubeconfig, err)
		}
	default:
		if rc, err = rest.InClusterConfig(); err != nil {
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			var kerr error
			rc, kerr = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
			if kerr != nil {
				return nil, fmt.Errorf("not in a pod (%v), and no kubeconfig: %w", err, kerr)
			}
		}
	}
	rc.UserAgent = "keepvip/" + buildVersion()
	// Protobuf is cheaper to decode than JSON for the watches.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("making a Kubernetes client: %w", err)
	}
	return client, nil
}

func runValidate(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keepvip validate", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"validate: want exactly one FILE (a configuration file, or a manifest with the vip-configmap; - for stdin)"}
	}
	path := fs.Arg(0)
	var data []byte
	var err error
	if path == "-" {
		data, err = config.ReadLimited(os.Stdin, "from standard input")
	} else {
		data, err = config.ReadFile(path)
	}
	if err != nil {
		return err
	}
	cms, isManifest, err := configMaps(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !isManifest {
		c, err := config.ParseFile(data)
		if err != nil {
			msgs := strings.Split(err.Error(), "\n")
			return fmt.Errorf("%s: %d problem(s):\n  %s", path, len(msgs), strings.Join(msgs, "\n  "))
		}
		fmt.Fprintf(stdout, "%s: ok, %d VRRP instance(s), %d virtual server(s)\n", path, len(c.Instances), len(c.VirtualServers))
		return nil
	}
	if len(cms) == 0 {
		return fmt.Errorf("%s: a Kubernetes manifest without a ConfigMap", path)
	}
	var failed []string
	for _, cm := range cms {
		name := fmt.Sprintf("ConfigMap %s/%s", cm.Namespace, cm.Name)
		spec, problems := configmap.Parse(cm.Data, configmap.DefaultDefaults(), nil)
		if len(problems) > 0 {
			msgs := make([]string, len(problems))
			for i, p := range problems {
				msgs[i] = p.Error()
			}
			failed = append(failed, fmt.Sprintf("%s: %d problem(s):\n  %s", name, len(problems), strings.Join(msgs, "\n  ")))
			continue
		}
		fmt.Fprintf(stdout, "%s: %s: ok, %d VRRP instance(s), %d virtual server entr(ies)\n", path, name, len(spec.Instances), len(spec.VirtualServers))
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s: %s", path, strings.Join(failed, "\n"))
	}
	return nil
}

// configMaps reads the ConfigMaps of a (multi-document) manifest. It
// reports whether data is a manifest at all (its documents have a kind)
// rather than a configuration file.
func configMaps(data []byte) ([]corev1.ConfigMap, bool, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []corev1.ConfigMap
	manifest := false
	for i := 0; ; i++ {
		doc, err := r.Read()
		if err == io.EOF {
			return out, manifest, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("reading document %d: %w", i+1, err)
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil || meta.Kind == "" {
			continue
		}
		manifest = true
		if meta.Kind != "ConfigMap" {
			continue
		}
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal(doc, &cm); err != nil {
			return nil, true, fmt.Errorf("document %d: reading the ConfigMap: %w", i+1, err)
		}
		out = append(out, cm)
	}
}

func runStatus(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keepvip status", flag.ContinueOnError)
	sock := fs.String("socket", envOr("KEEPVIP_STATUS_SOCKET", defaultSocket), "status socket of the daemon (env KEEPVIP_STATUS_SOCKET)")
	out := fs.String("o", "table", "output: table, json or yaml")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := daemon.GetStatus(ctx, *sock)
	if err != nil {
		return err
	}
	return printStatus(stdout, s, *out, time.Now())
}
