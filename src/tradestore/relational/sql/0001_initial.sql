-- tradestore 0001: tokens, trader config, order rules, node health.
-- Mends the seed: money keeps every lamport, instants are TIMESTAMPTZ, node health is per node.

-- Every model-valid amount: up to 38 integer digits and 18 decimal places, stored exactly as given.
CREATE DOMAIN money_amount AS NUMERIC
    CHECK (VALUE >= 0 AND scale(VALUE) <= 18 AND VALUE < 1e38);

CREATE TABLE tokens (
    address TEXT PRIMARY KEY CHECK (length(address) BETWEEN 32 AND 44),
    symbol TEXT NOT NULL CHECK (length(symbol) BETWEEN 1 AND 20),
    name TEXT CHECK (length(name) BETWEEN 1 AND 255),
    decimals SMALLINT NOT NULL CHECK (decimals BETWEEN 0 AND 255),
    has_transfer_fee BOOLEAN NOT NULL DEFAULT false,
    transfer_fee_bps INTEGER CHECK (transfer_fee_bps BETWEEN 0 AND 10000),
    extensions JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extensions) = 'object'),
    last_updated TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (NOT has_transfer_fee OR transfer_fee_bps IS NOT NULL)
);

-- Symbols are not unique on Solana: the index serves lookups, the repository resolves ambiguity.
CREATE INDEX tokens_symbol_idx ON tokens (symbol);

CREATE TABLE trader_config (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    mode TEXT NOT NULL CHECK (mode IN ('paper', 'live')),
    max_position_size money_amount NOT NULL,
    max_daily_loss money_amount NOT NULL,
    max_slippage_bps INTEGER NOT NULL CHECK (max_slippage_bps BETWEEN 0 AND 10000),
    mev_protection_enabled BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE order_rules (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    trader_id UUID NOT NULL REFERENCES trader_config (id) ON DELETE CASCADE,
    position_token TEXT NOT NULL CHECK (length(position_token) BETWEEN 32 AND 44),
    rule_type TEXT NOT NULL CHECK (rule_type IN ('stop_loss', 'take_profit')),
    trigger_price money_amount NOT NULL CHECK (trigger_price > 0),
    amount money_amount NOT NULL CHECK (amount > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    triggered_at TIMESTAMPTZ
);

-- Only open rules are ever scanned: by token on each price, by trader for listings.
CREATE INDEX order_rules_open_by_token_idx ON order_rules (position_token)
    WHERE triggered_at IS NULL;
CREATE INDEX order_rules_open_by_trader_idx ON order_rules (trader_id)
    WHERE triggered_at IS NULL;

-- One row per report of one node: two nodes reporting in the same instant no longer collide.
CREATE TABLE node_health (
    node TEXT NOT NULL CHECK (length(node) BETWEEN 1 AND 255),
    observed_at TIMESTAMPTZ NOT NULL,
    latency_ms INTEGER NOT NULL CHECK (latency_ms >= 0),
    error_rate DOUBLE PRECISION NOT NULL CHECK (error_rate BETWEEN 0 AND 1),
    circuit_breaker_status TEXT NOT NULL
        CHECK (circuit_breaker_status IN ('closed', 'open', 'half_open')),
    last_failure TIMESTAMPTZ,
    PRIMARY KEY (node, observed_at)
);

-- The server keeps updated_at honest, whatever a client sends; created_at never moves.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    NEW.created_at := OLD.created_at;
    RETURN NEW;
END;
$$;

CREATE TRIGGER trader_config_set_updated_at
    BEFORE UPDATE ON trader_config
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
