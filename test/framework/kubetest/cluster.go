// Package kubetest runs a real kube-apiserver backed by a real etcd for
// integration tests: by default no kubelet, no controllers, no scheduler,
// just the API with its authentication, RBAC, validation and storage; with
// Options.Nodes, the controller manager and the scheduler too, and what
// real kubelets need to join (test/framework/kubenodes runs those).
//
// The Kubernetes binaries are built from the nested module hack/kubebin
// (pinned Kubernetes version) and cached; etcd comes from PATH (Debian
// package etcd-server). Both servers can run inside an `ip netns`
// namespace, so that a test can put the API server on addresses a daemon
// under test manages.
//
//	c := kubetest.StartT(t, kubetest.Options{})
//	out, err := c.Kubectl(ctx, "apply", "-f", manifest)
//	kc, err := c.ServiceAccountKubeconfig(ctx, "ns", "sa", "")
package kubetest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options configure Start.
type Options struct {
	// Dir is a scratch directory for certificates, etcd data, kubeconfigs
	// and logs (etcd.log, kube-apiserver.log), e.g. t.TempDir(). Required.
	Dir string
	// BindAddress is where kube-apiserver listens and what it advertises;
	// default 127.0.0.1. The serving certificate includes it.
	BindAddress netip.Addr
	// NetNS, if set, names an `ip netns` namespace (/run/netns/NAME) in
	// which etcd, kube-apiserver and Kubectl run. etcd then listens on that
	// namespace's 127.0.0.1, whose lo must be up. RestConfig dials into
	// the namespace, so client-go in the test process works either way.
	NetNS string
	// Logf receives progress messages; default: discarded.
	Logf func(format string, args ...any)
	// Nodes, if set, names the kubelets that will join (see
	// test/framework/kubenodes): each gets a token (NodeKubeconfig), and
	// the API server runs as it does for real nodes — Node and RBAC
	// authorization, the NodeRestriction admission plugin, privileged
	// pods allowed, kubelets reached by InternalIP with a client
	// certificate (exec, logs) — with a controller manager and a
	// scheduler.
	Nodes []string
}

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	opts       Options
	bins       Bins
	pki        *pki
	etcdPort   int
	peerPort   int
	apiPort    int
	kubeconfig string

	mu        sync.Mutex
	etcd      *Process
	apiserver *Process
	kcm       *Process // kube-controller-manager, with Nodes
	scheduler *Process // kube-scheduler, with Nodes
	stopped   bool
}

const (
	etcdTimeout  = 30 * time.Second
	readyTimeout = 60 * time.Second
	// bindAttempts bounds the retries when a port we were given free is
	// taken by someone else before our child binds it.
	bindAttempts = 5
)

