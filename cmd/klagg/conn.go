package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/twmb/franz-go/pkg/sr"
)

// connFlags are how run, gen and tail reach a secured cluster: TLS (with a
// private CA and a client certificate) and SASL to the brokers, basic auth
// to the schema registry.
//
// Passwords never come from a flag, where ps and shell history would show
// them: they come from KLAGG_SASL_PASSWORD / KLAGG_REGISTRY_PASSWORD or
// from a file (a mounted secret). Nothing here is ever logged.
type connFlags struct {
	tls           bool
	tlsCA         string
	tlsCert       string
	tlsKey        string
	tlsServerName string

	saslMechanism    string
	saslUser         string
	saslPasswordFile string

	registryUser         string
	registryPasswordFile string
}

// Environment variables holding secrets directly (the *-file flags read them
// from a file instead).
const (
	envSASLPassword     = "KLAGG_SASL_PASSWORD"
	envRegistryPassword = "KLAGG_REGISTRY_PASSWORD"
)

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&c.tls, "tls", false, "connect to the brokers with TLS (implied by --tls-ca and --tls-cert)")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "PEM file of the CA that signed the brokers' and the registry's certificates (default: the system's)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM file of the client certificate, for brokers that require one (with --tls-key)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM file of the client certificate's private key")
	fs.StringVar(&c.tlsServerName, "tls-server-name", "", "name to verify the brokers' certificates against (default: the host dialled)")
	fs.StringVar(&c.saslMechanism, "sasl-mechanism", "", "SASL to the brokers: plain, scram-sha-256 or scram-sha-512 (default: none)")
	fs.StringVar(&c.saslUser, "sasl-user", "", "SASL user name")
	fs.StringVar(&c.saslPasswordFile, "sasl-password-file", "", "file holding the SASL password (or set "+envSASLPassword+")")
	fs.StringVar(&c.registryUser, "registry-user", "", "schema registry basic-auth user")
	fs.StringVar(&c.registryPasswordFile, "registry-password-file", "", "file holding the registry password (or set "+envRegistryPassword+")")
}

// conn is what connFlags resolve to.
type conn struct {
	kgo []kgo.Opt
	sr  []sr.ClientOpt
}

// resolve reads the files and secrets and reports every problem at once.
// Errors name the flag or variable, never a secret.
func (c *connFlags) resolve(getenv func(string) string) (conn, error) {
	var out conn
	var errs []error
	var tc *tls.Config
	if c.tls || c.tlsCA != "" || c.tlsCert != "" || c.tlsKey != "" || c.tlsServerName != "" {
		tc = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.tlsServerName}
		if c.tlsCA != "" {
			pem, err := os.ReadFile(c.tlsCA)
			if err != nil {
				errs = append(errs, fmt.Errorf("--tls-ca: %w", err))
			} else {
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(pem) {
					errs = append(errs, fmt.Errorf("--tls-ca %s: no PEM certificate in it", c.tlsCA))
				}
				tc.RootCAs = pool
			}
		}
		switch {
		case (c.tlsCert == "") != (c.tlsKey == ""):
			errs = append(errs, errors.New("--tls-cert and --tls-key go together: give both or neither"))
		case c.tlsCert != "":
			cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
			if err != nil {
				errs = append(errs, fmt.Errorf("--tls-cert/--tls-key: %w", err))
			} else {
				tc.Certificates = []tls.Certificate{cert}
			}
		}
		out.kgo = append(out.kgo, kgo.DialTLSConfig(tc))
	}

	if c.saslMechanism != "" || c.saslUser != "" || c.saslPasswordFile != "" {
		pass, err := secret("--sasl-password-file", c.saslPasswordFile, envSASLPassword, getenv)
		if err != nil {
			errs = append(errs, err)
		}
		if c.saslUser == "" {
			errs = append(errs, errors.New("--sasl-user: needed with SASL"))
		}
		var mech sasl.Mechanism
		switch strings.ToLower(c.saslMechanism) {
		case "plain":
			mech = plain.Auth{User: c.saslUser, Pass: pass}.AsMechanism()
		case "scram-sha-256":
			mech = scram.Auth{User: c.saslUser, Pass: pass}.AsSha256Mechanism()
		case "scram-sha-512":
			mech = scram.Auth{User: c.saslUser, Pass: pass}.AsSha512Mechanism()
		default:
			errs = append(errs, fmt.Errorf("--sasl-mechanism %q: want plain, scram-sha-256 or scram-sha-512", c.saslMechanism))
		}
		if mech != nil {
			out.kgo = append(out.kgo, kgo.SASL(mech))
		}
	}

	if c.registryUser != "" || c.registryPasswordFile != "" {
		pass, err := secret("--registry-password-file", c.registryPasswordFile, envRegistryPassword, getenv)
		if err != nil {
			errs = append(errs, err)
		}
		if c.registryUser == "" {
			errs = append(errs, errors.New("--registry-user: needed with a registry password"))
		}
		out.sr = append(out.sr, sr.BasicAuth(c.registryUser, pass))
	}
	if tc != nil && (tc.RootCAs != nil || tc.Certificates != nil) {
		// A registry behind https is usually signed by the same private CA.
		rc := tc.Clone()
		rc.ServerName = ""
		out.sr = append(out.sr, sr.DialTLSConfig(rc))
	}
	return out, errors.Join(errs...)
}

// secret reads a password from file, else from the environment variable.
func secret(fileFlag, file, env string, getenv func(string) string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", fileFlag, err)
		}
		// Secrets mounted from files usually end in a newline.
		if p := strings.TrimRight(string(b), "\r\n"); p != "" {
			return p, nil
		}
		return "", fmt.Errorf("%s %s: empty", fileFlag, file)
	}
	if p := getenv(env); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("no password: set %s or %s", env, fileFlag)
}

// connectTimeout bounds how long a command waits for the brokers to answer
// before it says so.
const connectTimeout = 10 * time.Second

// reach checks that the brokers answer, so that a wrong address, TLS
// setting or password fails within connectTimeout with a hint, instead of
// a produce or fetch retrying forever.
func reach(ctx context.Context, cl *kgo.Client, brokers string) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		return fmt.Errorf("brokers %s do not answer within %s: %w (check --brokers and the --tls-*/--sasl-* flags)", brokers, connectTimeout, err)
	}
	return nil
}

// errNoTopic is wrapped by topicExists for a topic that does not exist.
var errNoTopic = errors.New("does not exist")

// topicExists says at once, rather than waiting for metadata forever, when
// topic is missing.
func topicExists(ctx context.Context, cl *kgo.Client, topic, flagName string) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	topics, err := kadm.NewClient(cl).ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("describe topic %q: %w", topic, err)
	}
	if d, ok := topics[topic]; !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
		return fmt.Errorf("topic %q %w (check %s)", topic, errNoTopic, flagName)
	} else if d.Err != nil {
		return fmt.Errorf("describe topic %q: %w", topic, d.Err)
	}
	return nil
}
