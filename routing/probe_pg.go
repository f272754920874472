package routing

import (
	"context"
	"errors"
	"net"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// Probe queries. A hub candidate may be a standby (pg_current_wal_lsn()
// fails there with 55000), so its query picks the replay position then; the
// CASE is evaluated lazily since both functions are volatile.
const (
	pgHubProbe     = `SELECT pg_is_in_recovery(), (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text`
	pgReplicaProbe = `SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text`
)

// pgProber keeps one monitoring connection to a PostgreSQL endpoint.
type pgProber struct {
	cfg   *pgx.ConnConfig // nil when the settings could not be parsed; err says why
	err   error
	query string
	conn  *pgx.Conn
}

func newPGProber(s *Site, t Target, addr string) Prober {
	p := &pgProber{query: pgHubProbe}
	if t == TargetReplica {
		p.query = pgReplicaProbe
	}
	cfg, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		p.err = err
		return p
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.err = err
		return p
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		p.err = errors.New("bad port in " + addr)
		return p
	}
	cfg.Host, cfg.Port = host, uint16(n)
	sc := s.config()
	cfg.User, cfg.Password, cfg.Database = sc.User, sc.Password, sc.Database
	cfg.RuntimeParams["application_name"] = "spokeproxy-probe"
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cfg.DialFunc = s.DialContext
	if t == TargetHub && sc.HubTLS != nil {
		cfg.TLSConfig = s.tlsFor(addr)
	}
	p.cfg = cfg
	return p
}

func (p *pgProber) Probe(ctx context.Context) (ProbeResult, error) {
	if p.cfg == nil {
		return ProbeResult{}, p.err
	}
	if p.conn == nil {
		c, err := pgx.ConnectConfig(ctx, p.cfg)
		if err != nil {
			return ProbeResult{}, err
		}
		p.conn = c
	}
	var inRecovery bool
	var lsn *string
	if err := p.conn.QueryRow(ctx, p.query).Scan(&inRecovery, &lsn); err != nil {
		p.drop()
		return ProbeResult{}, err
	}
	res := ProbeResult{Writable: !inRecovery}
	if lsn != nil {
		l, err := ParseLSN(*lsn)
		if err != nil {
			p.drop()
			return ProbeResult{}, err
		}
		res.Position = l
	}
	return res, nil
}

// drop closes the connection without a goodbye: after a failure the link may
// be blackholed, and a Terminate message would wait for it.
func (p *pgProber) drop() {
	if p.conn == nil {
		return
	}
	p.conn.PgConn().Conn().Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.conn.Close(ctx)
	p.conn = nil
}

func (p *pgProber) Close() error {
	p.drop()
	return nil
}