// Start builds or finds the binaries and starts etcd and kube-apiserver,
// returning once /readyz answers. ctx bounds only the start-up (a cold
// build included); the servers run until Stop, and are killed by the
// kernel if this process dies first. On error nothing is left running.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("starting kube test cluster: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("starting kube test cluster: %w", err)
	}
	opts.Dir = dir
	if !opts.BindAddress.IsValid() {
		opts.BindAddress = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.NetNS != "" {
		if _, err := os.Stat("/run/netns/" + opts.NetNS); err != nil {
			return nil, fmt.Errorf("starting kube test cluster in network namespace %q: %w", opts.NetNS, err)
		}
		if _, err := exec.LookPath("ip"); err != nil {
			return nil, fmt.Errorf("starting kube test cluster in network namespace %q: %w (Debian package iproute2)", opts.NetNS, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("starting kube test cluster: %w", err)
	}

	c := &Cluster{opts: opts}
	t0 := time.Now()
	if c.bins, err = binaries(ctx, opts.Logf); err != nil {
		return nil, err
	}
	if d := time.Since(t0); d > time.Second {
		opts.Logf("kube binaries ready in %s", d.Round(100*time.Millisecond))
	}
	if c.pki, err = writePKI(dir, opts.BindAddress, opts.Nodes); err != nil {
		return nil, fmt.Errorf("starting kube test cluster: generating certificates: %w", err)
	}
	if err := c.start(ctx); err != nil {
		_ = c.Stop()
		return nil, err
	}
	c.kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := c.writeKubeconfig(c.kubeconfig, c.URL(), "kubetest-admin", c.pki.adminToken); err != nil {
		_ = c.Stop()
		return nil, err
	}
	if len(opts.Nodes) > 0 {
		if err := c.startControllers(ctx); err != nil {
			_ = c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// startControllers lets the API server reach the kubelets (exec, logs,
// port-forward: system:kubelet-api-admin for its client certificate) and
// starts the controller manager and the scheduler.
func (c *Cluster) startControllers(ctx context.Context) error {
	if _, err := c.Kubectl(ctx, "create", "clusterrolebinding", "kubetest-apiserver-kubelet",
		"--clusterrole=system:kubelet-api-admin", "--user="+kubeletClientUser); err != nil {
		return fmt.Errorf("starting the controllers: %w", err)
	}
	d := c.opts.Dir
	kcmKC, schedKC := filepath.Join(d, "kube-controller-manager.kubeconfig"), filepath.Join(d, "kube-scheduler.kubeconfig")
	if err := errors.Join(
		c.writeKubeconfig(kcmKC, c.URL(), userControllerManager, c.pki.tokens[userControllerManager]),
		c.writeKubeconfig(schedKC, c.URL(), userScheduler, c.pki.tokens[userScheduler]),
	); err != nil {
		return fmt.Errorf("starting the controllers: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	c.kcm, err = startProc("kube-controller-manager", c.opts.NetNS, filepath.Join(d, "kube-controller-manager.log"), []string{
		c.bins.ControllerManager, "--kubeconfig=" + kcmKC, "--leader-elect=false", "--secure-port=0",
		"--controllers=*", "--use-service-account-credentials=true",
		"--service-account-private-key-file=" + c.pki.saKeyFile, "--root-ca-file=" + c.pki.caFile,
		// Its default is a directory under /usr/libexec, which it creates.
		"--flex-volume-plugin-dir=" + filepath.Join(d, "kcm-volume-plugins"),
	})
	if err != nil {
		return err
	}
	c.scheduler, err = startProc("kube-scheduler", c.opts.NetNS, filepath.Join(d, "kube-scheduler.log"), []string{
		c.bins.Scheduler, "--kubeconfig=" + schedKC, "--leader-elect=false", "--secure-port=0",
	})
	if err != nil {
		return err
	}
	c.opts.Logf("kube-controller-manager and kube-scheduler started")
	return nil
}

// NodeKubeconfig writes (once) and returns a kubeconfig for the kubelet of
// node name, one of Options.Nodes.
func (c *Cluster) NodeKubeconfig(name string) (string, error) {
	tok, ok := c.pki.tokens["system:node:"+name]
	if !ok {
		return "", fmt.Errorf("node %s: not one of the cluster's nodes %v", name, c.opts.Nodes)
	}
	path := filepath.Join(c.opts.Dir, "node-"+name+".kubeconfig")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	return path, c.writeKubeconfig(path, c.URL(), "system:node:"+name, tok)
}

// CAFile is the path of the CA certificate (PEM): kubelets verify clients
// with it.
func (c *Cluster) CAFile() string { return c.pki.caFile }

// Bins are the binaries the cluster runs.
func (c *Cluster) Bins() Bins { return c.bins }

func (c *Cluster) start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	for attempt := 1; ; attempt++ {
		if err = c.startEtcdLocked(ctx); err == nil || !errors.Is(err, errAddrInUse) || attempt == bindAttempts {
			break
		}
		c.opts.Logf("etcd: %v; retrying with other ports", err)
	}
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		if c.apiPort, err = c.freePort(c.opts.BindAddress.String()); err != nil {
			return fmt.Errorf("starting kube-apiserver: %w", err)
		}
		if err = c.startAPIServerLocked(ctx); err == nil || !errors.Is(err, errAddrInUse) || attempt == bindAttempts {
			return err
		}
		c.opts.Logf("kube-apiserver: %v; retrying with another port", err)
	}
}

func (c *Cluster) freePort(addr string) (int, error) {
	p, err := freePorts(c.opts.NetNS, addr, 1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

var errAddrInUse = errors.New("address already in use")

func (c *Cluster) startEtcdLocked(ctx context.Context) error {
	ports, err := freePorts(c.opts.NetNS, "127.0.0.1", 2)
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	c.etcdPort, c.peerPort = ports[0], ports[1]
	// A failed attempt may have initialised the data directory with other
	// URLs; it holds nothing yet.
	data := filepath.Join(c.opts.Dir, "etcd")
	if err := os.RemoveAll(data); err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	client := "http://127.0.0.1:" + strconv.Itoa(c.etcdPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(c.peerPort)
	argv := []string{c.bins.Etcd,
		"--name=kubetest",
		"--data-dir=" + data,
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=kubetest=" + peer,
		"--initial-cluster-state=new",
		"--logger=zap", "--log-outputs=stderr", "--log-level=warn",
	}
	t0 := time.Now()
	p, err := startProc("etcd", c.opts.NetNS, filepath.Join(c.opts.Dir, "etcd.log"), argv)
	if err != nil {
		return err
	}
	c.etcd = p
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer(c.opts.NetNS)}, Timeout: 2 * time.Second}
	err = waitUntil(ctx, etcdTimeout, p, func(ctx context.Context) error {
		body, err := get(ctx, hc, client+"/health", "")
		if err == nil && !strings.Contains(body, `"true"`) {
			err = fmt.Errorf("unhealthy: %s", body)
		}
		return err
	})
	if err != nil {
		_ = p.Stop()
		c.etcd = nil
		return fmt.Errorf("starting etcd on %s: %w", client, err)
	}
	c.opts.Logf("etcd ready on %s in %s (log %s)", client, time.Since(t0).Round(time.Millisecond), p.logPath)
	return nil
}

func (c *Cluster) startAPIServerLocked(ctx context.Context) error {
	d := c.opts.Dir
	argv := []string{c.bins.APIServer,
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(c.etcdPort),
		"--bind-address=" + c.opts.BindAddress.String(),
		"--advertise-address=" + c.opts.BindAddress.String(),
		"--secure-port=" + strconv.Itoa(c.apiPort),
		// Only used when no certificate is given, but its default is
		// /var/run/kubernetes: keep every write inside Dir.
		"--cert-dir=" + filepath.Join(d, "apiserver-certs"),
		"--tls-cert-file=" + c.pki.certFile,
		"--tls-private-key-file=" + c.pki.keyFile,
		"--client-ca-file=" + c.pki.caFile,
		"--token-auth-file=" + c.pki.tokenFile,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.pki.saKeyFile,
		"--service-account-signing-key-file=" + c.pki.saKeyFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		// No kubelets or endpoints to reconcile: without this the
		// apiserver keeps rewriting the kubernetes Service endpoints.
		"--endpoint-reconciler-type=none",
		// Priority and fairness adds controllers and start-up work that
		// a single-user test server does not need.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	if len(c.opts.Nodes) == 0 {
		argv = append(argv, "--authorization-mode=RBAC")
	} else {
		argv = append(argv, "--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--kubelet-client-certificate="+c.pki.kubeletClientCert,
			"--kubelet-client-key="+c.pki.kubeletClientKey,
			// A node's Hostname address is this machine's name, the same
			// on every node.
			"--kubelet-preferred-address-types=InternalIP")
	}
	t0 := time.Now()
	p, err := startProc("kube-apiserver", c.opts.NetNS, filepath.Join(d, "kube-apiserver.log"), argv)
	if err != nil {
		return err
	}
	c.apiserver = p
	hc, err := c.httpClient()
	if err != nil {
		return err
	}
	err = waitUntil(ctx, readyTimeout, p, func(ctx context.Context) error {
		_, err := get(ctx, hc, c.URL()+"/readyz", c.pki.adminToken)
		return err
	})
	if err == nil && c.etcd.Exited() {
		// Our etcd died (lost its port?) while the apiserver came up.
		err = fmt.Errorf("etcd exited (%v):\n%s", c.etcd.err, c.etcd.LogTail())
	}
	if err != nil {
		_ = p.Stop()
		c.apiserver = nil
		return fmt.Errorf("starting kube-apiserver on %s: %w", c.URL(), err)
	}
	c.opts.Logf("kube-apiserver ready on %s in %s (log %s)", c.URL(), time.Since(t0).Round(time.Millisecond), p.logPath)
	return nil
}

// httpClient verifies the server with our CA and dials into NetNS.
func (c *Cluster) httpClient() (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.pki.caPEM) {
		return nil, errors.New("loading the test CA")
	}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:       dialer(c.opts.NetNS),
			TLSClientConfig:   &tls.Config{RootCAs: pool},
			DisableKeepAlives: true,
		},
		Timeout: 5 * time.Second,
	}, nil
}

func get(ctx context.Context, hc *http.Client, url, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

// waitUntil polls check until it succeeds, p exits, ctx ends or timeout
// passes. Errors carry the last check error and the tail of p's log, which
// is where the reason a server did not come up is.
func waitUntil(ctx context.Context, timeout time.Duration, p *Process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if p.Exited() {
			tail := p.LogTail()
			err := fmt.Errorf("%s exited (%v); log %s:\n%s", p.name, p.err, p.logPath, tail)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errAddrInUse, err)
			}
			return err
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s (%v; last check: %v); log %s:\n%s",
				timeout, context.Cause(ctx), last, p.logPath, p.LogTail())
		case <-p.done:
		case <-tick.C:
		}
	}
}

