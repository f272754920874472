package pgfront

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/routing"
)

// backendError is an ErrorResponse a backend sent during login or a
// proxy-internal step; it reaches the client unchanged.
type backendError struct {
	resp pgproto3.ErrorResponse
}

func (e *backendError) Error() string {
	return fmt.Sprintf("pgfront: backend error %s: %s", e.resp.Code, e.resp.Message)
}

func newBackendError(r *pgproto3.ErrorResponse) *backendError {
	c := *r
	c.UnknownFields = nil
	return &backendError{resp: c}
}

// replicaError: the local replica could not be reached or used for op.
type replicaError struct {
	op  string
	err error
}

func (e *replicaError) Error() string {
	return fmt.Sprintf("pgfront: could not %s on the local replica: %v", e.op, e.err)
}
func (e *replicaError) Unwrap() error { return e.err }

// backendEndedError: a backend ended the session's connection to it with
// a FATAL error (a shutdown, a terminated backend, a timeout). It is not
// relayed: the client's session with the proxy goes on.
type backendEndedError struct {
	target        string // "replica" or "hub"
	code, message string
}

func (e *backendEndedError) Error() string {
	return fmt.Sprintf("%s ended the connection: %s (SQLSTATE %s)", e.target, e.message, e.code)
}

// hubLostError: the hub connection broke while a request was in flight.
// Unknown means the request may have committed (08007).
type hubLostError struct {
	hub     string
	unknown bool
	err     error
}

func (e *hubLostError) Error() string {
	return fmt.Sprintf("pgfront: connection to hub %s lost: %v", e.hub, e.err)
}
func (e *hubLostError) Unwrap() error { return e.err }

// errPinnedStateLost: a pinned session's hub connection died between
// requests; the request was not sent anywhere.
var errPinnedStateLost = errors.New("the session's state on the hub is gone; the statement was not run")

// errSnapshotOnReplica refuses the first write of a REPEATABLE READ
// transaction that opened on the replica while the hub was unavailable:
// it cannot continue on the hub with the same snapshot. 40001 tells the
// client to retry the transaction, which then opens on the hub.
var errSnapshotOnReplica = errors.New("could not serialize access: this REPEATABLE READ transaction began on the local replica while the hub was unavailable, and its snapshot cannot move to the hub; retry the transaction")

// errorResponseFor is the one place a Go error becomes an ErrorResponse
// for the client. severity is ERROR for errors the session survives and
// FATAL for ones that end it.
// positionUnknownError refuses a read (consistency.on_timeout: error)
// when the position of the session's last write was lost with its hub
// connection and the hub cannot be asked for a newer one.
type positionUnknownError struct{ err error }

func (e *positionUnknownError) Error() string {
	return fmt.Sprintf("read-your-writes: the position of this session's last write was lost with its hub connection, and the hub cannot be asked for it now (%v)", e.err)
}

func (e *positionUnknownError) Unwrap() error { return e.err }

func errorResponseFor(err error, severity string) *pgproto3.ErrorResponse {
	mk := func(code, msg string) *pgproto3.ErrorResponse {
		return &pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity, Code: code, Message: msg}
	}
	// Before the backend and hub errors it may wrap: it refuses a read.
	var pu *positionUnknownError
	if errors.As(err, &pu) {
		return mk("40001", pu.Error())
	}
	var be *backendError
	if errors.As(err, &be) {
		r := be.resp
		return &r
	}
	if err == errSnapshotOnReplica {
		return mk("40001", err.Error())
	}
	// hubLostError first: it may wrap a HubUnavailableError.
	var hl *hubLostError
	if errors.As(err, &hl) {
		if hl.unknown {
			return mk("08007", fmt.Sprintf("connection to hub %s lost while the request was in flight: the outcome is unknown (it may have committed)", hl.hub))
		}
		if errors.Is(hl.err, errPinnedStateLost) {
			return mk("08006", fmt.Sprintf("connection to hub %s lost: %v", hl.hub, hl.err))
		}
		return mk("08006", fmt.Sprintf("connection to hub %s lost: the transaction on the hub is gone", hl.hub))
	}
	var hu *routing.HubUnavailableError
	if errors.As(err, &hu) {
		return mk("25006", fmt.Sprintf("cannot execute write: hub %s is unavailable (%s); this site is read-only until it returns", hu.Hub, hu.Reason))
	}
	var se *startupError
	if errors.As(err, &se) {
		return mk(se.Code, se.Message)
	}
	var re *replicaError
	if errors.As(err, &re) {
		return mk("08006", fmt.Sprintf("could not %s: local replica unreachable (%v)", re.op, re.err))
	}
	if routing.IsReplicaUnavailable(err) {
		return mk("08006", err.Error())
	}
	if routing.IsWaitTimeout(err) {
		return mk("40001", "read-your-writes: the local replica did not catch up in time: "+err.Error())
	}
	return mk("08006", err.Error())
}
