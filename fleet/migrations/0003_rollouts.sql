-- 0003: staged model rollouts gated on shadow behaviour (issue 16; docs/rollouts.md).
-- The controller (fleet/rollout/) keeps all of its state here, so it can be killed anywhere and
-- resumed: what the poles answered arrives through ingest (command_acks, shadow_reports).

-- Command answers from poles (`cmd/<name>/ack`), keyed on the command's own id: a duplicate
-- delivery (the pole answers a repeated id again) is stored once.
CREATE TABLE command_acks (
    device      text NOT NULL,
    cmd         text NOT NULL,          -- shadow, promote, abort, model, reload
    cmd_id      text NOT NULL,
    site        text NOT NULL,
    ok          boolean NOT NULL,
    status      text NOT NULL,          -- applied, unchanged, shadowing, aborted, refused, rolled_back
    stage       text,
    reason      text,
    doc         jsonb NOT NULL,         -- the whole ack
    ts          timestamptz,
    broker_at   timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device, cmd, cmd_id)
);
CREATE INDEX command_acks_ingested ON command_acks (ingested_at);

-- Shadow reports (`shadow` topic), cumulative since the candidate started: the latest per
-- (device, candidate) is the pole's figure. Keyed on the report's id {device}:{boot}:{seq}.
CREATE TABLE shadow_reports (
    device      text NOT NULL,
    report_id   text NOT NULL,
    site        text NOT NULL,
    ts          timestamptz NOT NULL,
    task        text NOT NULL,
    cand16      text NOT NULL,          -- first 16 hex of the candidate model's sha256
    active16    text,                   -- absent when the pole shed it to stay under 256 bytes
    n           integer NOT NULL,       -- windows compared
    sk          integer NOT NULL,       -- windows skipped (CPU budget)
    agr         real,                   -- top-1 agreement
    cf          real,                   -- candidate's mean top-1 probability
    acf         real,                   -- active model's
    div         real,                   -- Jensen-Shannon divergence of the class histograms
    p95_active  real,                   -- inference ms
    p95_cand    real,
    err         integer NOT NULL DEFAULT 0,
    final       boolean NOT NULL DEFAULT false,
    broker_at   timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device, report_id)
);
CREATE INDEX shadow_reports_cand ON shadow_reports (cand16, device, n DESC);

-- One rollout: a candidate bundle for one task, its stages, its gates, where it is.
-- state: running -> completed | halting -> halted | aborting -> aborted.
-- phase (while running): shadow (stage k's canaries compare), promote, soak (wait after
-- promotion, then check again), catchup (every stage passed; poles that were offline).
CREATE TABLE rollouts (
    id              serial PRIMARY KEY,
    task            text NOT NULL,
    bundle_sha256   text NOT NULL,      -- the candidate bundle (tar), served by sha256
    model_sha256    text NOT NULL,      -- the candidate model file's (what promote/abort sign)
    release         integer NOT NULL,
    version         text,
    base_bundle_sha256 text NOT NULL,   -- the baseline bundle: rollbacks send it back
    base_model_sha256  text NOT NULL,
    base_release    integer NOT NULL,
    stages          real[] NOT NULL,    -- cumulative fractions of the fleet, e.g. {0.01,0.1,0.5,1}
    stage           integer NOT NULL DEFAULT 0,   -- index into stages
    phase           text NOT NULL DEFAULT 'shadow',
    state           text NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'completed', 'halting', 'halted', 'aborting', 'aborted')),
    bounds          jsonb NOT NULL,     -- the gates' bounds and where each default came from
    settings        jsonb NOT NULL,     -- windows, minutes, soak_s, stage_timeout_s, resend_s, url base
    gate            jsonb,              -- the gate that fired: {gate, value, bound, figures}
    reason          text,
    started_by      text NOT NULL,
    abort_requested_by text,
    phase_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz
);
-- One candidate in flight per task.
CREATE UNIQUE INDEX rollouts_one_per_task ON rollouts (task) WHERE state IN ('running', 'halting', 'aborting');

-- Every pole a rollout touches, with the stage it joins in (chosen at start, spread over sites).
-- status: pending -> shadow_sent -> shadowing -> promote_sent -> promoted (model_sent for a late pole)
--         on a halt: abort_sent -> aborted | rollback_sent -> rolled_back | skipped (never sent)
--         failed (its install was refused or rolled back by the pole)
CREATE TABLE rollout_targets (
    rollout_id  integer NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device      text NOT NULL,
    site        text NOT NULL,
    stage       integer NOT NULL,
    status      text NOT NULL DEFAULT 'pending',
    cmd         text,                   -- the last command sent
    cmd_id      text,
    sent_at     timestamptz,
    sends       integer NOT NULL DEFAULT 0,
    ever_ran    boolean NOT NULL DEFAULT false,  -- the candidate was ever the active model here
    promoted_at timestamptz,
    back_at     timestamptz,            -- rolled back / aborted
    detail      text,
    PRIMARY KEY (rollout_id, device)
);
CREATE INDEX rollout_targets_status ON rollout_targets (rollout_id, status);

-- Every step: who started it, each pole's switch, each gate check, why it stopped.
CREATE TABLE rollout_events (
    id          bigserial PRIMARY KEY,
    rollout_id  integer NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind        text NOT NULL,          -- started, stage, shadow_sent, shadowing, gate, promoted, halted, ...
    device      text,
    actor       text,                   -- the operator, or 'controller'
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id);
