package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klagg/klagg/internal/testkit"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// testPKI is a private CA with a server certificate for 127.0.0.1 and a
// client certificate, written as PEM files.
type testPKI struct {
	dir           string
	ca, cert, key string // client side files
	server        tls.Certificate
	pool          *x509.CertPool
	caCert        *x509.Certificate
	caKey         *ecdsa.PrivateKey
	serial        int64 // of the last certificate issued; the CA's is 1
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir(), serial: 1}
	var err error
	if p.caKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "klagg test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.caCert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.caCert)
	p.ca = p.write(t, "ca.pem", "CERTIFICATE", der)
	p.server = p.issue(t, "server", x509.ExtKeyUsageServerAuth)
	client := p.issue(t, "client", x509.ExtKeyUsageClientAuth)
	p.cert = p.write(t, "client.pem", "CERTIFICATE", client.Certificate[0])
	keyDER, err := x509.MarshalECPrivateKey(client.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	p.key = p.write(t, "client-key.pem", "EC PRIVATE KEY", keyDER)
	return p
}

func (p *testPKI) issue(t *testing.T, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (p *testPKI) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serverTLS requires and verifies a client certificate signed by the CA.
func (p *testPKI) serverTLS() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.server}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool, MinVersion: tls.VersionTLS12}
}

// TestSecureCluster runs gen, run and tail against a kfake cluster that
// requires TLS with a client certificate and SASL, and a registry behind
// https with basic auth, once per SASL mechanism. Passwords come from a
// file or the environment and must appear in no output, even at debug.
func TestSecureCluster(t *testing.T) {
	pki := newTestPKI(t)
	for _, tt := range []struct {
		mech, flag string
		fromFile   bool
	}{
		{"PLAIN", "plain", true},
		{"SCRAM-SHA-256", "scram-sha-256", false},
		{"SCRAM-SHA-512", "scram-sha-512", true},
	} {
		t.Run(tt.mech, func(t *testing.T) {
			const saslPass, regPass = "kafka-Secret-51", "registry-Secret-83"
			cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(2, "trades"),
				kfake.EnableSASL(), kfake.Superuser(tt.mech, "klagg", saslPass), kfake.TLS(pki.serverTLS()))
			reg := srfake.New(srfake.WithAuth("Basic " + base64.StdEncoding.EncodeToString([]byte("klagg:"+regPass))))
			defer reg.Close()
			https := httptest.NewUnstartedServer(reg.Handler())
			https.TLS = &tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12}
			https.StartTLS()
			defer https.Close()

			secure := []string{"--brokers", cluster.ListenAddrs()[0], "--tls-ca", pki.ca, "--tls-cert", pki.cert, "--tls-key", pki.key,
				"--sasl-mechanism", tt.flag, "--sasl-user", "klagg", "--registry-user", "klagg"}
			if tt.fromFile {
				dir := t.TempDir()
				sp, rp := filepath.Join(dir, "sasl"), filepath.Join(dir, "registry")
				if err := os.WriteFile(sp, []byte(saslPass+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(rp, []byte(regPass+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				secure = append(secure, "--sasl-password-file", sp, "--registry-password-file", rp)
			} else {
				t.Setenv(envSASLPassword, saslPass)
				t.Setenv(envRegistryPassword, regPass)
			}
			var stdout, stderr testkit.Buffer
			args := func(cmd string, extra ...string) []string { return append(append([]string{cmd}, secure...), extra...) }

			if code := run(t.Context(), args("gen", "--format", "avro", "--schema-registry", https.URL,
				"--symbols", "3", "--rate", "1000", "--duration", "100ms"), &stdout, &stderr); code != 0 {
				t.Fatalf("gen: exit %d: %s", code, stderr.String())
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, args("run", "--input-format", "avro", "--schema-registry", https.URL, "--metrics-addr", "",
					"--flush-interval", "50ms", "--log-level", "debug", "--log-format", "json"), &stdout, &stderr)
			}()
			tctx, tcancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer tcancel()
			var tailOut bytes.Buffer
			if code := run(tctx, args("tail", "--from-beginning", "--format", "json", "--max", "1"), &tailOut, &stderr); code != 0 {
				t.Fatalf("tail: exit %d: %s", code, stderr.String())
			}
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("run: exit %d: %s", code, stderr.String())
			}
			if !strings.Contains(tailOut.String(), `"symbol":"S00`) {
				t.Fatalf("tail printed no candle: %q", tailOut.String())
			}
			if !strings.Contains(stderr.String(), "kline schema registered") {
				t.Fatalf("run did not register the kline schema with basic auth: %s", stderr.String())
			}
			for _, out := range []string{stdout.String(), stderr.String(), tailOut.String()} {
				if strings.Contains(out, saslPass) || strings.Contains(out, regPass) {
					t.Fatalf("a password was printed:\n%s", out)
				}
			}
		})
	}
}

