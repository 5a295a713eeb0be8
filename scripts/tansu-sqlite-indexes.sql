-- Indexes that tansu 0.6.0's sqlite schema lacks, added by scripts/deps.sh to the broker's
-- database after tansu has created its tables. Without them the broker slows down as its log
-- grows, until it can no longer keep up with the load it started with
-- (docs/notes/broker.md, "Why the broker slows down as its log grows"):
--
-- * Every record a fetch returns is followed by a query for that record's headers, which
--   filters `header` on (topition, offset_id). With no index that is a scan of every header
--   ever written: 16.9 ms per record on a broker holding 64 360 records (four headers each),
--   0.015 ms with the index (scripts/broker-lab/header_scan.py). The same scan runs for each record that retention or a topic delete removes,
--   through the foreign key's `on delete cascade`.
-- * Every produce and every fetch looks up its partition's watermark by `topition`, a scan
--   of one row per partition that the broker has ever created (thousands on a broker that
--   has served the test suite).
--
-- Both only add access paths to tansu's own queries; no query's result changes.
create index if not exists faultline_header_by_record on header (topition, offset_id);
create index if not exists faultline_watermark_by_topition on watermark (topition);
