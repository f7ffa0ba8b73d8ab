-- 0002: the operator console's own tables (fleet/console/). The live feed uses 0001's
-- NOTIFY trigger on alerts (channel roadside_alerts); nothing here touches the ingest path.

-- Console users. pw_hash is an argon2id hash (argon2-cffi's encoded form, parameters included).
-- Created with `roadside fleet user add NAME --role viewer|operator`.
CREATE TABLE console_users (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    role        text NOT NULL CHECK (role IN ('viewer', 'operator')),
    pw_hash     text NOT NULL,
    disabled    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Sessions: only the sha256 of the cookie's token is stored (a leaked table opens no session).
-- csrf is the session's synchroniser token. Expiry (idle and absolute) is the console's setting,
-- checked against created_at / last_seen; expired rows are swept at each login.
CREATE TABLE console_sessions (
    token_sha256 bytea PRIMARY KEY,
    user_id      integer NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);

-- An operator's acknowledgement of an alert (the first one wins). Keyed like the alert itself
-- (alert ids are {device}:{boot}:{seq}, never reused); no foreign key: alerts are partitioned
-- by day and old partitions may be dropped before the acknowledgements.
CREATE TABLE console_acks (
    device    text NOT NULL,
    alert_id  text NOT NULL,
    by_user   text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, alert_id)
);
