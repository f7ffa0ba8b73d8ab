-- 0001: the city store. Tables, keys and why (fleet/db.py's docstring lists them for queries).
--
-- Every row an ingest worker writes carries ingested_at = clock_timestamp() at insert, inside
-- the batch's transaction, a few ms before its commit (latency = ingested_at - publish time),
-- and broker_at = when JetStream stored the message (its stream timestamp).
-- Writes are idempotent on the message's own id: a redelivered message is stored once.

-- Poles, one row each: what they run and whether they are alive. Written from the retained
-- `state` message (birth: online, boot, agent, ch, models, loc; death/will: online=false),
-- and last_seen from every message. state_at orders state messages (the broker's time), so a
-- late or redelivered older state never overwrites a newer one.
CREATE TABLE devices (
    device        text PRIMARY KEY,
    site          text NOT NULL,
    online        boolean NOT NULL DEFAULT false,
    last_seen     timestamptz,
    state_at      timestamptz,
    online_since  timestamptz,
    offline_since timestamptz,
    boot          integer,
    agent_version text,
    config_hash   text,
    models        jsonb NOT NULL DEFAULT '{}'::jsonb,  -- {"noise": {"name","version","sha256","backend",..}}
    proto         text,                               -- MQTT level the pole connected with
    lat           double precision,                   -- from the state's optional "loc"
    lon           double precision,
    first_seen    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX devices_site ON devices (site);

-- Alerts, partitioned by UTC day of the alert's own ts. The partition key must be in the
-- unique key; it is derived from the payload, so a redelivery lands in the same partition and
-- hits (device, alert_id, day). alert_id is the wire id {device}:{boot}:{seq}.
-- alerts_default holds days without a partition (very old clocks); the workers create daily
-- partitions ahead (roadside_ensure_partitions) and refuse ts more than a day in the future.
CREATE TABLE alerts (
    day           date NOT NULL,
    device        text NOT NULL,
    alert_id      text NOT NULL,
    site          text NOT NULL,
    boot          integer NOT NULL,
    seq           bigint NOT NULL,
    ts            timestamptz NOT NULL,      -- end of the window that fired
    time_synced   boolean NOT NULL,          -- tq = "s"
    kind          text NOT NULL,             -- noise, vehicles, congestion, level
    sensor        text NOT NULL,
    class         text NOT NULL,
    confidence    real,
    window_ms     integer NOT NULL,
    metrics       jsonb NOT NULL DEFAULT '{}'::jsonb,
    model_name    text,
    model_version text,
    model_sha     text,                      -- first 16 hex
    config_hash   text,
    replayed      boolean NOT NULL DEFAULT false,
    broker_at     timestamptz,
    ingested_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device, alert_id, day)
) PARTITION BY RANGE (day);
CREATE TABLE alerts_default PARTITION OF alerts DEFAULT;
CREATE INDEX alerts_ts ON alerts (ts DESC);
CREATE INDEX alerts_device_ts ON alerts (device, ts DESC);
CREATE INDEX alerts_kind_ts ON alerts (kind, ts DESC);
CREATE INDEX alerts_ingested ON alerts (ingested_at DESC);

-- Sound level summaries (the `summary` topic), one per pole, sensor and period; same keys and
-- partitioning as alerts.
CREATE TABLE level_summaries (
    day          date NOT NULL,
    device       text NOT NULL,
    summary_id   text NOT NULL,
    site         text NOT NULL,
    ts           timestamptz NOT NULL,       -- end of the period
    time_synced  boolean NOT NULL,
    sensor       text NOT NULL,
    seconds      real,
    laeq         real,
    lafmax       real,
    l10          real,
    l90          real,
    limit_db     real,                       -- the LAeq limit in force (lim)
    period       text,                       -- "day" / "night"
    config_hash  text,
    replayed     boolean NOT NULL DEFAULT false,
    broker_at    timestamptz,
    ingested_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device, summary_id, day)
) PARTITION BY RANGE (day);
CREATE TABLE level_summaries_default PARTITION OF level_summaries DEFAULT;
CREATE INDEX level_summaries_device_ts ON level_summaries (device, ts DESC);

-- Health snapshots (`health`, QoS 0: a lost one is superseded by the next). The whole document
-- is kept in doc; the columns are the ones the console plots.
CREATE TABLE health (
    device       text NOT NULL,
    ts           timestamptz NOT NULL,
    site         text NOT NULL,
    boot         integer,
    up_s         double precision,
    cpu_pct      real,
    rss_mb       real,
    queue        integer,
    outbox_alerts integer,
    doc          jsonb NOT NULL,
    broker_at    timestamptz,
    ingested_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device, ts)
);

-- Messages that failed validation or the spoof check: kept with the reason, never retried.
-- (stream, stream_seq) makes a redelivered bad message a single row.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    subject     text NOT NULL,              -- the NATS subject (MQTT topic with / as .)
    reason      text NOT NULL,              -- json, schema, spoofed, topic, ts_future, too_large, ...
    detail      text,
    payload     bytea NOT NULL,
    stream      text NOT NULL,
    stream_seq  bigint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream, stream_seq)
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at DESC);

-- Daily partitions for alerts and level_summaries over [first, last] (inclusive). A day that
-- already has rows in the default partition is left there (moving them would lock the table).
-- Serialised by an advisory lock: several workers call this at start.
CREATE FUNCTION roadside_ensure_partitions(first date, last date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    t text;
    made integer := 0;
    busy boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('roadside_ensure_partitions'));
    FOR d IN SELECT generate_series(first, last, interval '1 day')::date LOOP
        FOREACH t IN ARRAY ARRAY['alerts', 'level_summaries'] LOOP
            IF to_regclass(format('%s_p%s', t, to_char(d, 'YYYYMMDD'))) IS NULL THEN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE day = %L)', t || '_default', d) INTO busy;
                IF NOT busy THEN
                    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                                   format('%s_p%s', t, to_char(d, 'YYYYMMDD')), t, d, d + 1);
                    made := made + 1;
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;

-- The console's live feed: one NOTIFY per stored alert on channel roadside_alerts (done here,
-- in 0001, by the ingest side; a payload is small, the console reads the row for details).
-- Redeliveries do not notify: ON CONFLICT DO NOTHING inserts no row, so the trigger does not fire.
CREATE FUNCTION roadside_notify_alert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('roadside_alerts', json_build_object(
        'device', NEW.device, 'id', NEW.alert_id, 'day', NEW.day, 'site', NEW.site, 'kind', NEW.kind,
        'class', NEW.class, 'p', NEW.confidence, 'ts', NEW.ts, 'ingested_at', NEW.ingested_at)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER alerts_notify AFTER INSERT ON alerts FOR EACH ROW EXECUTE FUNCTION roadside_notify_alert();
