-- The shop's past: :days days (psql -v days=N, default 8) of visitors drawn from the same
-- daily shape as the live load (shop.shape), so that today's cards can be compared with
-- the same hour a week ago. Set-based: every table is one INSERT ... SELECT over
-- generate_series, which is what makes the warm start take seconds.
\if :{?days}
\else
    \set days 8
\endif

-- One row per visitor: when, who, and the dice thrown for the rest of the visit.
-- Candidates come at the weekend peak rate and are kept with probability shape/1.15, so
-- the kept ones follow the shape exactly.
CREATE TEMP TABLE visit AS
SELECT row_number() OVER () AS id, t,
       1 + floor(random() * 20000)::int AS visitor,
       (ARRAY['eu','eu','us','us','us','apac'])[1 + floor(random() * 6)::int] AS region,
       CASE WHEN random() < 0.35 THEN 'app' ELSE 'web' END AS channel,
       (ARRAY['search','search','social','email','direct'])[1 + floor(random() * 5)::int] AS source,
       1 + floor(random() * 4)::int AS views,
       random() < 0.2 AS checks_out
  FROM shop.settings s,
       generate_series(now() - make_interval(days => :days), now() - interval '1 second',
                       make_interval(secs => 1 / (s.rate * 1.15))) t
 WHERE random() < shop.shape(t) / 1.15;

INSERT INTO shop.sessions (id, started_at, visitor_id, region, channel, source)
SELECT id, t, visitor, region, channel, source FROM visit;
SELECT setval(pg_get_serial_sequence('shop.sessions', 'id'), (SELECT max(id) FROM visit));

-- Page views 25 s apart, each with the API call behind it.
CREATE TEMP TABLE pv AS
SELECT v.id AS session_id, least(v.t + (k - 1) * interval '25 seconds', now()) AS at, v.region,
       CASE WHEN k = 1 THEN 'home' WHEN k = v.views AND v.views > 3 THEN 'cart' ELSE 'product' END AS page
  FROM visit v, generate_series(1, v.views) k;
INSERT INTO shop.page_views (viewed_at, session_id, page, region)
SELECT at, session_id, page, region FROM pv;
INSERT INTO shop.api_requests (requested_at, endpoint, status, latency_ms)
SELECT at, e, CASE WHEN random() < 0.002 THEN 500 ELSE 200 END,
       shop.latency(CASE e WHEN '/api/search' THEN 90 WHEN '/api/cart' THEN 45 ELSE 35 END)
  FROM (SELECT at, (ARRAY['/api/products','/api/products','/api/search','/api/cart'])[1 + floor(random() * 4)::int] AS e
          FROM pv) x;

-- Baskets of one to three products by popularity, for the visitors who check out.
CREATE TEMP TABLE basket AS
SELECT v.id AS session_id, least(v.t + v.views * interval '25 seconds', now()) AS at, v.region,
       p.product, r.q AS quantity, p.price AS unit_price
  FROM visit v
  -- (v.id makes the subquery run once per visitor; uncorrelated, it would run once.)
  CROSS JOIN LATERAL (SELECT v.id, random() AS u, 1 + floor(random() * random() * 3)::int AS q
                        FROM generate_series(1, 1 + floor(random() * random() * 3)::int)) r
  JOIN shop.product_pick p ON r.u >= p.lo AND r.u < p.hi
 WHERE v.checks_out;

CREATE TEMP TABLE attempt AS
SELECT l.session_id, l.at, l.region, v.visitor, v.channel, sum(l.quantity * l.unit_price) AS amount,
       CASE WHEN random() < (SELECT error_rate FROM shop.settings)
            THEN (ARRAY['card_declined','gateway_timeout','gateway_timeout','fraud_check'])[1 + floor(random() * 4)::int]
       END AS error
  FROM basket l JOIN visit v ON v.id = l.session_id
 GROUP BY l.session_id, l.at, l.region, v.visitor, v.channel;
INSERT INTO shop.checkout_attempts (attempted_at, session_id, region, payment_method, amount, error)
SELECT at, session_id, region, (ARRAY['card','card','card','paypal','wallet'])[1 + floor(random() * 5)::int], amount, error
  FROM attempt;
INSERT INTO shop.api_requests (requested_at, endpoint, status, latency_ms)
SELECT at, '/api/checkout', CASE WHEN error = 'gateway_timeout' THEN 504 WHEN error IS NULL THEN 200 ELSE 402 END,
       CASE WHEN random() < (SELECT slow_rate FROM shop.settings) OR error = 'gateway_timeout'
            THEN round((2500 + random() * 4000)::numeric, 1)::float8 ELSE shop.latency(180) END
  FROM attempt;

-- Orders for the attempts that were paid (ids follow the sessions' order), their lines,
-- and the stock they took; about 2 % are refunded later.
INSERT INTO shop.orders (id, created_at, session_id, customer_id, region, channel, status, total)
SELECT row_number() OVER (ORDER BY session_id), at, session_id, visitor, region, channel,
       CASE WHEN random() < 0.02 THEN 'refunded' ELSE 'paid' END, amount
  FROM attempt WHERE error IS NULL;
SELECT setval(pg_get_serial_sequence('shop.orders', 'id'), (SELECT coalesce(max(id), 1) FROM shop.orders));
INSERT INTO shop.order_lines (order_id, created_at, product, region, quantity, unit_price)
SELECT o.id, l.at, l.product, l.region, l.quantity, l.unit_price
  FROM basket l JOIN shop.orders o ON o.session_id = l.session_id;
INSERT INTO shop.inventory_moves (moved_at, product, reason, units)
SELECT l.at, l.product, 'sale', -l.quantity
  FROM basket l JOIN shop.orders o ON o.session_id = l.session_id;
-- The warehouse restocks every product at 06:00 each day.
INSERT INTO shop.inventory_moves (moved_at, product, reason, units)
SELECT d + interval '6 hours', p.product, 'restock', 40 * p.popularity
  FROM shop.products p,
       generate_series(date_trunc('day', now() - make_interval(days => :days)), now() - interval '6 hours', interval '1 day') d
 WHERE d + interval '6 hours' > now() - make_interval(days => :days);
INSERT INTO shop.inventory (product, on_hand)
SELECT product, 100 + 20 * popularity FROM shop.products;

ANALYZE shop.sessions, shop.page_views, shop.api_requests, shop.checkout_attempts,
        shop.orders, shop.order_lines, shop.inventory_moves, shop.inventory;
