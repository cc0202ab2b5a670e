-- One demo order (pgbench script: scripts/demo.sh runs it at a fixed rate).
\set r random(1, 3)
\set c random(1, 3)
\set u random(1, 5000)
\set a random(500, 20000)
\set q random(1, 4)
\set l random(15, 450)
\set s random(1, 100)
INSERT INTO public.orders (region, channel, status, user_id, amount, quantity, latency_ms)
VALUES ((ARRAY['eu','us','apac'])[:r], (ARRAY['web','app','store'])[:c],
        CASE WHEN :s <= 4 THEN 'failed' WHEN :s <= 9 THEN 'cancelled' ELSE 'paid' END,
        :u, :a / 100.0, :q, :l);
