package kubetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// pki is what kube-apiserver needs to serve TLS and sign tokens, as files
// in the scratch directory.
type pki struct {
	caPEM      []byte
	caFile     string // CA certificate: clients verify the server with it
	certFile   string // serving certificate, signed by the CA
	keyFile    string
	saKeyFile  string // service-account token signing key (private; the public half is derived)
	tokenFile  string // static tokens: the admin token
	adminToken string
	// With nodes (Options.Nodes): a client certificate for the API
	// server's calls to kubelets, and tokens for the nodes (by name), the
	// controller manager and the scheduler.
	kubeletClientCert, kubeletClientKey string
	tokens                              map[string]string
}

// Users of the static tokens besides the admin.
const (
	userControllerManager = "system:kube-controller-manager"
	userScheduler         = "system:kube-scheduler"
	kubeletClientUser     = "kube-apiserver-kubelet-client"
)

// writePKI generates a throwaway CA, a serving certificate for bind and
// the usual in-cluster names, a service-account signing key and an admin
// token, all ECDSA P-256 (fast to generate, accepted everywhere); with
// nodes, also what real nodes need (see pki).
func writePKI(dir string, bind netip.Addr, nodes []string) (*pki, error) {
	p := &pki{
		caFile:    filepath.Join(dir, "ca.crt"),
		certFile:  filepath.Join(dir, "apiserver.crt"),
		keyFile:   filepath.Join(dir, "apiserver.key"),
		saKeyFile: filepath.Join(dir, "sa.key"),
		tokenFile: filepath.Join(dir, "tokens.csv"),
	}
	now := time.Now()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kubetest-ca"},
		NotBefore:             now.Add(-time.Hour), // backdated: certificate times have one-second granularity
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("creating the CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)}
	if bind.IsValid() && !bind.IsUnspecified() {
		ips = append(ips, net.IP(bind.AsSlice()))
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  ips,
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("creating the serving certificate: %w", err)
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	token := func() (string, error) {
		tok := make([]byte, 24)
		_, err := rand.Read(tok)
		return hex.EncodeToString(tok), err
	}
	if p.adminToken, err = token(); err != nil {
		return nil, err
	}
	// token,user,uid,"groups": system:masters bypasses RBAC.
	tokens := fmt.Appendf(nil, "%s,kubetest-admin,kubetest-admin,\"system:masters\"\n", p.adminToken)
	var clientCertPEM, clientKeyPEM []byte
	if len(nodes) > 0 {
		p.tokens = map[string]string{}
		users := [][2]string{{userControllerManager, ""}, {userScheduler, ""}}
		for _, n := range nodes {
			// The Node authorizer takes a node by its user name and group.
			users = append(users, [2]string{"system:node:" + n, "system:nodes"})
		}
		for _, u := range users {
			t, err := token()
			if err != nil {
				return nil, err
			}
			p.tokens[u[0]] = t
			tokens = fmt.Appendf(tokens, "%s,%s,%s,%q\n", t, u[0], u[0], u[1])
		}
		ck, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		cder, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: kubeletClientUser},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(7 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, ca, ck.Public(), caKey)
		if err != nil {
			return nil, fmt.Errorf("creating the kubelet client certificate: %w", err)
		}
		p.kubeletClientCert, p.kubeletClientKey = filepath.Join(dir, "kubelet-client.crt"), filepath.Join(dir, "kubelet-client.key")
		clientCertPEM, clientKeyPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cder}), mustKeyPEM(ck)
	}

	files := []struct {
		path string
		data []byte
	}{
		{p.caFile, p.caPEM},
		{p.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})},
		{p.keyFile, mustKeyPEM(key)},
		{p.saKeyFile, mustKeyPEM(saKey)},
		{p.tokenFile, tokens},
	}
	if len(nodes) > 0 {
		files = append(files, []struct {
			path string
			data []byte
		}{{p.kubeletClientCert, clientCertPEM}, {p.kubeletClientKey, clientKeyPEM}}...)
	}
	for _, f := range files {
		if f.data == nil {
			return nil, fmt.Errorf("encoding %s", f.path)
		}
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// mustKeyPEM encodes a private key as SEC 1 ("EC PRIVATE KEY") PEM; nil
// on failure (which cannot happen for a freshly generated key), checked by
// the caller. Not PKCS#8: kube-apiserver reads the public half of the
// service-account key from this file, and its public-key reader only
// understands SEC 1 for ECDSA.
func mustKeyPEM(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}