// URL is the API server's address, e.g. https://127.0.0.1:41234.
func (c *Cluster) URL() string {
	return "https://" + netip.AddrPortFrom(c.opts.BindAddress, uint16(c.apiPort)).String()
}

// CA is the PEM certificate of the CA that signed the serving certificate.
func (c *Cluster) CA() []byte {
	return append([]byte(nil), c.pki.caPEM...)
}

// AdminKubeconfig is the path of a kubeconfig for a system:masters user
// (token auth, CA embedded).
func (c *Cluster) AdminKubeconfig() string { return c.kubeconfig }

// RestConfig is a new admin client configuration. With Options.NetNS its
// connections are made inside that namespace.
func (c *Cluster) RestConfig() *rest.Config {
	cfg := &rest.Config{
		Host:            c.URL(),
		BearerToken:     c.pki.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CA()},
		// Tests create objects in bursts; the client-side default (5 qps)
		// would only slow them down.
		QPS:   1000,
		Burst: 1000,
	}
	if c.opts.NetNS != "" {
		cfg.Dial = dialer(c.opts.NetNS)
	}
	return cfg
}

// Kubectl runs the built kubectl as admin (inside NetNS if set) and
// returns its combined output; on failure the error includes the output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	argv := netnsCommand(c.opts.NetNS, append([]string{c.bins.Kubectl,
		"--kubeconfig=" + c.kubeconfig,
		// Discovery cache: default ~/.kube/cache, keep it in Dir.
		"--cache-dir=" + filepath.Join(c.opts.Dir, "kubectl-cache"),
	}, args...)...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := startChild(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return []byte(out.String()), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return []byte(out.String()), nil
}

