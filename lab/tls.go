package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnableHubPGTLS turns TLS on at the hub primary with the given server
// certificate and key (PEM): it writes them into the hub's data directory
// (owned by the postgres user, key mode 0600), sets ssl, ssl_cert_file and
// ssl_key_file with ALTER SYSTEM (kept across restarts, not replicated),
// reloads, and returns once the hub serves a TLS session with this very
// certificate over TCP. Files PostgreSQL cannot load leave its previous TLS
// setup in place: the error then comes at ctx's end (10 s at most) and
// carries the hub log's tail. Clients that do not ask for TLS are served as
// before.
func (l *Lab) EnableHubPGTLS(ctx context.Context, certPEM, keyPEM []byte) error {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return errors.New("lab: hub TLS: certPEM holds no PEM certificate")
	}
	want := block.Bytes
	return l.control(func() error {
		c := l.hubPG
		certPath := filepath.Join(c.dataDir, "lab-server.crt")
		keyPath := filepath.Join(c.dataDir, "lab-server.key")
		for path, data := range map[string][]byte{certPath: certPEM, keyPath: keyPEM} {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				return fmt.Errorf("lab: hub TLS: %w", err)
			}
			if err := l.as.chown(path); err != nil {
				return fmt.Errorf("lab: hub TLS: %w", err)
			}
		}
		conn, err := pgx.Connect(ctx, l.superDSN(c, "postgres"))
		if err != nil {
			return fmt.Errorf("lab: hub TLS: %w", err)
		}
		defer conn.Close(context.Background())
		// ALTER SYSTEM takes no parameters; the paths are the lab's own.
		for _, q := range []string{
			"ALTER SYSTEM SET ssl_cert_file = '" + certPath + "'",
			"ALTER SYSTEM SET ssl_key_file = '" + keyPath + "'",
			"ALTER SYSTEM SET ssl = on",
			"SELECT pg_reload_conf()",
		} {
			if _, err := conn.Exec(ctx, q); err != nil {
				return fmt.Errorf("lab: hub TLS: %s: %w", q, err)
			}
		}
		// The postmaster reloads asynchronously: wait until a TLS session
		// with this very certificate is served. A reload that cannot load
		// the files keeps the previous TLS setup and says why in the hub's
		// log, which the error carries.
		return waitFor(ctx, c.proc, "hub PostgreSQL serving TLS with the given certificate", 10*time.Second, func(ctx context.Context) error {
			cfg, err := pgx.ParseConfig(appDSN(c.addr()) + "?sslmode=disable")
			if err != nil {
				return err
			}
			// Any certificate completes the handshake (a refused one would
			// fill the hub's log with alerts and hide its reason); which one
			// was served is compared after.
			cfg.TLSConfig = &tls.Config{InsecureSkipVerify: true}
			tc, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				return err
			}
			defer tc.Close(context.Background())
			tlsConn, ok := tc.PgConn().Conn().(*tls.Conn)
			if !ok {
				return errors.New("connection without TLS")
			}
			if peer := tlsConn.ConnectionState().PeerCertificates; len(peer) == 0 || !bytes.Equal(peer[0].Raw, want) {
				return errors.New("the hub serves another certificate")
			}
			var ssl bool
			if err := tc.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
				return err
			}
			if !ssl {
				return errors.New("connection without TLS")
			}
			return nil
		})
	})
}
