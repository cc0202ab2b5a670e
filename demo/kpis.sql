-- The demo's KPIs and alerts, created after the history is loaded: kpi.create backfills
-- a KPI from its table in one scan, which is faster than keeping it up to date row by
-- row while the history goes in, and exact all the same.
--
-- psql variable alert_window (default '1 minute'): the checkout error-rate window.
\if :{?alert_window}
\else
    \set alert_window '1 minute'
\endif

-- Money and orders (paid ones: refunds leave the revenue).
SELECT kpi.create(
    name        => 'orders',
    source      => 'shop.orders',
    time_column => 'created_at',
    measures    => 'revenue = sum(total), orders = count(*), aov = avg(total),
                    customers = count_distinct(customer_id)',
    dimensions  => '{region, channel}',
    filter      => $$status = 'paid'$$,
    bucket      => '1 minute',
    retention   => '60 days');

-- What sells: revenue and units per product and region.
SELECT kpi.create(
    name        => 'order_lines',
    source      => 'shop.order_lines',
    time_column => 'created_at',
    measures    => 'revenue = sum(quantity * unit_price), units = sum(quantity)',
    dimensions  => '{product, region}',
    bucket      => '10 minutes',
    retention   => '60 days');

-- Checkout attempts and their failures, in 10-second buckets so that a short alert
-- window moves smoothly; hourly tiers keep the history small.
SELECT kpi.create(
    name        => 'checkout',
    source      => 'shop.checkout_attempts',
    time_column => 'attempted_at',
    -- error_rate is a derived measure: errors / attempts over whatever window is read
    -- (sum over sum, never an average of per-bucket rates).
    measures    => 'attempts = count(*), errors = count(error), attempted = sum(amount),
                    error_rate = errors / attempts',
    dimensions  => '{region, payment_method}',
    bucket      => '10 seconds',
    retention   => '1 day',
    rollups     => '{"5 minutes": "60 days"}');

-- API latency per endpoint (DDSketch percentiles, within 1 %).
SELECT kpi.create(
    name        => 'api',
    source      => 'shop.api_requests',
    time_column => 'requested_at',
    measures    => $$requests = count(*), server_errors = count(CASE WHEN status >= 500 THEN 1 END),
                    p50_latency = percentile(latency_ms, 0.5), p95_latency = percentile(latency_ms, 0.95),
                    p99_latency = percentile(latency_ms, 0.99)$$,
    dimensions  => '{endpoint}',
    bucket      => '10 seconds',
    retention   => '1 day',
    rollups     => '{"5 minutes": "60 days"}');

-- Traffic: sessions and distinct visitors (HyperLogLog), page views.
SELECT kpi.create(
    name        => 'traffic',
    source      => 'shop.sessions',
    time_column => 'started_at',
    measures    => 'sessions = count(*), visitors = count_distinct(visitor_id)',
    dimensions  => '{region, source}',
    bucket      => '5 minutes',
    retention   => '60 days');
SELECT kpi.create(
    name        => 'page_views',
    source      => 'shop.page_views',
    time_column => 'viewed_at',
    measures    => 'views = count(*)',
    dimensions  => '{page}',
    bucket      => '1 minute',
    retention   => '60 days');

-- Orders per page view, across two KPIs with the same bucket: pushed whenever either
-- side changes (docs/derived.md). A funnel reads the same way:
--   SELECT * FROM kpi.funnel('{page_views.views, orders.orders}', '30 minutes');
SELECT kpi.create_derived('conversion', 'orders.orders / page_views.views');

-- Stock movements: units sold (negative) and restocked per product.
SELECT kpi.create(
    name        => 'inventory',
    source      => 'shop.inventory_moves',
    time_column => 'moved_at',
    measures    => 'moves = count(*), net_units = sum(units)',
    dimensions  => '{product, reason}',
    bucket      => '1 hour',
    retention   => '60 days');

-- The alert the scripted incident sets off. Fewer than 20 attempts in the window count
-- as 20, so two declined cards in a quiet minute at night page nobody.
SELECT kpi.create_alert(
    name     => 'checkout_error_rate',
    kpi      => 'checkout',
    condition => 'errors / greatest(attempts, 20) > 0.05',
    "window" => :'alert_window',
    "for"    => '15 seconds',
    severity => 'critical',
    labels   => '{"team": "payments"}',
    summary  => 'Checkout error rate {{value}} over {{threshold}}');

-- Slow endpoints, one instance per endpoint (the incident slows /api/checkout).
SELECT kpi.create_alert(
    name     => 'api_p95_latency',
    kpi      => 'api',
    condition => 'p95_latency > 1000',
    "window" => '1 minute',
    "for"    => '30 seconds',
    severity => 'warning',
    labels   => '{"team": "platform"}',
    summary  => 'p95 latency of {{group}} is {{value}} ms (over {{threshold}} ms)',
    group_by => 'endpoint');

-- No paid order for two minutes: the shop is down, or the load generator is.
SELECT kpi.create_alert(
    name     => 'no_orders',
    kpi      => 'orders',
    condition => 'absent(2 minutes)',
    severity => 'critical',
    labels   => '{"team": "shop"}',
    summary  => 'No orders for 2 minutes');