// ServiceAccountKubeconfig writes a kubeconfig that authenticates as the
// ServiceAccount namespace/name with a one-hour token from the TokenRequest
// API, so a program run with it has exactly that account's RBAC. server
// defaults to URL(). The ServiceAccount must exist.
func (c *Cluster) ServiceAccountKubeconfig(ctx context.Context, namespace, name, server string) (string, error) {
	out, err := c.Kubectl(ctx, "create", "token", name, "-n", namespace, "--duration=1h")
	if err != nil {
		return "", fmt.Errorf("creating a token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	token := strings.TrimSpace(string(out))
	if token == "" || strings.ContainsAny(token, " \n") {
		return "", fmt.Errorf("creating a token for serviceaccount %s/%s: unexpected output %q", namespace, name, out)
	}
	if server == "" {
		server = c.URL()
	}
	path := filepath.Join(c.opts.Dir, fmt.Sprintf("sa-%s-%s.kubeconfig", namespace, name))
	user := "system:serviceaccount:" + namespace + ":" + name
	if err := c.writeKubeconfig(path, server, user, token); err != nil {
		return "", err
	}
	return path, nil
}

func (c *Cluster) writeKubeconfig(path, server, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: c.CA()}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// StopAPIServer kills kube-apiserver and leaves etcd running, so a test
// can check what happens while the API is down.
func (c *Cluster) StopAPIServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiserver == nil {
		return nil
	}
	err := c.apiserver.Stop()
	c.apiserver = nil
	if err != nil {
		return fmt.Errorf("stopping kube-apiserver: %w", err)
	}
	c.opts.Logf("kube-apiserver stopped")
	return nil
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, on the
// same address and port and with the same etcd, so stored objects, tokens
// and kubeconfigs stay valid. It waits for /readyz.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.stopped:
		return errors.New("starting kube-apiserver: the cluster is stopped")
	case c.apiserver != nil:
		return errors.New("starting kube-apiserver: already running")
	case c.etcd == nil || c.etcd.Exited():
		return errors.New("starting kube-apiserver: etcd is not running")
	}
	return c.startAPIServerLocked(ctx)
}

// Stop kills the controllers, kube-apiserver and etcd and waits for them
// to exit. It may be called more than once. Files stay in Dir, which
// belongs to the caller.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	var errs []error
	for _, p := range []**Process{&c.scheduler, &c.kcm, &c.apiserver, &c.etcd} {
		if *p == nil {
			continue
		}
		errs = append(errs, (*p).Stop())
		*p = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping kube test cluster: %w", err)
	}
	return nil
}

// LogFiles are the paths of etcd's and kube-apiserver's logs.
func (c *Cluster) LogFiles() (etcd, apiserver string) {
	return filepath.Join(c.opts.Dir, "etcd.log"), filepath.Join(c.opts.Dir, "kube-apiserver.log")
}

// Retarget writes to dst the kubeconfig src with its server replaced, for
// a client that reaches the API server at another address (a VM's user
// network, a NAT). The certificate is still checked, against serverName:
// "localhost", or an address the serving certificate has.
func Retarget(src, dst, server, serverName string) error {
	cfg, err := clientcmd.LoadFromFile(src)
	if err != nil {
		return fmt.Errorf("reading kubeconfig %s: %w", src, err)
	}
	for _, cl := range cfg.Clusters {
		cl.Server, cl.TLSServerName = server, serverName
	}
	if err := clientcmd.WriteToFile(*cfg, dst); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", dst, err)
	}
	return nil
}
