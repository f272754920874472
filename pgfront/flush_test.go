package pgfront

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spokeproxy/spokeproxy/lab"
)

// TestLabPGFlushWithoutSync: a client that sends Flush and waits (pgx's
// pipeline with SendFlushRequest, libpq's PQsendFlushRequest) gets its
// answers before the Sync; a read flushed first runs on the standby and a
// write flushed later in the same batch runs on the hub; an error skips
// the rest of the batch; the session's next read sees the write.
func TestLabPGFlushWithoutSync(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	c := f.connect(t, nil)
	pc := c.PgConn()

	// Every wait is bounded: without Flush support GetResults would hang.
	results := func(t *testing.T, pl *pgconn.Pipeline) any {
		t.Helper()
		got, err := pl.GetResults()
		if err != nil {
			t.Fatalf("GetResults: %v", err)
		}
		return got
	}
	succeeded := func(t *testing.T, pl *pgconn.Pipeline, what string) {
		t.Helper()
		rr, ok := results(t, pl).(*pgconn.ResultReader)
		if !ok {
			t.Fatalf("no result for %s", what)
		}
		if _, err := rr.Close(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	rows := func(t *testing.T, got any) [][][]byte {
		t.Helper()
		rr, ok := got.(*pgconn.ResultReader)
		if !ok {
			t.Fatalf("got %T, want a result", got)
		}
		res := rr.Read()
		if res.Err != nil {
			t.Fatalf("result: %v", res.Err)
		}
		return res.Rows
	}

	body := fmt.Sprintf("flushed %d", time.Now().UnixNano())
	t.Run("read then write in one batch", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pl := pc.StartPipeline(ctx)
		pl.SendQueryParams("SELECT pg_is_in_recovery()", nil, nil, nil, nil)
		pl.SendFlushRequest()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		if r := rows(t, results(t, pl)); len(r) != 1 || string(r[0][0]) != "t" {
			t.Fatalf("flushed read: rows %q, want one row 't' (run on the standby)", r)
		}
		pl.SendQueryParams("INSERT INTO notes (account_id, body) VALUES (1, $1) RETURNING pg_is_in_recovery()", [][]byte{[]byte(body)}, nil, nil, nil)
		pl.SendFlushRequest()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		if r := rows(t, results(t, pl)); len(r) != 1 || string(r[0][0]) != "f" {
			t.Fatalf("flushed write: rows %q, want one row 'f' (run on the hub)", r)
		}
		pl.SendPipelineSync()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, ok := results(t, pl).(*pgconn.PipelineSync); !ok {
			t.Fatal("no PipelineSync after the batch's Sync")
		}
		if err := pl.Close(); err != nil {
			t.Fatalf("pipeline close: %v", err)
		}
		var n int
		var standby bool
		if err := c.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM notes WHERE body = $1", body).Scan(&n, &standby); err != nil {
			t.Fatal(err)
		}
		if n != 1 || !standby {
			t.Fatalf("read after the flushed write: count %d on standby %v, want 1 on the standby", n, standby)
		}
	})

	// The write comes with the Sync rather than behind a Flush of its own;
	// the flushed read before it set a setting the write must see.
	t.Run("flushed set_config, then a write with the Sync", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pl := pc.StartPipeline(ctx)
		pl.SendQueryParams("SELECT set_config('app.tenant', $1, false), pg_is_in_recovery()", [][]byte{[]byte("flushed-tenant")}, nil, nil, nil)
		pl.SendFlushRequest()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		if r := rows(t, results(t, pl)); len(r) != 1 || string(r[0][1]) != "t" {
			t.Fatalf("flushed set_config: rows %q, want it run on the standby", r)
		}
		pl.SendQueryParams("INSERT INTO notes (account_id, body) VALUES (1, current_setting('app.tenant')) RETURNING body, pg_is_in_recovery()", nil, nil, nil, nil)
		pl.SendPipelineSync()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		if r := rows(t, results(t, pl)); len(r) != 1 || string(r[0][0]) != "flushed-tenant" || string(r[0][1]) != "f" {
			t.Fatalf("write sent with the Sync: rows %q, want the tenant set by the flushed read, on the hub", r)
		}
		if _, ok := results(t, pl).(*pgconn.PipelineSync); !ok {
			t.Fatal("no PipelineSync after the batch's Sync")
		}
		if err := pl.Close(); err != nil {
			t.Fatalf("pipeline close: %v", err)
		}
	})

	// A hub transaction whose COMMIT comes with the Sync after a flushed
	// write: the unit learns the commit's position, so the session's next
	// read on the standby (replay held back until just after it asks)
	// waits for the write.
	t.Run("a COMMIT with the Sync after a flushed write", func(t *testing.T) {
		ctx := ctxT(t)
		replay := newReplayPause(t, l)
		mustExec(ctx, t, c, "BEGIN", "INSERT INTO notes (account_id, body) VALUES (1, 'opens the hub transaction')")
		body := fmt.Sprintf("flushed, committed with the Sync %d", time.Now().UnixNano())
		replay.pause(ctx, t)
		pl := pc.StartPipeline(ctx)
		pl.SendQueryParams("INSERT INTO notes (account_id, body) VALUES (1, $1)", [][]byte{[]byte(body)}, nil, nil, nil)
		pl.SendFlushRequest()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		succeeded(t, pl, "the flushed INSERT")
		pl.SendQueryParams("COMMIT", nil, nil, nil, nil)
		pl.SendPipelineSync()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		succeeded(t, pl, "the COMMIT")
		if _, ok := results(t, pl).(*pgconn.PipelineSync); !ok {
			t.Fatal("no PipelineSync after the batch's Sync")
		}
		if err := pl.Close(); err != nil {
			t.Fatalf("pipeline close: %v", err)
		}
		replay.resumeAfter(300 * time.Millisecond)
		var n int
		var standby bool
		if err := c.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM notes WHERE body = $1", body).Scan(&n, &standby); err != nil {
			t.Fatal(err)
		}
		replay.wait()
		if n != 1 {
			t.Fatalf("read after the COMMIT: count %d (standby %v), want 1", n, standby)
		}
	})

	t.Run("error skips to sync", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pl := pc.StartPipeline(ctx)
		pl.SendQueryParams("SELECT 1/0", nil, nil, nil, nil)
		pl.SendFlushRequest()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		got, err := pl.GetResults()
		if rr, ok := got.(*pgconn.ResultReader); ok && err == nil {
			err = rr.Read().Err
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "22012" {
			t.Fatalf("flushed division by zero: %v, want 22012", err)
		}
		pl.SendQueryParams("SELECT 2", nil, nil, nil, nil) // skipped by the server
		pl.SendPipelineSync()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			if i == 5 {
				t.Fatal("no PipelineSync after an error")
			}
			got, err := pl.GetResults()
			if err != nil {
				// pgx reports the skipped statement's result as an error
				// of its own; what matters is reaching the Sync.
				continue
			}
			if _, ok := got.(*pgconn.PipelineSync); ok {
				break
			}
			if got == nil {
				t.Fatal("no PipelineSync after an error")
			}
		}
		_ = pl.Close()
		var one int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("session after the failed batch: %d, %v", one, err)
		}
	})

	t.Run("a flushed write whose hub connection dies before Sync is known not done", func(t *testing.T) {
		ctx := ctxT(t)
		super, err := pgconn.Connect(ctx, l.HubSuperDSN(lab.AppDatabase))
		if err != nil {
			t.Fatal(err)
		}
		defer super.Close(context.Background())
		pl := pc.StartPipeline(ctx)
		pl.SendQueryParams("INSERT INTO notes (account_id, body) SELECT 1, 'flushed then lost' FROM pg_sleep(1)", nil, nil, nil, nil)
		pl.SendFlushRequest()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		terminated := make(chan error, 1)
		go func() {
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				res := super.ExecParams(ctx, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%flushed then lost%' AND pid <> pg_backend_pid()", nil, nil, nil, nil).Read()
				if res.Err != nil || len(res.Rows) > 0 {
					terminated <- res.Err
					return
				}
			}
			terminated <- errors.New("the flushed INSERT never ran on the hub")
		}()
		got, err := pl.GetResults()
		if rr, ok := got.(*pgconn.ResultReader); ok && err == nil {
			err = rr.Read().Err
		}
		if terr := <-terminated; terr != nil {
			t.Fatal(terr)
		}
		wantCode(t, err, "08006")
		syncPastError(t, pl, "the lost write")
		_ = pl.Close()
		res := super.ExecParams(ctx, "SELECT count(*) FROM notes WHERE body = 'flushed then lost'", nil, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "0" {
			t.Errorf("the write reported not done is on the hub: %v %v", res.Rows, res.Err)
		}
		var one int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("session after the lost flushed write: %d, %v", one, err)
		}
	})

	t.Run("hub down: a flushed write is refused at once", func(t *testing.T) {
		f.cut(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pl := pc.StartPipeline(ctx)
		pl.SendQueryParams("INSERT INTO notes (account_id, body) VALUES (1, 'refused')", nil, nil, nil, nil)
		pl.SendFlushRequest()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		got, err := pl.GetResults()
		if rr, ok := got.(*pgconn.ResultReader); ok && err == nil {
			err = rr.Read().Err
		}
		wantCode(t, err, "25006")
		syncPastError(t, pl, "the refusal")
		_ = pl.Close()
		var standby bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil || !standby {
			t.Fatalf("read after the refused flushed write: %v, %v", standby, err)
		}
	})
}

// syncPastError sends the pipeline's Sync after an error and reads up to
// its PipelineSync, past the results PostgreSQL skipped.
func syncPastError(t *testing.T, pl *pgconn.Pipeline, after string) {
	t.Helper()
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if i == 5 {
			t.Fatalf("no PipelineSync after %s", after)
		}
		got, err := pl.GetResults()
		if err != nil {
			continue
		}
		if _, ok := got.(*pgconn.PipelineSync); ok {
			return
		}
	}
}
