-- pg_kpi demo: a small shop's orders table, a week of history, and three KPIs.
CREATE EXTENSION IF NOT EXISTS pg_kpi;

DROP TABLE IF EXISTS public.orders CASCADE;
CREATE TABLE public.orders (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    region      text NOT NULL,
    channel     text NOT NULL,
    status      text NOT NULL DEFAULT 'paid',
    user_id     int  NOT NULL,
    amount      numeric(12,2) NOT NULL,
    quantity    int NOT NULL DEFAULT 1,
    latency_ms  double precision NOT NULL
);
CREATE INDEX ON public.orders (created_at);

-- A week of history, so "same hour last week" has something to compare with.
INSERT INTO public.orders (created_at, region, channel, status, user_id, amount, quantity, latency_ms)
SELECT now() - (g * interval '20 seconds'),
       (ARRAY['eu','us','apac'])[1 + g % 3],
       (ARRAY['web','app','store'])[1 + (g / 3) % 3],
       CASE WHEN g % 17 = 0 THEN 'cancelled' WHEN g % 23 = 0 THEN 'failed' ELSE 'paid' END,
       1 + (g * 7919) % 5000,
       round((5 + (g * 37 % 200) + (g % 7) * 0.25)::numeric, 2),
       1 + g % 4,
       20 + (g * 13 % 400)
  FROM generate_series(1, 7 * 24 * 180) g;

SELECT kpi.drop('checkout', if_exists => true);
SELECT kpi.create(
    name        => 'checkout',
    source      => 'public.orders',
    time_column => 'created_at',
    measures    => 'revenue = sum(amount * quantity), orders = count(*), aov = avg(amount),
                    smallest = min(amount), largest = max(amount),
                    buyers = count_distinct(user_id), p95_latency = percentile(latency_ms, 0.95)',
    dimensions  => '{region, channel}',
    filter      => $$status <> 'cancelled'$$,
    bucket      => '1 minute',
    retention   => '30 days');

SELECT kpi.drop('checkout_errors', if_exists => true);
SELECT kpi.create(
    name        => 'checkout_errors',
    source      => 'public.orders',
    time_column => 'created_at',
    measures    => 'failed = count(*)',
    dimensions  => '{region}',
    filter      => $$status = 'failed'$$,
    bucket      => '1 minute');

SELECT kpi.drop('orders_per_hour', if_exists => true);
SELECT kpi.create(
    name        => 'orders_per_hour',
    source      => 'public.orders',
    time_column => 'created_at',
    measures    => 'orders = count(*), revenue = sum(amount * quantity)',
    bucket      => '1 hour');
