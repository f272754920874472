-- Seed of the lab's application database, run by the lab package with psql
-- as the superuser on the hub primary before the spoke standby is cloned, so
-- every row below reaches the spoke through replication.
--
-- The application role logs in with SCRAM-SHA-256 over TCP:
--   psql 'postgres://app:apppass@127.0.0.1:PORT/appdb'

CREATE ROLE app LOGIN PASSWORD 'apppass';
CREATE DATABASE appdb OWNER app;

\connect appdb app

CREATE TABLE accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    email      text NOT NULL,
    balance    numeric(12, 2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO accounts (name, email, balance) VALUES
    ('alice', 'alice@example.org', 100.00),
    ('bob',   'bob@example.org',    42.50),
    ('carol', 'carol@example.org',   0.00);

CREATE TABLE notes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id),
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO notes (account_id, body)
SELECT id, 'welcome, ' || name FROM accounts;
