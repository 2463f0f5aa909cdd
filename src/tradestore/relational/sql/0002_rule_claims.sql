-- tradestore 0002: leased claims on order rules, so that a fired stop-loss is never lost.
-- 0001 marked a rule fired and handed it out in one autocommit UPDATE: a caller cancelled after
-- the commit left it fired and executed by no one. Now a claim says who holds the rule and until
-- when; a claim not completed within its lease is handed out again; completion is explicit.
-- triggered_at keeps its meaning: when a price first met the rule's condition.

ALTER TABLE order_rules
    ADD COLUMN claimed_by TEXT CHECK (length(claimed_by) BETWEEN 1 AND 255),
    ADD COLUMN claim_token UUID,
    ADD COLUMN lease_until TIMESTAMPTZ,
    ADD COLUMN claims INTEGER NOT NULL DEFAULT 0 CHECK (claims >= 0),
    ADD COLUMN executed_at TIMESTAMPTZ,
    -- A claim is whole (holder, token and lease together) or absent (open, or handed back).
    ADD CONSTRAINT order_rules_claim_whole CHECK (
        (claimed_by IS NULL) = (claim_token IS NULL) AND (claim_token IS NULL) = (lease_until IS NULL)
    ),
    -- Only a triggered rule is claimed, and only a claim completes it.
    ADD CONSTRAINT order_rules_claim_after_trigger CHECK (claim_token IS NULL OR triggered_at IS NOT NULL),
    ADD CONSTRAINT order_rules_executed_by_a_claim CHECK (executed_at IS NULL OR claim_token IS NOT NULL);

-- Rules fired before this migration were handed to a worker by the old claim, which was their
-- completion: they count as executed then, so that none is executed a second time.
UPDATE order_rules
SET claimed_by = 'before-0002', claim_token = gen_random_uuid(), lease_until = triggered_at,
    claims = 1, executed_at = triggered_at
WHERE triggered_at IS NOT NULL;

-- Triggered rules not yet executed are scanned on every claim of their token (expired leases).
CREATE INDEX order_rules_pending_by_token_idx ON order_rules (position_token)
    WHERE triggered_at IS NOT NULL AND executed_at IS NULL;
