-- API tokens for AdminService: a bearer token is stored only as its SHA-256 (hex), with the
-- role it grants: viewer (reads), operator (also runs and controls), admin (also applies
-- workflows, manages task groups, schedules and tokens).
CREATE TABLE api_token (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
