-- API tokens. The secret is never stored: only its SHA-256 (tokens are 256 random bits, so a
-- fast hash is enough; there is nothing to brute-force). `id` is the public part of the token
-- (`ty_<id>_<secret>`), used to find the row; the secret's hash is then compared in constant
-- time. Revoked tokens are kept (revoked_at) so that listings show who had access and when.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    scopes       TEXT[] NOT NULL,
    secret_hash  BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    CONSTRAINT api_tokens_scopes_known
        CHECK (scopes <@ ARRAY['read', 'submit', 'admin', 'predict']::TEXT[] AND cardinality(scopes) > 0)
);