// TestSecureClusterRefusals: wrong or missing credentials end in a clear
// error and a non-zero exit, not a hang, and still print no secret.
func TestSecureClusterRefusals(t *testing.T) {
	pki := newTestPKI(t)
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "klagg", "right-password"), kfake.TLS(pki.serverTLS()))
	broker := cluster.ListenAddrs()[0]
	tlsArgs := []string{"--brokers", broker, "--tls-ca", pki.ca, "--tls-cert", pki.cert, "--tls-key", pki.key}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"wrong password", append([]string{"gen", "--sasl-mechanism", "scram-sha-256", "--sasl-user", "klagg", "--duration", "100ms"}, tlsArgs...),
			map[string]string{envSASLPassword: "wrong-password"}, 1, "check --brokers and the --tls-*/--sasl-* flags"},
		{"wrong password, run", append([]string{"run", "--sasl-mechanism", "scram-sha-256", "--sasl-user", "klagg", "--metrics-addr", ""}, tlsArgs...),
			map[string]string{envSASLPassword: "wrong-password"}, 1, "check --brokers and the --tls-*/--sasl-* flags"},
		{"no client certificate", []string{"gen", "--brokers", broker, "--tls-ca", pki.ca, "--sasl-mechanism", "scram-sha-256", "--sasl-user", "klagg", "--duration", "100ms"},
			map[string]string{envSASLPassword: "right-password"}, 1, "do not answer"},
		{"no password", []string{"run", "--sasl-mechanism", "plain", "--sasl-user", "u"}, nil, 2, "set KLAGG_SASL_PASSWORD or --sasl-password-file"},
		{"bad mechanism and half a key pair", []string{"tail", "--sasl-mechanism", "kerberos", "--sasl-user", "u", "--tls-cert", pki.cert},
			map[string]string{envSASLPassword: "x"}, 2, "--tls-cert and --tls-key go together"},
		{"missing CA file", []string{"run", "--tls-ca", "/nonexistent/ca.pem", "--registry-user", "r"},
			map[string]string{envRegistryPassword: "x"}, 2, "--tls-ca: open /nonexistent/ca.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			start := time.Now()
			code := run(ctx, tt.args, &stdout, &stderr)
			if ctx.Err() != nil {
				t.Fatalf("still running after %s: %s", time.Since(start), stderr.String())
			}
			if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, want %d with %q; stderr:\n%s", code, tt.code, tt.want, stderr.String())
			}
			if strings.Contains(stderr.String(), "right-password") || strings.Contains(stderr.String(), "wrong-password") {
				t.Fatalf("a password was printed: %s", stderr.String())
			}
		})
	}
	// Each problem of a command line is reported, not just the first.
	var stderr bytes.Buffer
	run(t.Context(), []string{"tail", "--sasl-mechanism", "kerberos", "--tls-cert", pki.cert}, io.Discard, &stderr)
	for _, w := range []string{`--sasl-mechanism "kerberos"`, "--sasl-user: needed", "no password", "--tls-key go together"} {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("stderr lacks %q: %s", w, stderr.String())
		}
	}
}

// TestRegistryRefuses: a registry that refuses the schema stops gen before
// it produces anything, and run before it joins the group.
func TestRegistryRefuses(t *testing.T) {
	cluster := testkit.Cluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "trades"))
	reg := srfake.New(srfake.WithAuth("Basic " + base64.StdEncoding.EncodeToString([]byte("someone:else"))))
	defer reg.Close()
	broker := cluster.ListenAddrs()[0]
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"gen", "--brokers", broker, "--format", "avro", "--schema-registry", reg.URL(), "--duration", "100ms"}, "register trade.avsc under \"trades-value\""},
		{[]string{"run", "--brokers", broker, "--schema-registry", reg.URL(), "--metrics-addr", ""}, "register the kline schema under"},
	} {
		var stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		code := run(ctx, tt.args, io.Discard, &stderr)
		cancel()
		if code != 1 || !strings.Contains(stderr.String(), tt.want) || !strings.Contains(stderr.String(), "Authorization") {
			t.Errorf("%s: exit %d, want 1 with %q and the registry's reason:\n%s", tt.args[0], code, tt.want, stderr.String())
		}
	}
	// Nothing was produced, no topic created.
	adm, err := kgo.NewClient(kgo.SeedBrokers(broker))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ends, err := kadm.NewClient(adm).ListEndOffsets(t.Context(), "trades")
	if err != nil {
		t.Fatal(err)
	}
	topics, err := kadm.NewClient(adm).ListTopics(t.Context())
	if err != nil || len(topics) != 1 {
		t.Errorf("topics %v (%v), want only trades", topics.Names(), err)
	}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset != 0 {
			t.Errorf("trades partition %d has %d records", o.Partition, o.Offset)
		}
	})
}
