-- tradestore 0005: several platform nodes on one data layer.
-- A trader belongs to the platform node that runs it (node_id, the setting TRADESTORE_NODE_ID),
-- or to none: NULL is shared, as is every trader made before this migration. A node lists and
-- claims the rules of its own traders and of shared ones; another node's only when it asks
-- (shared mode: taking over from a node that is gone).
ALTER TABLE trader_config
    ADD COLUMN node_id TEXT CHECK (node_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$');
CREATE INDEX trader_config_node_idx ON trader_config (node_id);

-- The health of an RPC node is as one platform node observed it: two platform nodes reporting
-- the same RPC node in the same instant no longer overwrite each other, and each reads its own
-- circuit-breaker state. Reports made before this migration, and by a client that does not say
-- (an older version during a rolling upgrade), are 'unattributed'.
ALTER TABLE node_health
    ADD COLUMN reported_by TEXT NOT NULL DEFAULT 'unattributed'
        CHECK (reported_by ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$');
ALTER TABLE node_health DROP CONSTRAINT node_health_pkey;
ALTER TABLE node_health ADD PRIMARY KEY (node, reported_by, observed_at);
