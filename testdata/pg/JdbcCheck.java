// JdbcCheck runs pgjdbc against spokeproxy in its default modes: autocommit
// on and off, server-side prepared statements after prepareThreshold, and
// a session isolation level.
// Usage: java -cp /usr/share/java/postgresql.jar JdbcCheck.java JDBC_URL
// It prints "ok" or throws.
import java.sql.*;

public class JdbcCheck {
    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static boolean standby(Connection c) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT pg_is_in_recovery()")) {
            r.next();
            return r.getBoolean(1);
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], "app", "apppass")) {
            // Autocommit on: read local, write to the hub, read your write.
            check(standby(c), "autocommit read not on the standby");
            long id;
            try (PreparedStatement p = c.prepareStatement("INSERT INTO notes (account_id, body) VALUES (1, ?) RETURNING id")) {
                p.setString(1, "jdbc");
                try (ResultSet r = p.executeQuery()) { r.next(); id = r.getLong(1); }
            }
            try (PreparedStatement p = c.prepareStatement("SELECT body FROM notes WHERE id = ?")) {
                p.setLong(1, id);
                try (ResultSet r = p.executeQuery()) { check(r.next() && r.getString(1).equals("jdbc"), "read-your-write"); }
            }
            // Server-side prepared statements after prepareThreshold (5).
            try (PreparedStatement p = c.prepareStatement("SELECT count(*) FROM accounts WHERE id > ?")) {
                for (int i = 0; i < 8; i++) {
                    p.setInt(1, 0);
                    try (ResultSet r = p.executeQuery()) { check(r.next() && r.getInt(1) >= 3, "prepared read " + i); }
                }
            }
            // Autocommit off: the transaction reads locally until its first write.
            c.setAutoCommit(false);
            check(standby(c), "first read of a JDBC transaction not on the standby");
            c.commit();
            check(standby(c), "read-only transaction left the standby");
            try (PreparedStatement p = c.prepareStatement("UPDATE accounts SET balance = balance + 1 WHERE name = ?")) {
                p.setString(1, "carol");
                check(p.executeUpdate() == 1, "update");
            }
            check(!standby(c), "read after a write in a transaction still on the standby");
            c.commit();
            // setTransactionIsolation sends SET SESSION CHARACTERISTICS: a
            // REPEATABLE READ transaction runs on the hub from its first
            // statement (one snapshot), a READ ONLY one stays local.
            c.setTransactionIsolation(Connection.TRANSACTION_REPEATABLE_READ);
            check(!standby(c), "REPEATABLE READ transaction began on the standby");
            c.commit();
            c.setReadOnly(true);
            check(standby(c), "REPEATABLE READ READ ONLY transaction left the standby");
            c.commit();
            c.setReadOnly(false);
            c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            check(standby(c), "READ COMMITTED transaction after REPEATABLE READ not on the standby");
            c.commit();
        }
        System.out.println("ok");
    }
}
