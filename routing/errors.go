package routing

import (
	"errors"
	"fmt"
)

// HubUnavailableError says no hub can take writes now. The fronts turn it
// into PostgreSQL 25006 or LDAP 52 at their edge; its text names the hub and
// says the site is read-only.
type HubUnavailableError struct {
	Protocol Protocol
	Hub      string // the unavailable hub endpoint(s)
	Reason   Reason
	Err      error // the last failure seen, if any
}

func (e *HubUnavailableError) Error() string {
	msg := fmt.Sprintf("%s hub %s unavailable (%s): this site is read-only", e.Protocol, e.Hub, e.Reason)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *HubUnavailableError) Unwrap() error { return e.Err }

// IsHubUnavailable reports whether err says no hub can take writes.
func IsHubUnavailable(err error) bool {
	var e *HubUnavailableError
	return errors.As(err, &e)
}

// ReplicaUnavailableError says the local replica cannot answer.
type ReplicaUnavailableError struct {
	Protocol Protocol
	Replica  string
	Reason   Reason
	Err      error
}

func (e *ReplicaUnavailableError) Error() string {
	msg := fmt.Sprintf("%s replica %s unavailable (%s)", e.Protocol, e.Replica, e.Reason)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *ReplicaUnavailableError) Unwrap() error { return e.Err }

// IsReplicaUnavailable reports whether err says the local replica cannot answer.
func IsReplicaUnavailable(err error) bool {
	var e *ReplicaUnavailableError
	return errors.As(err, &e)
}

// WaitError is returned by WaitFor when the context ended before the replica
// applied the position.
type WaitError struct {
	Protocol Protocol
	Want     Position
	Have     Position // the replica's position when the wait ended; may be nil
	Err      error    // the context's error
}

func (e *WaitError) Error() string {
	have := "unknown"
	if e.Have != nil {
		have = e.Have.String()
	}
	return fmt.Sprintf("%s replica has not applied %s (at %s): %v", e.Protocol, e.Want, have, e.Err)
}

func (e *WaitError) Unwrap() error { return e.Err }

// IsWaitTimeout reports whether err is a WaitFor that ended before the
// replica applied the position.
func IsWaitTimeout(err error) bool {
	var e *WaitError
	return errors.As(err, &e)
}
